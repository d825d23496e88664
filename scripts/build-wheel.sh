#!/usr/bin/env bash
# Builds the wheel to share: vla_launch-<version>-py3-none-manylinux_2_17_x86_64.whl, whose binary
# needs glibc 2.17 or newer (RHEL/Rocky 7 and later, Ubuntu 14.04 and later), so that
# `pip install vla_launch-*.whl` works on any x86_64 Linux with no Rust toolchain. Prints the
# wheel's path on stdout (the last line); maturin's progress goes to stderr.
#
#   scripts/build-wheel.sh [OUT_DIR]      # default: target/wheels
#
# How: maturin links with zig (`--zig`), which carries the glibc 2.17 symbol versions, on the
# normal x86_64-unknown-linux-gnu target; the tag comes from [tool.maturin] compatibility in
# pyproject.toml, and maturin refuses to write the wheel if the binary needs a newer symbol.
# Why not `pip wheel .`: maturin's PEP 517 backend passes `--compatibility off` and zig cannot be
# switched on from pyproject.toml, so `pip wheel .` / `pip install .` build for this machine's glibc
# only (tag linux_x86_64: fine to install here, not to share). Why not a static musl binary: a
# static binary cannot dlopen the driver's libnvidia-ml.so, which is how vla-launch finds the GPUs.
#
# Needs: a Rust toolchain, python3 with venv, PyPI (maturin and ziglang, about 100 MB, go into a
# virtualenv under target/, reused by the next build). Environment: PYTHON (default python3);
# VLA_WHEEL_TOOLS (the tools' virtualenv, default target/wheel-tools); CARGO_TARGET_DIR as cargo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/wheels}
python=${PYTHON:-python3}
tools=${VLA_WHEEL_TOOLS:-$root/target/wheel-tools}
# The versions this was checked with: a newer zig can change the linker's flags under maturin.
requirements=(maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2)

if [[ ! -x $tools/bin/python ]]; then
    "$python" -m venv "$tools"
fi
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" >&2

mkdir -p "$out"
# Only this project's wheels: so that `pip install "$out"/vla_launch-*.whl` names one file.
rm -f "$out"/vla_launch-*.whl
start=$(date +%s)
# maturin finds zig as `python3 -m ziglang`: the tools' python3 first on PATH.
(cd "$root" && PATH="$tools/bin:$PATH" "$tools/bin/maturin" build --release --locked --zig \
    --out "$out" >&2)
wheels=("$out"/vla_launch-*.whl)
if [[ ${#wheels[@]} != 1 || ! -f ${wheels[0]} ]]; then
    echo "build-wheel: expected one vla_launch-*.whl in $out, found: ${wheels[*]}" >&2
    exit 1
fi
echo "build-wheel: built ${wheels[0]##*/} in $(($(date +%s) - start)) s" >&2
echo "${wheels[0]}"
