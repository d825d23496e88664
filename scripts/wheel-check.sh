#!/usr/bin/env bash
# CI: checks the wheel scripts/build-wheel.sh built, as a cluster without Rust would get it.
#
#   scripts/wheel-check.sh target/wheels/vla_launch-*.whl
#
# 1. Audit: auditwheel (PyPI) must find a manylinux or musllinux tag, the one in the file name;
#    no GLIBC_ symbol version in the binary newer than that tag (read with objdump); NVML is not
#    linked (vla-launch dlopens libnvidia-ml.so at run time, so it installs where there is no GPU).
# 2. Install: a fresh virtualenv, `pip install --no-index` of the wheel file, with a PATH that has
#    no cargo or rustc (checked).
# 3. Run, from a directory outside the checkout with no VLA_LAUNCH_DIR/OPENVLA_OFT_DIR: `--version`
#    names the commit, the README's plan (`plan --profile aloha --gpus 4xrtx4090`) succeeds, and a
#    probe dry run prints a command whose script is the probe trainer shipped in
#    <venv>/share/vla-launch (every data file the binary needs is installed next to it).
#
# Environment: PYTHON (default python3); VLA_WHEEL_TOOLS (auditwheel's virtualenv, as
# build-wheel.sh; made if missing); KEEP_TMP=1 keeps the temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ $# == 1 && -f $1 ]] || { echo "usage: $0 WHEEL (from scripts/build-wheel.sh)" >&2; exit 2; }
wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
# The interpreter itself, not a shim (pyenv's needs pyenv on PATH, which the install has not).
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
tools=${VLA_WHEEL_TOOLS:-$root/target/wheel-tools}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vla-wheel-check.XXXXXX")
if [[ ${KEEP_TMP:-0} != 1 ]]; then
    trap 'rm -rf "$tmp"' EXIT
fi
fail() { echo "wheel-check: $*" >&2; exit 1; }

# --- 1. audit ----------------------------------------------------------------------------------
if [[ ! -x $tools/bin/auditwheel ]]; then
    [[ -x $tools/bin/python ]] || "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check auditwheel==6.8.2 >&2
fi
report=$("$tools/bin/auditwheel" show "$wheel" 2>&1) || { echo "$report" >&2; fail "auditwheel show failed"; }
# auditwheel wraps its lines: join them before reading the tag.
tag=$(tr '\n' ' ' <<<"$report" | sed -nE 's/.*consistent with the following platform tag: *"([^"]+)".*/\1/p')
case $tag in
    manylinux_2_*_x86_64 | musllinux_1_*_x86_64) ;;
    *) echo "$report" >&2; fail "auditwheel found no manylinux or musllinux tag (got '${tag}')" ;;
esac
[[ ${wheel##*/} == *"$tag"* ]] || fail "the file name does not carry auditwheel's tag $tag: ${wheel##*/}"

mkdir "$tmp/unpacked"
"$python" -m zipfile -e "$wheel" "$tmp/unpacked"
bin=$(echo "$tmp"/unpacked/vla_launch-*.data/scripts/vla-launch)
[[ -f $bin ]] || fail "no vla-launch binary in the wheel's scripts"
needed=$(readelf -d "$bin" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p' | tr '\n' ' ')
if [[ $needed == *nvidia* ]]; then
    fail "the binary links NVML ($needed): it must dlopen it, or it cannot run without a driver"
fi
if [[ $tag == manylinux_* ]]; then
    # manylinux_2_17 allows GLIBC_ versions up to 2.17: compare every version the binary asks for.
    limit=$(sed -E 's/manylinux_([0-9]+)_([0-9]+)_.*/\1.\2/' <<<"$tag")
    newest=$(objdump -T "$bin" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -Vu | tail -1)
    [[ -n $newest ]] || fail "objdump found no GLIBC_ symbol versions in $bin"
    if [[ $(printf '%s\n%s\n' "$limit" "$newest" | sort -V | tail -1) != "$limit" ]]; then
        fail "the binary needs GLIBC_$newest, newer than its tag $tag allows (GLIBC_$limit)"
    fi
    echo "wheel-check: audit ok: $tag; newest glibc symbol GLIBC_$newest; links $needed" >&2
else
    echo "wheel-check: audit ok: $tag; links $needed" >&2
fi

# --- 2. install, no Rust on PATH ---------------------------------------------------------------
"$python" -m venv "$tmp/venv"
norust=$tmp/venv/bin:/usr/local/bin:/usr/bin:/bin
for tool in cargo rustc rustup; do
    if PATH=$norust command -v "$tool" >/dev/null; then
        fail "$tool is on the install PATH ($norust): the check would not show that Rust is not needed"
    fi
done
unset VLA_LAUNCH_DIR OPENVLA_OFT_DIR VLA_LAUNCH_GPUS CUDA_VISIBLE_DEVICES VLA_LAUNCH_PROFILE_DIR \
    CARGO_HOME RUSTUP_HOME
export PATH=$norust
pip install --quiet --disable-pip-version-check --no-index "$wheel"
exe=$tmp/venv/bin/vla-launch
share=$tmp/venv/share/vla-launch
[[ -x $exe ]] || fail "no $exe after pip install"
[[ $(command -v vla-launch) == "$exe" ]] || fail "vla-launch on PATH is $(command -v vla-launch), not $exe"
for f in scripts/probe_finetune.py scripts/probe/model.py launch-profiles/aloha-probe.yaml \
    scripts/finetune_fsdp.py scripts/real_probe_finetune.py scripts/real_probe/upstream.py; do
    [[ -f $share/$f ]] || fail "the wheel did not install $share/$f"
done

# --- 3. run from elsewhere ---------------------------------------------------------------------
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
version=$(vla-launch --version)
echo "wheel-check: $version" >&2
if [[ -e $root/.git ]] && ! grep -Eq '^vla-launch [^ ]+ \([0-9a-f]{12} ' <<<"$version"; then
    fail "--version does not name the commit: $version"
fi
plan=$(vla-launch plan --profile aloha --gpus 4xrtx4090 2>"$tmp/stderr") || {
    cat "$tmp/stderr" >&2
    fail "vla-launch plan --profile aloha --gpus 4xrtx4090 failed"
}
head -1 <<<"$plan" | grep -q "^Plan for profile 'aloha'" || fail "unexpected plan: $plan"
echo "wheel-check: $(head -1 <<<"$plan")" >&2
out=$(vla-launch --profile aloha-probe --dry-run --gpus 1xh100 2>"$tmp/stderr") || {
    cat "$tmp/stderr" >&2
    fail "the probe dry run failed"
}
# The printed command is shell: split it with shlex, then check `cd DIR` and the script.
python - "$share" "$out" <<'PY'
import os, shlex, sys
share, out = sys.argv[1], sys.argv[2]
line = next(l for l in out.splitlines() if "torchrun" in l)
words = shlex.split(line)
assert words[0] == "cd" and words[2] == "&&", f"expected `cd DIR && ...`: {line}"
workdir = words[1]
script = next(w for w in words if w.endswith("probe_finetune.py"))
path = os.path.join(workdir, script)
if os.path.realpath(workdir) != os.path.realpath(share):
    sys.exit(f"wheel-check: the command runs in {workdir}, not {share}: {line}")
if not os.path.isfile(path):
    sys.exit(f"wheel-check: {path} does not exist: {line}")
print(f"wheel-check: ok, the dry run runs {path}", file=sys.stderr)
PY
