#!/usr/bin/env bash
# GPU validation of the real-code probe (issue 15) through the launcher, on a 2-GPU machine:
# each configuration runs scripts/real_probe_finetune.py (profile X-real) on GPU 0 and
# scripts/probe_finetune.py (profile X-probe) on GPU 1 at the same time, same flags.
# Usage: scripts/real-validate.sh BIN OUTDIR [STEPS] [DEADLINE_S]
#   env: OPENVLA_OFT_DIR (upstream checkout), VLA_LAUNCH_DIR (the tree holding scripts/ and launch-profiles/),
#        REAL_PYTHONPATH (where the pinned wheels are installed; given to the real-code runs only).
# No new pair starts after DEADLINE_S seconds (default 400); every run is bounded by `timeout`.
# ONLY="name ..." runs just those pairs. ONE_GPU=1: both sides one after the other on GPU 0 (a 1-GPU
# machine). SIDES="real" or "probe": only that side of each pair.
set -uo pipefail
BIN=$(readlink -f "$1"); OUTDIR=$2; STEPS=${3:-3}; DEADLINE=${4:-400}
PROFILES=${VLA_LAUNCH_DIR:-.}/launch-profiles
mkdir -p "$OUTDIR"
T0=$SECONDS
log() { echo "[$(date +%T) +$((SECONDS - T0))s] $*" | tee -a "$OUTDIR/transcript.md"; }

one() { # NAME GPU PROFILE args...
  local name=$1 gpu=$2 prof=$3; shift 3
  local dir="$OUTDIR/$name"; mkdir -p "$dir"
  # The real code needs the pinned packages (REAL_PYTHONPATH); the stand-in probe the machine's own.
  local envp=(env -u PYTHONPATH); [[ $prof == *-real ]] && envp=(env PYTHONPATH="${REAL_PYTHONPATH:-}")
  echo "--profile $prof $* --set train.max_steps=$STEPS" >"$dir/args"
  # Each run plans from an empty calibration store: the model's own choice, not one learnt from earlier runs.
  envp+=(VLA_LAUNCH_CACHE_DIR="$dir/cache")
  CUDA_VISIBLE_DEVICES=$gpu "${envp[@]}" "$BIN" plan --json --profile "$PROFILES/$prof.yaml" "$@" >"$dir/plan.json" 2>"$dir/plan.err"
  local t=$SECONDS
  CUDA_VISIBLE_DEVICES=$gpu "${envp[@]}" timeout 240 "$BIN" --log-dir "$dir/log" --grace 20 --profile "$PROFILES/$prof.yaml" "$@" \
    --set train.max_steps="$STEPS" >"$dir/stdout" 2>"$dir/stderr"
  echo $? >"$dir/rc"; echo $((SECONDS - t)) >"$dir/wall_s"
}

pair() { # NAME PLATFORM args...  (real on GPU 0, probe on GPU 1)
  local name=$1 plat=$2; shift 2
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then return; fi
  if ((SECONDS - T0 > DEADLINE)); then log "skip $name (past ${DEADLINE}s)"; return; fi
  local sides=${SIDES:-real probe} side
  if [[ ${ONE_GPU:-0} == 1 ]]; then
    for side in $sides; do one "$name-$side" 0 "$plat-$side" "$@"; done
  else
    [[ $sides == *real* ]] && one "$name-real" 0 "$plat-real" "$@" &
    [[ $sides == *probe* ]] && one "$name-probe" 1 "$plat-probe" "$@" &
    wait
  fi
  for side in $sides; do
    log "$name: $side rc $(cat "$OUTDIR/$name-$side/rc") ($(cat "$OUTDIR/$name-$side/wall_s")s)"
  done
}

{ echo "# real-code validation transcript"; echo "- date: $(date -u +%FT%TZ)"
  echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
  echo "- python: $(python3 -c 'import sys, torch, transformers, peft, timm; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "timm", timm.__version__)' 2>&1 | tail -1)"
  echo "- vla-launch: $("$BIN" --version)"; echo "- OPENVLA_OFT_DIR: ${OPENVLA_OFT_DIR:-unset}"; } >>"$OUTDIR/transcript.md"

P="--strategy ddp --grad-accum 1 --global-batch 1"
pair aloha-b2-off aloha $P --batch-size 2 --checkpointing off
if [[ -f $OUTDIR/aloha-b2-off-real/rc && $(cat "$OUTDIR/aloha-b2-off-real/rc") != 0 ]]; then log "real probe failed: stopping"; tail -40 "$OUTDIR/aloha-b2-off-real/stderr"; exit 1; fi
pair libero-b4-off libero $P --batch-size 4 --checkpointing off
pair aloha-b4-on aloha $P --batch-size 4 --checkpointing on
pair libero-b8-on libero $P --batch-size 8 --checkpointing on
pair aloha-cap40 aloha --vram-cap 40960MiB
pair libero-cap24 libero --vram-cap 24564MiB
pair aloha-b1-off aloha $P --batch-size 1 --checkpointing off
pair libero-b16-on libero $P --batch-size 16 --checkpointing on
pair aloha-b8-on aloha $P --batch-size 8 --checkpointing on
pair libero-b2-off libero $P --batch-size 2 --checkpointing off
pair aloha-b4-off aloha $P --batch-size 4 --checkpointing off
pair libero-b8-off libero $P --batch-size 8 --checkpointing off
pair aloha-b2-on aloha $P --batch-size 2 --checkpointing on
pair libero-b4-on libero $P --batch-size 4 --checkpointing on
log "done"
