#!/usr/bin/env bash
# Issue 24: the real-code probe on padded, varying-length batches for long enough to see the allocator
# settle, at the largest 1-GPU plans (DDP, no checkpointing: ALOHA batch 4, LIBERO batch 8), under
# torch's default allocator and under expandable_segments (what the launcher sets).
#
#   scripts/real_probe/padded_runs.sh OPENVLA_OFT_CHECKOUT OUT_DIR [STEPS] [RUN...]
# RUN: aloha-default aloha-expandable libero-default libero-expandable (default: all four), and the
# same with -fixed (one instruction, no padding: the old probe's batches) for a baseline, or with -math
# (only the math SDPA kernel enabled, VLA_PROBE_SDPA=math: what a torch without a fused masked
# kernel would need; the bound for torch 2.2.0's unknown choice).
# Each run: OUT_DIR/RUN.log (its stderr and stdout) and OUT_DIR/RUN.json (the VLA_PROBE_RESULT
# line's JSON: peaks, peak_*_by_step at steps 1, 2, 5, 10, 20, 50, 100, 200, sdpa_kernel, text
# lengths). Needs the checkout's pinned packages on PYTHONPATH (docs/probe.md) and one GPU;
# about 5-7 minutes a run at 200 steps on an H100.
set -u
CHECKOUT=$(cd "$1" && pwd); OUT=$2; STEPS=${3:-200}; shift $(($# >= 3 ? 3 : $#))
RUNS=("$@"); [ ${#RUNS[@]} -eq 0 ] && RUNS=(aloha-default aloha-expandable libero-default libero-expandable)
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
ALOHA=(--dataset_name aloha1_put_X_into_pot_300_demos --use_film True --num_images_in_input 3 --use_proprio True
       --batch_size 4)
LIBERO=(--dataset_name libero_spatial_no_noops --use_film False --num_images_in_input 2 --use_proprio True
        --batch_size 8)
status=0
for run in "${RUNS[@]}"; do
  case $run in aloha-*) flags=("${ALOHA[@]}") ;; libero-*) flags=("${LIBERO[@]}") ;; *) echo "unknown run $run"; exit 2 ;; esac
  # env: every -u before the first NAME=VALUE (env takes what follows an assignment as the command).
  unset_=(); set_=()
  case $run in *-expandable*) set_+=(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) ;;
               *) unset_+=(-u PYTORCH_CUDA_ALLOC_CONF) ;; esac
  case $run in *-math) set_+=(VLA_PROBE_SDPA=math) ;; *) unset_+=(-u VLA_PROBE_SDPA) ;; esac
  alloc=(env "${unset_[@]}" "${set_[@]}")
  case $run in *-fixed) instr=fixed ;; *) instr=varied ;; esac
  (cd "$CHECKOUT" && "${alloc[@]}" python3 "$HERE/real_probe_finetune.py" --openvla_oft_dir "$CHECKOUT" "${flags[@]}" \
     --grad_accumulation_steps 1 --gradient_checkpointing False --max_steps "$STEPS" --probe_instructions "$instr") \
    > "$OUT/$run.log" 2>&1
  rc=$?
  grep -o 'VLA_PROBE_RESULT {.*' "$OUT/$run.log" | tail -1 | cut -c18- > "$OUT/$run.json"
  echo "$run rc=$rc $(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
g = 2 ** 30
print(f\"peak alloc {r['peak_alloc_bytes'] / g:.2f} reserved {r['peak_reserved_bytes'] / g:.2f} \"
      f\"nvml {r['peak_nvml_used_bytes'] / g:.2f} GiB, sdpa {r.get('sdpa_kernel')}, text {r.get('text_tokens_min')}-\"
      f\"{r.get('text_tokens_max')} tokens, {r.get('padded_batches')} padded, {r['s_per_step']:.2f} s/step, torch {r['torch']}\")
" "$OUT/$run.json" 2>/dev/null || echo "no result")"
  [ $rc -eq 0 ] || status=1
done
exit $status
