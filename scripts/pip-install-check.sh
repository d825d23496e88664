#!/usr/bin/env bash
# CI: `pip install .` in a fresh virtualenv (maturin from PyPI builds the release binary into the
# wheel), then, from a directory outside the checkout and with no VLA_LAUNCH_DIR/OPENVLA_OFT_DIR,
# the installed vla-launch plans `--profile aloha-probe --dry-run` and prints a command whose
# script exists (the probe trainer shipped in <venv>/share/vla-launch). Needs python3 with venv,
# a Rust toolchain and access to PyPI. The release build takes minutes (see README, "Install").
#
# Environment: PYTHON (default python3); CARGO_TARGET_DIR (default: a fresh one in the temp dir,
# so the timing is that of a clean build and the checkout's target/ is not locked meanwhile);
# KEEP_TMP=1 keeps the temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vla-pip-check.XXXXXX")
if [[ ${KEEP_TMP:-0} != 1 ]]; then
    trap 'rm -rf "$tmp"' EXIT
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$tmp/target}
unset VLA_LAUNCH_DIR OPENVLA_OFT_DIR VLA_LAUNCH_GPUS CUDA_VISIBLE_DEVICES VLA_LAUNCH_PROFILE_DIR

"$python" -m venv "$tmp/venv"
start=$(date +%s)
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root"
echo "pip-install-check: pip install . took $(($(date +%s) - start)) s" >&2

exe=$tmp/venv/bin/vla-launch
share=$tmp/venv/share/vla-launch
[[ -x $exe ]] || { echo "pip-install-check: no $exe after pip install" >&2; exit 1; }
for f in scripts/probe_finetune.py scripts/probe/model.py launch-profiles/aloha-probe.yaml \
    scripts/finetune_fsdp.py scripts/real_probe_finetune.py scripts/real_probe/upstream.py; do
    [[ -f $share/$f ]] || { echo "pip-install-check: the wheel did not install $share/$f" >&2; exit 1; }
done

mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
version=$("$exe" --version)
echo "pip-install-check: $version" >&2
if [[ -e $root/.git ]] && ! grep -Eq '^vla-launch [^ ]+ \([0-9a-f]{12} ' <<<"$version"; then
    echo "pip-install-check: --version does not name the commit: $version" >&2
    exit 1
fi
out=$("$exe" --profile aloha-probe --dry-run --gpus 1xh100 2>"$tmp/stderr") || {
    cat "$tmp/stderr" >&2
    echo "pip-install-check: the dry run failed" >&2
    exit 1
}
# The printed command is shell: split it with shlex, then check `cd DIR` and the script.
"$tmp/venv/bin/python" - "$share" "$out" <<'PY'
import os, shlex, sys
share, out = sys.argv[1], sys.argv[2]
line = next(l for l in out.splitlines() if "torchrun" in l)
words = shlex.split(line)
assert words[0] == "cd" and words[2] == "&&", f"expected `cd DIR && ...`: {line}"
workdir = words[1]
script = next(w for w in words if w.endswith("probe_finetune.py"))
path = os.path.join(workdir, script)
if os.path.realpath(workdir) != os.path.realpath(share):
    sys.exit(f"pip-install-check: the command runs in {workdir}, not {share}: {line}")
if not os.path.isfile(path):
    sys.exit(f"pip-install-check: {path} does not exist: {line}")
print(f"pip-install-check: ok, the dry run runs {path}", file=sys.stderr)
PY
