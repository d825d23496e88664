#!/usr/bin/env bash
# The launcher's own plan on upstream OpenVLA-OFT's code, run the way a user runs it in a checkout
# (`cd openvla-oft && vla-launch --profile aloha [--vram-cap ...]`), with one substitution: the FSDP
# addition that vla-launch finds under $VLA_LAUNCH_DIR/scripts/ is a shim that runs
# scripts/fsdp/check_train.py, i.e. the addition around upstream's finetune() with only its I/O
# replaced (random openvla-7b weights, synthetic RLDS batches, no wandb). Planning, the script choice,
# the command, torchrun, the monitor, upstream's training loop and checkpoint saving are the real ones.
#
#   scripts/fsdp/launcher_check.sh BIN SCRIPTS_DIR CHECKOUT OUT_DIR [vla-launch args...]
# e.g. on 4 GPUs: ... /tmp/lc --vram-cap 24564MiB   (the planner's 4x RTX 4090 plan)
#      on 1 GPU:  ... /tmp/lc --vram-cap 40960MiB   (the 1x A100 40 GB plan: DDP with checkpointing)
# Writes OUT_DIR/{plan.txt,stdout,stderr,rc,files.txt,check/rank<N>.json}; checkpoints go to
# /tmp/vla-check-runs (GBs). 20 steps, a checkpoint at step 20, no LoRA merge (docs/fsdp.md says
# what the merge costs); a `--set train.max_steps=N --set train.save_freq=N` among the arguments
# comes later and wins.
set -u
BIN=$(readlink -f "$1"); S=$(cd "$2" && pwd); CHECKOUT=$(cd "$3" && pwd); OUT=$4; shift 4
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
SHIM=$OUT/shim/scripts; mkdir -p "$SHIM"
cat >"$SHIM/finetune_fsdp.py" <<PY
# vla-launch's FSDP addition, replaced for this check by the addition with synthetic I/O.
import runpy
import sys

sys.argv[0] = "$S/fsdp/check_train.py"
runpy.run_path("$S/fsdp/check_train.py", run_name="__main__")
PY
RUNS=/tmp/vla-check-runs; rm -rf "$RUNS"
export PYTHONPATH="$S${PYTHONPATH:+:$PYTHONPATH}"  # check_train.py imports scripts/'s packages
export VLA_LAUNCH_DIR=$OUT/shim FSDP_CHECK_OUT=$OUT/check VLA_LAUNCH_CACHE_DIR=$OUT/cache \
  VLA_DATA_ROOT=unused-synthetic VLA_RUN_ROOT=$RUNS WANDB_ENTITY=none WANDB_PROJECT=none
SETS=(--set train.vla_path=synthetic/openvla-7b --set train.max_steps=20 --set train.save_freq=20
      --set train.merge_lora_during_training=false)
cd "$CHECKOUT" || exit 2
"$BIN" plan --profile aloha "${SETS[@]}" "$@" >"$OUT/plan.txt" 2>&1
"$BIN" --log-dir "$OUT/log" --grace 30 --profile aloha "${SETS[@]}" "$@" >"$OUT/stdout" 2>"$OUT/stderr"
echo $? >"$OUT/rc"
find "$RUNS" -type f -printf '%s %P\n' 2>/dev/null | sort -k2 >"$OUT/files.txt"
echo "launcher_check: rc $(cat "$OUT/rc"), $(wc -l <"$OUT/files.txt") files saved under $RUNS"
