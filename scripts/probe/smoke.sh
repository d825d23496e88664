#!/usr/bin/env bash
# CPU smoke test of scripts/probe_finetune.py in its tiny mode (VLA_PROBE_TINY=1): DDP and FSDP,
# with and without gradient checkpointing, with accumulation, single process and torchrun x2.
# Usage: scripts/probe/smoke.sh [python]   (python defaults to `python3`; torchrun is taken beside it)
set -euo pipefail
PY=${1:-python3}
TORCHRUN=$(dirname "$(command -v "$PY")")/torchrun
HERE=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=$HERE/probe_finetune.py
ALOHA=(--dataset_name aloha_smoke --use_film True --num_images_in_input 3 --use_proprio True
       --batch_size 2 --grad_accumulation_steps 2 --max_steps 3)
LIBERO=(--dataset_name libero_spatial_no_noops --num_images_in_input 2 --use_proprio True
        --batch_size 2 --max_steps 3)
export VLA_PROBE_TINY=1
fail=0
check() { # name expected_lines cmd...
  local name=$1 want=$2; shift 2
  local out; out=$(mktemp)
  if "$@" >"$out" 2>&1; then
    # ranks share the merged stream here, so a result may follow another rank's progress bar
    # (count occurrences, not lines: two ranks' results can land on one line of the merged stream)
    local got; got=$(grep -o 'VLA_PROBE_RESULT {' "$out" | wc -l)
    local bad; bad=$(grep -o '"last_loss":[^,}]*' "$out" | grep -c -E 'null|NaN|Infinity' || true)
    if [[ $got == "$want" && $bad == 0 ]]; then
      echo "ok   $name ($got result lines)"
    else
      echo "FAIL $name: $got of $want result lines, $bad without a finite loss"; fail=1
    fi
  else
    echo "FAIL $name: exit $?"; tail -20 "$out"; fail=1
  fi
  rm -f "$out"
}
check "1 proc DDP ALOHA" 1 "$PY" "$SCRIPT" "${ALOHA[@]}"
check "1 proc FSDP+ckpt ALOHA" 1 "$PY" "$SCRIPT" "${ALOHA[@]}" --use_fsdp True --gradient_checkpointing True
check "1 proc DDP LIBERO" 1 "$PY" "$SCRIPT" "${LIBERO[@]}"
for fsdp in False True; do
  for ckpt in False True; do
    check "torchrun x2 fsdp=$fsdp ckpt=$ckpt ALOHA" 2 "$TORCHRUN" --standalone --nnodes 1 --nproc-per-node 2 \
      "$SCRIPT" "${ALOHA[@]}" --use_fsdp $fsdp --gradient_checkpointing $ckpt
  done
done
check "torchrun x2 FSDP LIBERO" 2 "$TORCHRUN" --standalone --nnodes 1 --nproc-per-node 2 "$SCRIPT" "${LIBERO[@]}" --use_fsdp True
# flag handling: an unknown flag exits 2 before any work, like draccus
if "$PY" "$SCRIPT" --no_such_flag 1 >/dev/null 2>&1; then echo "FAIL unknown flag accepted"; fail=1
else rc=$?; [[ $rc == 2 ]] && echo "ok   unknown flag -> exit 2" || { echo "FAIL unknown flag -> exit $rc"; fail=1; }; fi
exit $fail
