#!/usr/bin/env bash
# Time from starting `vla-launch` to torchrun's first instruction, for the whole CLI: profile
# lookup, GPU description (--gpus) or NVML, asking the script for its flags (`python SCRIPT
# --help`), planning, the run record, spawn. The "torchrun" is a bash script whose first act is to
# print $EPOCHREALTIME. The script is the test suite's stand-in finetune.py, asked twice over:
#   - "own": python is a shell stand-in that prints the same --help text (the launcher's own cost,
#     process spawns included, without Python's start-up);
#   - "python3": the real interpreter runs the stand-in (what a user sees, less the real
#     finetune.py's imports of torch and transformers, seconds, which no launcher can avoid).
# Each run comes after a pause of PAUSE seconds (default 0.2): a launcher is started once, and
# runs back to back would find the kernel's cgroup lock still fast from the run before.
#   scripts/bench-startup.sh [BIN] [N] [--gpus SPEC | nvml]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-target/release/vla-launch}")
N=${2:-30}
MODE=${3:-2xh100}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/torchrun" <<'SH'
#!/bin/bash
echo "$EPOCHREALTIME" >>"$STAMP_FILE"
SH
python3 tests/fixtures/openvla-oft/vla-scripts/finetune.py --help >"$WORK/help.txt"
printf '#!/bin/bash\ncat %q\n' "$WORK/help.txt" >"$WORK/python"
chmod +x "$WORK/torchrun" "$WORK/python"
gpus=(--gpus "$MODE")
[[ $MODE == nvml ]] && gpus=()
export VLA_DATA_ROOT=/data VLA_RUN_ROOT="$WORK/runs" WANDB_ENTITY=e WANDB_PROJECT=p \
  OPENVLA_OFT_DIR="$PWD/tests/fixtures/openvla-oft" STAMP_FILE="$WORK/stamps"
for python in "$WORK/python" python3; do
  : >"$WORK/stamps"
  for _ in $(seq 1 "$N"); do
    sleep "${PAUSE:-0.2}"
    t0=$EPOCHREALTIME
    "$BIN" -q --profile aloha "${gpus[@]}" --set script.python="$python" --torchrun "$WORK/torchrun" \
      --log-dir "$WORK/logs" >/dev/null 2>"$WORK/err" || true
    if [[ $(wc -l <"$WORK/stamps") -eq 0 ]]; then
      echo "vla-launch did not start torchrun:" >&2
      cat "$WORK/err" >&2
      exit 1
    fi
    echo "$t0 $(tail -n 1 "$WORK/stamps")"
  done | python3 -c '
import statistics, sys
d = [1000 * (float(b) - float(a)) for a, b in (l.split() for l in sys.stdin)]
print(f"start to exec of torchrun, '"$MODE"', script asked by {sys.argv[1]}, {len(d)} runs: "
      f"median {statistics.median(d):.1f} ms, min {min(d):.1f} ms, max {max(d):.1f} ms")' \
    "$([[ $python == python3 ]] && echo python3 || echo 'a shell stand-in for python (own)')"
done
