#!/usr/bin/env bash
# CPU check of scripts/finetune_fsdp.py on upstream OpenVLA-OFT's real code (tiny random model,
# 2 processes, gloo): gradients, losses, checkpoints, upstream's evaluation loader, --resume,
# gradient checkpointing and the validation clock, FSDP against DDP. Then verify.py judges.
#
#   scripts/fsdp/cpu_check.sh PYTHON_BIN_DIR OPENVLA_OFT_CHECKOUT OUT_DIR
# e.g. scripts/fsdp/cpu_check.sh /work/venv-real/bin /work/upstream/openvla-oft /tmp/fsdp-cpu
# Needs torch (2.2.0, upstream's pin: FSDP1; 2.5+: FSDP2), the pinned transformers fork, timm 0.9.10, peft 0.11.1, draccus, accelerate,
# and the real-code probe's scripts/real_probe (REAL_PROBE_DIR if it is elsewhere). ~5 min on 2 cores.
set -u
BIN=$1; CHECKOUT=$2; OUT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export FSDP_CHECK_TINY=1 OMP_NUM_THREADS=1 VLA_FINETUNE_SCRIPT="$CHECKOUT/vla-scripts/finetune.py"
export REAL_PROBE_DIR=${REAL_PROBE_DIR:-$(dirname "$HERE")}
# the check scripts import vla-launch's packages (scripts/) and the real-code probe's
export PYTHONPATH="$(dirname "$HERE"):$REAL_PROBE_DIR${PYTHONPATH:+:$PYTHONPATH}"
cd "$CHECKOUT" || exit 2
fail=0
run() { # name timeout flags...
  local name=$1 t=$2; shift 2
  FSDP_CHECK_OUT="$OUT/$name" timeout "$t" "$BIN/torchrun" --standalone --nproc-per-node 2 \
    "$HERE/check_train.py" --vla_path synthetic/openvla-7b --run_root_dir "$OUT/$name-runs" "$@" \
    > "$OUT/$name.log" 2>&1
  local rc=$?; echo "$name rc=$rc"; echo "$rc" > "$OUT/$name.rc"
}
ALOHA="--dataset_name aloha1_synthetic --use_film True --num_images_in_input 3 --use_proprio True --batch_size 1"
LIBERO="--dataset_name libero_synthetic --use_film False --num_images_in_input 2 --use_proprio True --batch_size 2"

# 0. flags: --help of the wrapper lists upstream's flags and the two new ones (upstream's own --help
#    crashes: draccus hands argparse the comment "(from 10% to 100%)" as a %-format string)
PYTHONPATH="$CHECKOUT:$REAL_PROBE_DIR" "$BIN/python" -c "import runpy,sys; from real_probe import stubs; stubs.install(); sys.argv[0]='$HERE/../finetune_fsdp.py'; runpy.run_path(sys.argv[0], run_name='__main__')" --help > "$OUT/help.txt" 2>&1
echo $? > "$OUT/help.rc"
PYTHONPATH="$CHECKOUT:$REAL_PROBE_DIR" "$BIN/python" -c "import runpy,sys; from real_probe import stubs; stubs.install(); sys.argv[0]='vla-scripts/finetune.py'; runpy.run_path(sys.argv[0], run_name='__main__')" --help > "$OUT/help-upstream.txt" 2>&1
echo $? > "$OUT/help-upstream.rc"

# 1. reduced gradients of the first step: upstream DDP, DDP with the head synchronised, FSDP
FSDP_CHECK_GRADS="$OUT/grads-ddp-upstream-{rank}.pt" run g-ddp-upstream 600 $ALOHA --max_steps 1 --save_freq 100 --use_fsdp False
FSDP_CHECK_DDP_SYNC_HEAD=1 FSDP_CHECK_GRADS="$OUT/grads-ddp-{rank}.pt" run g-ddp 600 $ALOHA --max_steps 2 --save_freq 100 --use_fsdp False
FSDP_CHECK_GRADS="$OUT/grads-fsdp-{rank}.pt" run g-fsdp 600 $ALOHA --max_steps 2 --save_freq 100 --use_fsdp True

# 2. ALOHA (FiLM, 3 images, proprio), accumulation 2, checkpointing, validation, merged checkpoint
M="$ALOHA --grad_accumulation_steps 2 --gradient_checkpointing True --use_val_set True --val_freq 2 --val_time_limit 2"
FSDP_CHECK_DDP_SYNC_HEAD=1 run m-ddp 900 $M --max_steps 3 --save_freq 3 --merge_lora_during_training True --use_fsdp False
run m-fsdp 900 $M --max_steps 3 --save_freq 3 --merge_lora_during_training True --use_fsdp True
"$BIN/python" "$HERE/compare_ckpt.py" "$OUT"/m-ddp-runs/*--3_chkpt "$OUT"/m-fsdp-runs/*--3_chkpt $ALOHA \
  --out "$OUT/compare-m.json" > "$OUT/compare-m.log" 2>&1; echo "compare-m rc=$?"

# 3. --resume from each checkpoint (2 more steps)
R="$ALOHA --grad_accumulation_steps 2 --gradient_checkpointing True --resume True --resume_step 3 --max_steps 5 --save_freq 100 --merge_lora_during_training False"
FSDP_CHECK_DDP_SYNC_HEAD=1 run r-ddp 900 $R --vla_path "$(ls -d "$OUT"/m-ddp-runs/*--3_chkpt)" --use_fsdp False
run r-fsdp 900 $R --vla_path "$(ls -d "$OUT"/m-fsdp-runs/*--3_chkpt)" --use_fsdp True

# 4. LIBERO (no FiLM, 2 images), batch 2, no accumulation: DDP (synchronised head) and FSDP
FSDP_CHECK_DDP_SYNC_HEAD=1 run l-ddp 600 $LIBERO --max_steps 3 --save_freq 3 --merge_lora_during_training False --use_fsdp False
run l-fsdp 600 $LIBERO --max_steps 3 --save_freq 3 --merge_lora_during_training False --use_fsdp True
"$BIN/python" "$HERE/compare_ckpt.py" "$OUT"/l-ddp-runs/*--3_chkpt "$OUT"/l-fsdp-runs/*--3_chkpt $LIBERO \
  --batch_size 2 --files_only --out "$OUT/compare-l.json" > "$OUT/compare-l.log" 2>&1; echo "compare-l rc=$?"

# 5. validation with a slow rank: FSDP with the agreed clock finishes; with each rank's own clock
#    (upstream's) the ranks stop after different numbers of batches and the collectives hang
V="$ALOHA --max_steps 2 --save_freq 100 --use_val_set True --val_freq 1 --val_time_limit 2 --use_fsdp True"
FSDP_CHECK_SLOW_VAL_RANK=1 FSDP_CHECK_SLOW_VAL_S=2.5 run v-agreed 600 $V
FSDP_CHECK_SLOW_VAL_RANK=1 FSDP_CHECK_SLOW_VAL_S=2.5 FSDP_CHECK_LOCAL_CLOCK=1 run v-local 150 $V

"$BIN/python" "$HERE/verify.py" "$OUT"
