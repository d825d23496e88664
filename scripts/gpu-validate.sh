#!/usr/bin/env bash
# GPU validation of vla-launch: plans and launches the memory probe trainer
# (scripts/probe_finetune.py) through the real launcher on real GPUs, then compares every rank's
# measured peak (NVML, what nvidia-smi shows) with the plan's prediction.
#
# Run on a GPU machine from the repository root; it builds nothing:
#   scripts/gpu-validate.sh PHASES [BIN] [OUTDIR]
# PHASES: comma list of smoke, gpus, one, two, four, cap, quality, signal, slurm, oom (or "all").
# BIN defaults to .carry/vla-launch (a release binary built elsewhere), OUTDIR to $OUT or
# /tmp/vla-validate. scripts/validation_report.py turns OUTDIR into the markdown of docs/validation.md.
set -uo pipefail

PHASES=${1:-all}
BIN=$(readlink -f "${2:-.carry/vla-launch}")
OUTDIR=${3:-${OUT:-/tmp/vla-validate}}
STEPS=${VLA_VALIDATE_STEPS:-20}
mkdir -p "$OUTDIR/runs"
export VLA_RUN_ROOT=/tmp/vla-validate-runs PYTHONUNBUFFERED=1
NGPU=$(nvidia-smi -L | wc -l)
has() { [[ ",$PHASES," == *",$1,"* || $PHASES == all ]]; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUTDIR/transcript.md"; }

# run NAME VISIBLE_GPUS [vla-launch args...]: plan --json, then launch, both with the same flags.
run() {
  local name=$1 visible=$2
  shift 2
  local dir="$OUTDIR/runs/$name"
  mkdir -p "$dir"
  echo "$*" >"$dir/args"
  echo "$visible" >"$dir/visible"
  CUDA_VISIBLE_DEVICES=$visible "$BIN" plan --json "$@" >"$dir/plan.json" 2>"$dir/plan.err"
  echo $? >"$dir/plan.rc"
  local t0=$SECONDS
  CUDA_VISIBLE_DEVICES=$visible timeout 600 "$BIN" --log-dir "$dir/log" --grace 20 "$@" \
    --set train.max_steps="$STEPS" >"$dir/stdout" 2>"$dir/stderr"
  echo $? >"$dir/rc"
  echo $((SECONDS - t0)) >"$dir/wall_s"
  log "run $name on GPUs [$visible]: exit $(cat "$dir/rc") ($(grep -c VLA_PROBE_RESULT "$dir/stdout" "$dir/stderr" | awk -F: '{s+=$2} END {print s}') result lines)"
}

{
  echo "# GPU validation transcript"
  echo
  echo "- date: $(date -u +%FT%TZ)"
  echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sort | uniq -c | tr '\n' ';')"
  echo "- torch: $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1)"
  echo "- transformers: $(python3 -c 'import transformers; print(transformers.__version__)' 2>&1)"
  echo "- vla-launch: $("$BIN" --version)"
  echo
} >>"$OUTDIR/transcript.md"

if has gpus; then
  log "gpus: vla-launch gpus --json vs nvidia-smi"
  bash scripts/gpu-discovery-check.sh "$BIN" >"$OUTDIR/gpu-discovery.md" 2>&1
  for _ in 1 2 3 4 5; do
    python3 - "$BIN" <<'EOF'
import subprocess, sys, time
t = time.perf_counter()
r = subprocess.run([sys.argv[1], "gpus", "--json"], capture_output=True, text=True)
print(f"vla-launch gpus --json: {1000 * (time.perf_counter() - t):.1f} ms wall, exit {r.returncode}; "
      + " ".join(l.strip() for l in r.stderr.splitlines() if "GPU list" in l))
EOF
  done >"$OUTDIR/gpus-timing.txt"
fi

if has smoke; then
  run smoke 0 --profile aloha-probe --strategy ddp --batch-size 1 --grad-accum 16 --checkpointing off
fi

if has one; then
  # The launcher's own choice on 1, 2 and 4 H100s; the calibration row DDP batch 2 beside it.
  run one-plan 0 --profile aloha-probe &
  run one-ddp-b2 1 --profile aloha-probe --strategy ddp --batch-size 2 --grad-accum 8 --checkpointing off &
  run one-libero-plan 2 --profile libero-probe &
  run one-rank64-b4 3 --profile aloha-probe --set train.lora_rank=64 --strategy ddp --batch-size 4 --grad-accum 4 --checkpointing on &
  wait
fi

if has two; then
  run two-plan 0,1 --profile aloha-probe &
  run two-fsdp-b2 2,3 --profile aloha-probe --strategy fsdp --batch-size 2 --grad-accum 4 --checkpointing on &
  wait
fi

if has four; then
  run four-plan 0,1,2,3 --profile aloha-probe
fi

if has cap; then
  # 4x RTX 4090 emulated: each process may use at most 23.52 GiB (24564 MiB card minus what the
  # driver keeps), CUDA context and NCCL included.
  run cap-4x4090-plan 0,1,2,3 --profile aloha-probe --vram-cap 24564MiB
  # The seed's configuration, refused by the planner...
  CUDA_VISIBLE_DEVICES=0 "$BIN" plan --profile aloha-probe --vram-cap 24564MiB --nproc 1 \
    --strategy ddp --batch-size 2 --grad-accum 8 --checkpointing off >"$OUTDIR/seed-refused.txt" 2>&1
  echo "exit $?" >>"$OUTDIR/seed-refused.txt"
fi

if has oom; then
  # ...and forced: with every axis pinned and VLA_LAUNCH_FORCE the launcher runs it and must
  # diagnose the CUDA OOM.
  run cap-seed-forced 0 --profile aloha-probe --vram-cap 24564MiB --force \
    --strategy ddp --batch-size 2 --grad-accum 8 --checkpointing off
fi

if has quality; then
  # Plan quality: the chosen plan and the planner's listed alternatives, 10+ steps each.
  for n in 1 2; do
    vis=$(seq -s, 0 $((n - 1)))
    CUDA_VISIBLE_DEVICES=$vis "$BIN" plan --profile aloha-probe --json >"$OUTDIR/quality-$n.plan.json" 2>/dev/null
    python3 - "$OUTDIR/quality-$n.plan.json" >"$OUTDIR/quality-$n.args" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
rows = [p] + p["alternatives"]
for i, r in enumerate(rows):
    print(f"{i} --strategy {r['strategy']} --batch-size {r['batch_size']} --grad-accum {r['grad_accumulation_steps']} "
          f"--checkpointing {'on' if r['gradient_checkpointing'] else 'off'} --nproc {r['nproc_per_node']}")
EOF
    while read -r i args; do
      # shellcheck disable=SC2086
      run "quality-$n-$i" "$vis" --profile aloha-probe $args
    done <"$OUTDIR/quality-$n.args"
  done
fi

if has signal; then
  # Ctrl-C: SIGINT to the launcher once training prints progress; nothing may stay on the GPUs.
  dir="$OUTDIR/runs/signal"
  mkdir -p "$dir"
  CUDA_VISIBLE_DEVICES=0,1 "$BIN" --log-dir "$dir/log" --grace 40 --profile aloha-probe \
    --set train.max_steps=1000 >"$dir/stdout" 2>"$dir/stderr" &
  pid=$!
  for _ in $(seq 1 240); do
    grep -q "it/s\|s/it" "$dir/stderr" "$dir/stdout" 2>/dev/null && break
    sleep 0.5
  done
  t0=$(date +%s%N)
  kill -INT $pid
  wait $pid
  echo $? >"$dir/rc"
  t1=$(date +%s%N)
  echo "$(((t1 - t0) / 1000000)) ms" >"$dir/stop_s"
  sleep 1
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv >"$dir/nvidia-smi-after.csv"
  ps -eo pid,pgid,sid,cmd | grep -E "probe_finetune|torchrun" | grep -v grep >"$dir/ps-after.txt"
  log "signal: launcher exit $(cat "$dir/rc"), stopped in $(cat "$dir/stop_s"); GPU processes after: $(($(wc -l <"$dir/nvidia-smi-after.csv") - 1)); stray processes: $(wc -l <"$dir/ps-after.txt")"
fi

if has slurm; then
  # Two "nodes" on one host: two launchers with a Slurm-like environment, one GPU each,
  # rendezvous through c10d on 127.0.0.1.
  dir="$OUTDIR/runs/slurm"
  mkdir -p "$dir"
  for rank in 0 1; do
    env SLURM_JOB_ID=4242 SLURM_NNODES=2 SLURM_NODEID=$rank SLURM_JOB_NODELIST=127.0.0.1 \
      SLURM_PROCID=$rank CUDA_VISIBLE_DEVICES=$rank \
      "$BIN" --log-dir "$dir/log$rank" --grace 20 --profile aloha-probe --nproc 1 \
      --set train.max_steps="$STEPS" >"$dir/stdout$rank" 2>"$dir/stderr$rank" &
    echo $! >"$dir/pid$rank"
  done
  wait
  log "slurm: node 0 exit, node 1 exit: $(cat "$dir"/stdout* | grep -c VLA_PROBE_RESULT) result lines"
fi

python3 scripts/validation_report.py "$OUTDIR" >"$OUTDIR/report.md" 2>"$OUTDIR/report.err"
log "report written: $OUTDIR/report.md"
