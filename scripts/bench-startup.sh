#!/usr/bin/env bash
# Time from starting `vla-launch` to torchrun's first instruction, for the whole CLI: profile
# lookup, GPU description (--gpus) or NVML, planning, the run record, spawn. The "torchrun" is a
# bash script whose first act is to print $EPOCHREALTIME.
#   scripts/bench-startup.sh [BIN] [N] [--gpus SPEC | nvml]
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/vla-launch}")
N=${2:-30}
MODE=${3:-2xh100}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/torchrun" <<'SH'
#!/bin/bash
echo "$EPOCHREALTIME" >>"$STAMP_FILE"
SH
chmod +x "$WORK/torchrun"
gpus=(--gpus "$MODE")
[[ $MODE == nvml ]] && gpus=()
export VLA_DATA_ROOT=/data VLA_RUN_ROOT="$WORK/runs" WANDB_ENTITY=e WANDB_PROJECT=p STAMP_FILE="$WORK/stamps"
for _ in $(seq 1 "$N"); do
  t0=$EPOCHREALTIME
  "$BIN" -q --profile aloha "${gpus[@]}" --torchrun "$WORK/torchrun" --log-dir "$WORK/logs" >/dev/null 2>&1 || true
  t1=$(tail -n 1 "$WORK/stamps")
  echo "$t0 $t1"
done | python3 -c '
import statistics, sys
d = [1000 * (float(b) - float(a)) for a, b in (l.split() for l in sys.stdin)]
print(f"start to exec of torchrun, {len(d)} runs: median {statistics.median(d):.1f} ms, min {min(d):.1f} ms, max {max(d):.1f} ms")'
