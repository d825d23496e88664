#!/usr/bin/env bash
# Step time of the REAL OpenVLA-OFT code through the launcher, one configuration after another on
# GPU 0 (issue 27): each run is `vla-launch --profile X-real` with every axis pinned and N optimizer
# steps; the probe reports the mean s/step over the steps after the first two (VLA_PROBE_RESULT
# s_per_step) and its per-step times, the plan beside it says what the model estimated.
# Usage: scripts/real-steptime.sh BIN OUTDIR [STEPS] [DEADLINE_S] [CONFIG...]
#   CONFIG: NAME:PROFILE:ARGS (ARGS split on spaces), e.g.
#     aloha-b16-on:aloha-real:--batch-size 16 --grad-accum 1 --checkpointing on
#   Without CONFIG, the table of issue 27 (ALOHA, LIBERO, BRIDGE shapes; DDP with and without
#   checkpointing), most important first.
#   env: OPENVLA_OFT_DIR (upstream checkout), VLA_LAUNCH_DIR (the tree holding launch-profiles/),
#        REAL_PYTHONPATH (the pinned wheels, given to the runs).
# No run starts after DEADLINE_S seconds (default 520); every run is bounded by `timeout`.
# Tabulate with: python3 scripts/real_validation_table.py --steptime OUTDIR (or read OUTDIR/*/stdout).
set -uo pipefail
BIN=$(readlink -f "$1"); OUTDIR=$2; STEPS=${3:-20}; DEADLINE=${4:-520}; shift $(($# < 4 ? $# : 4))
PROFILES=${VLA_LAUNCH_DIR:-.}/launch-profiles
mkdir -p "$OUTDIR"
T0=$SECONDS
log() { echo "[$(date +%T) +$((SECONDS - T0))s] $*" | tee -a "$OUTDIR/transcript.md"; }

BRIDGE="--set train.dataset_name=bridge_orig --set train.num_images_in_input=1 --set train.use_proprio=false"
if (($# == 0)); then
  set -- \
    "aloha-b16-on:aloha-real:--batch-size 16 --grad-accum 1 --checkpointing on" \
    "aloha-b8x2-on:aloha-real:--batch-size 8 --grad-accum 2 --checkpointing on" \
    "aloha-b3-off:aloha-real:--batch-size 3 --grad-accum 1 --checkpointing off" \
    "aloha-b2-r64-off:aloha-real:--batch-size 2 --grad-accum 1 --checkpointing off --set train.lora_rank=64" \
    "libero-b8x2-off:libero-real:--batch-size 8 --grad-accum 2 --checkpointing off" \
    "libero-b16-on:libero-real:--batch-size 16 --grad-accum 1 --checkpointing on" \
    "libero-b6-off:libero-real:--batch-size 6 --grad-accum 1 --checkpointing off" \
    "libero-b12-on:libero-real:--batch-size 12 --grad-accum 1 --checkpointing on" \
    "bridge-b8-off:libero-real:--batch-size 8 --grad-accum 1 --checkpointing off $BRIDGE"
fi

{ echo "# real-code step-time transcript"; echo "- date: $(date -u +%FT%TZ)"
  echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
  echo "- python: $(PYTHONPATH=${REAL_PYTHONPATH:-} python3 -c 'import sys, torch, transformers, peft, timm; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "timm", timm.__version__)' 2>&1 | tail -1)"
  echo "- vla-launch: $("$BIN" --version)"; echo "- steps: $STEPS"; } >>"$OUTDIR/transcript.md"

for config in "$@"; do
  name=${config%%:*}; rest=${config#*:}; prof=${rest%%:*}; args=${rest#*:}
  if ((SECONDS - T0 > DEADLINE)); then log "skip $name (past ${DEADLINE}s)"; continue; fi
  dir="$OUTDIR/$name"; mkdir -p "$dir"
  # shellcheck disable=SC2086 # ARGS are words on purpose
  set -- --profile "$PROFILES/$prof.yaml" --strategy ddp --global-batch 1 $args --set train.max_steps="$STEPS"
  echo "$*" >"$dir/args"
  envp=(env PYTHONPATH="${REAL_PYTHONPATH:-}" VLA_LAUNCH_CACHE_DIR="$dir/cache" CUDA_VISIBLE_DEVICES=0)
  "${envp[@]}" "$BIN" plan --json "$@" >"$dir/plan.json" 2>"$dir/plan.err"
  t=$SECONDS
  "${envp[@]}" timeout 400 "$BIN" --log-dir "$dir/log" --grace 20 "$@" >"$dir/stdout" 2>"$dir/stderr"
  echo $? >"$dir/rc"; echo $((SECONDS - t)) >"$dir/wall_s"
  est=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("step_time_s"))' "$dir/plan.json" 2>/dev/null)
  got=$(grep -ao 'VLA_PROBE_RESULT {.*' "$dir/stdout" | tail -1 | sed 's/^VLA_PROBE_RESULT //' |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.read()).get("s_per_step"))' 2>/dev/null)
  log "$name: rc $(cat "$dir/rc") ($(cat "$dir/wall_s")s) estimate ${est:-?} s/step, measured ${got:-?} s/step"
done
log "done"
