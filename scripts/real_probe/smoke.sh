#!/usr/bin/env bash
# CPU check of the real-code probe against an openvla-oft checkout, in an environment with the checkout's
# pinned packages (transformers fork 4.40.1, peft 0.11.1, timm 0.9.10, draccus 0.8.0, accelerate, rich, absl).
# 1. --count_params_only (meta device): the real classes must reproduce the seed's counts exactly.
# 2. VLA_PROBE_TINY=1: a 2-layer Llama / 3-block ViTs through finetune.py's own run_forward_pass on the CPU.
# 3. --help lists the upstream flags plus --gradient_checkpointing (upstream's own --help crashes, see probe.md).
# 4. a bad checkout path exits 2; 5. torchrun x2 (gloo) gives one result line per rank.
# Usage: scripts/real_probe/smoke.sh PYTHON OPENVLA_OFT_DIR
set -uo pipefail
PY=${1:?python}; OFT=${2:?openvla-oft checkout}
SCRIPT=$(cd "$(dirname "$0")/.." && pwd)/real_probe_finetune.py
ALOHA=(--dataset_name aloha1_put_X_into_pot_300_demos --use_film True --num_images_in_input 3 --use_proprio True)
fail=0
out=$("$PY" "$SCRIPT" --openvla_oft_dir "$OFT" --count_params_only True "${ALOHA[@]}" 2>&1)
for want in "trainable params: 110,828,288 || all params: 7,652,065,472" "(original): 28697344" "(post-wrap): 484939264" \
            "total trainable params: 852557326 || total params: 8393794510"; do
  if grep -qF "$want" <<<"$out"; then echo "ok   count: $want"; else echo "FAIL count: missing '$want'"; fail=1; fi
done
out=$(VLA_PROBE_TINY=1 "$PY" "$SCRIPT" --openvla_oft_dir "$OFT" "${ALOHA[@]}" --batch_size 2 --grad_accumulation_steps 2 \
      --max_steps 2 --gradient_checkpointing True 2>&1)
line=$(grep -o 'VLA_PROBE_RESULT {.*' <<<"$out" | tail -1)
if [[ $line == *'"steps":2'* && $line == *'"real_code":true'* && $line != *'"last_loss":null'* ]]; then
  echo "ok   tiny CPU run: ${line:0:120}..."
else
  echo "FAIL tiny CPU run"; tail -20 <<<"$out"; fail=1
fi
help=$("$PY" "$SCRIPT" --openvla_oft_dir "$OFT" --help 2>&1)
for f in --vla_path --use_film --grad_accumulation_steps --merge_lora_during_training --gradient_checkpointing; do
  if grep -q -- "$f" <<<"$help"; then echo "ok   --help lists $f"; else echo "FAIL --help lacks $f"; fail=1; fi
done
out=$("$PY" "$SCRIPT" --openvla_oft_dir /nonexistent --max_steps 1 2>&1); rc=$?
if [[ $rc == 2 && $out == *"not an openvla-oft checkout"* ]]; then echo "ok   bad checkout: exit 2"; else echo "FAIL bad checkout: exit $rc"; fail=1; fi
TORCHRUN=$(dirname "$(command -v "$PY")")/torchrun
if [[ -x $TORCHRUN ]]; then  # 2 ranks: the process group comes from finetune.py's import (overwatch's PartialState)
  out=$(cd /tmp && VLA_PROBE_TINY=1 OMP_NUM_THREADS=1 "$TORCHRUN" --standalone --nnodes 1 --nproc-per-node 2 "$SCRIPT" \
        --openvla_oft_dir "$OFT" --dataset_name libero_spatial_no_noops --num_images_in_input 2 --use_proprio True \
        --batch_size 1 --max_steps 1 2>&1)
  n=$(grep -o 'VLA_PROBE_RESULT {[^}]*"world_size":2' <<<"$out" | wc -l)
  if [[ $n == 2 ]]; then echo "ok   torchrun x2: 2 result lines"; else echo "FAIL torchrun x2: $n result lines"; tail -20 <<<"$out"; fail=1; fi
fi
exit $fail
