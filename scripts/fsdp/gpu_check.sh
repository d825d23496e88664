#!/usr/bin/env bash
# GPU acceptance of scripts/finetune_fsdp.py on the real OpenVLA-OFT code (openvla-7b architecture,
# random weights, synthetic batches; 2 GPUs): FSDP vs DDP losses and gradients over 10 steps,
# checkpoint files, memory and step time, the 24564 MiB cap; optionally merged checkpoints through
# upstream's evaluation loader and --resume.
#
#   scripts/fsdp/gpu_check.sh SCRIPTS_DIR OPENVLA_OFT_CHECKOUT OUT_DIR [PHASES]
# SCRIPTS_DIR holds finetune_fsdp.py, fsdp/, probe/ and real_probe/. PHASES: any of
#   A  DDP (head synchronised), ALOHA, batch 2, checkpointing, 10 steps, save (no merge), gradients
#   R  A again (g-ddp2, no save): DDP's own run-to-run spread on the GPU, the yardstick for A vs B
#   B  the same with --use_fsdp True
#   C  compare A's and B's checkpoint files
#   D  FSDP under a 24564 MiB cap, 5 steps, save (if it fails: again with expandable_segments)
#   E  DDP and FSDP, 3 steps, merged checkpoints; both through openvla_utils; --resume from FSDP's
# (default ABCD). B_CAP=1 runs B under the cap. LR=x passes --learning_rate x to A, R, B and E's runs (a
# small one keeps random-weight training out of the regime where one Adam step changes the loss 5x).
# On the device machine give OUT_DIR outside $OUT and tar it into $OUT: the run tool returns only a
# limited number of files. Checkpoints go to /tmp/fsdp-runs (GBs), results and logs to OUT_DIR.
set -u
S=$(cd "$1" && pwd); CHECKOUT=$(cd "$2" && pwd); OUT=$3; PHASES=${4:-ABCD}
mkdir -p "$OUT"; RUNS=/tmp/fsdp-runs; mkdir -p $RUNS
export VLA_FINETUNE_SCRIPT="$CHECKOUT/vla-scripts/finetune.py" REAL_PROBE_DIR="$S" OMP_NUM_THREADS=4
export PYTHONPATH="$S${PYTHONPATH:+:$PYTHONPATH}"  # the check scripts import scripts/'s packages
cd "$CHECKOUT" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpus.csv" 2>&1
python3 -c "import torch,transformers,peft,timm;print(torch.__version__,transformers.__version__,peft.__version__,timm.__version__)" > "$OUT/versions.txt" 2>&1
run() { # name timeout flags...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  FSDP_CHECK_OUT="$OUT/$name" timeout "$t" python3 -m torch.distributed.run --standalone --nproc-per-node "${NPROC:-2}" \
    "$S/fsdp/check_train.py" --run_root_dir "$RUNS/$name" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?; echo "$name rc=$rc $(( $(date +%s) - t0 ))s"; echo "$rc" > "$OUT/$name.rc"
}
ALOHA="--dataset_name aloha1_synthetic --use_film True --num_images_in_input 3 --use_proprio True"
B2="$ALOHA --batch_size 2 --gradient_checkpointing True --vla_path synthetic/openvla-7b"
LRF=${LR:+--learning_rate $LR}
case $PHASES in *A*)
  FSDP_CHECK_DDP_SYNC_HEAD=1 FSDP_CHECK_GRADS="$OUT/grads-ddp-{rank}.pt" run g-ddp 240 $B2 $LRF --max_steps 10 --save_freq 10 --merge_lora_during_training False --use_fsdp False ;; esac
case $PHASES in *R*)
  FSDP_CHECK_DDP_SYNC_HEAD=1 FSDP_CHECK_GRADS="$OUT/grads-ddp2-{rank}.pt" run g-ddp2 240 $B2 $LRF --max_steps 10 --save_freq 100 --merge_lora_during_training False --use_fsdp False ;; esac
case $PHASES in *B*)
  # B_CAP=1: run B itself under the 24564 MiB cap (one run instead of B and D when device time is short)
  [ "${B_CAP:-0}" = 1 ] && export VLA_LAUNCH_VRAM_CAP_BYTES=$((24564 * 1024 * 1024))
  FSDP_CHECK_GRADS="$OUT/grads-fsdp-{rank}.pt" run g-fsdp 240 $B2 $LRF --max_steps 10 --save_freq 10 --merge_lora_during_training False --use_fsdp True
  unset VLA_LAUNCH_VRAM_CAP_BYTES ;; esac
case $PHASES in *C*)
  timeout 120 python3 "$S/fsdp/compare_ckpt.py" $RUNS/g-ddp/*--10_chkpt $RUNS/g-fsdp/*--10_chkpt $ALOHA --files_only \
    --out "$OUT/compare-g.json" > "$OUT/compare-g.log" 2>&1; echo "compare-g rc=$?" ;; esac
case $PHASES in *D*)
  VLA_LAUNCH_VRAM_CAP_BYTES=$((24564 * 1024 * 1024)) run cap-fsdp 240 $B2 --max_steps 5 --save_freq 5 --merge_lora_during_training False --use_fsdp True
  if [ "$(cat "$OUT/cap-fsdp.rc")" != 0 ]; then  # again with the allocator that fragments less
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True VLA_LAUNCH_VRAM_CAP_BYTES=$((24564 * 1024 * 1024)) \
      run cap-fsdp-expandable 240 $B2 --max_steps 5 --save_freq 5 --merge_lora_during_training False --use_fsdp True
  fi ;; esac
case $PHASES in *E*)
  FSDP_CHECK_DDP_SYNC_HEAD=1 run m-ddp 300 $B2 $LRF --max_steps 3 --save_freq 3 --merge_lora_during_training True --use_fsdp False
  run m-fsdp 300 $B2 $LRF --max_steps 3 --save_freq 3 --merge_lora_during_training True --use_fsdp True
  timeout 240 python3 "$S/fsdp/compare_ckpt.py" $RUNS/m-ddp/*--3_chkpt $RUNS/m-fsdp/*--3_chkpt $ALOHA --batch_size 2 \
    --out "$OUT/compare-m.json" > "$OUT/compare-m.log" 2>&1; echo "compare-m rc=$?"
  run r-fsdp 300 $ALOHA --batch_size 2 --gradient_checkpointing True --vla_path "$(ls -d $RUNS/m-fsdp/*--3_chkpt)" \
    --resume True --resume_step 3 --max_steps 5 --save_freq 100 --merge_lora_during_training False --use_fsdp True ;; esac
ls -la $RUNS/*/*chkpt* > "$OUT/checkpoint-files.txt" 2>&1
du -sh $RUNS/*/*chkpt* >> "$OUT/checkpoint-files.txt" 2>&1
python3 "$S/fsdp/verify.py" "$OUT" > "$OUT/verify.txt" 2>&1; cat "$OUT/verify.txt"
