#!/usr/bin/env bash
# GPU validation of vla-launch: plans and launches the memory probe trainer
# (scripts/probe_finetune.py) through the real launcher on real GPUs, then compares every rank's
# measured peak (NVML, what nvidia-smi shows) with the plan's prediction.
#
# Run on a GPU machine from the repository root; it builds nothing:
#   scripts/gpu-validate.sh PHASES [BIN] [OUTDIR]
# PHASES: comma list of smoke, gpus, one, two, four, cap, quality, signal, slurm, oom, ranks,
# calib, bench (or "all"). calib and bench need one GPU (GPU 0), ranks two (the last two).
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
  # The same planning flags for `plan` (launch-only flags dropped).
  local plan_args=() skip=0 a
  for a in "$@"; do
    if ((skip)); then skip=0; continue; fi
    case $a in
      --force) ;;
      --oom-retries | --ranks) skip=1 ;;
      *) plan_args+=("$a") ;;
    esac
  done
  CUDA_VISIBLE_DEVICES=$visible "$BIN" plan --json "${plan_args[@]}" >"$dir/plan.json" 2>"$dir/plan.err"
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
  # The launcher's own choice on 1 H100, and pinned configurations outside the calibration table.
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

CAP=24564MiB # an RTX 4090 as NVML reports it
if has cap; then
  # 4x RTX 4090 emulated: each GPU may hold at most 24564 MiB in all (driver reservation, CUDA
  # context and NCCL included; the probe caps its allocator to what is left).
  STEPS_SAVED=$STEPS
  STEPS=${VLA_VALIDATE_CAP_STEPS:-4}
  run cap-4x4090-plan 0,1,2,3 --profile aloha-probe --vram-cap $CAP
  if [[ ${VLA_VALIDATE_CAP_FORCED:-0} == 1 ]]; then
    run cap-4x4090-fsdp-b2 0,1,2,3 --profile aloha-probe --vram-cap $CAP --force \
      --strategy fsdp --batch-size 2 --grad-accum 2 --checkpointing on
    run cap-4x4090-fsdp-b1 0,1,2,3 --profile aloha-probe --vram-cap $CAP --force \
      --strategy fsdp --batch-size 1 --grad-accum 4 --checkpointing on
  fi
  STEPS=$STEPS_SAVED
  # The seed's configuration (1 GPU, DDP, batch 2), refused by the planner...
  CUDA_VISIBLE_DEVICES=0 "$BIN" plan --profile aloha-probe --vram-cap $CAP \
    --strategy ddp --batch-size 2 --grad-accum 8 --checkpointing off >"$OUTDIR/seed-refused.txt" 2>&1
  echo "exit $?" >>"$OUTDIR/seed-refused.txt"
fi

if has oom; then
  # ...and forced: it must OOM and be reported as a CUDA OOM (no retry can fit a 24 GiB card).
  # An over-large batch forced on a full H100: OOM, diagnosis, re-plan (same global batch), retry.
  # Side by side on GPUs 0 and 1 (no wait: the signal phase uses GPUs 2 and 3 meanwhile), one
  # after the other on a 1-GPU machine.
  bg=\&
  ((NGPU >= 2)) || bg=
  eval "run cap-seed-forced 0 --profile aloha-probe --vram-cap $CAP --force \
    --strategy ddp --batch-size 2 --grad-accum 8 --checkpointing off $bg"
  eval "run oom-retry $((NGPU >= 2 ? 1 : 0)) --profile aloha-probe --force --oom-retries 1 \
    --strategy ddp --batch-size 8 --grad-accum 2 --checkpointing off $bg"
fi

if has signal; then
  # Ctrl-C: SIGINT to the launcher once training prints progress; nothing may stay on the GPUs.
  dir="$OUTDIR/runs/signal"
  mkdir -p "$dir"
  CUDA_VISIBLE_DEVICES=2,3 "$BIN" --log-dir "$dir/log" --grace 40 --profile aloha-probe \
    --set train.max_steps=1000 >"$dir/stdout" 2>"$dir/stderr" &
  pid=$!
  for _ in $(seq 1 300); do
    grep -q " [3-9]/1000" "$dir/stderr" "$dir/stdout" 2>/dev/null && break
    sleep 0.5
  done
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv >"$dir/nvidia-smi-before.csv"
  t0=$(date +%s%N)
  kill -INT $pid
  wait $pid
  echo $? >"$dir/rc"
  t1=$(date +%s%N)
  echo "$(((t1 - t0) / 1000000)) ms" >"$dir/stop_s"
  sleep 1
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv >"$dir/nvidia-smi-after.csv"
  ps -eo pid,pgid,sid,cmd | grep -E "probe_finetune|torchrun" | grep -v grep >"$dir/ps-after.txt"
  log "signal: launcher exit $(cat "$dir/rc") after SIGINT, stopped in $(cat "$dir/stop_s"); GPU processes before: $(($(wc -l <"$dir/nvidia-smi-before.csv") - 1)), after: $(($(wc -l <"$dir/nvidia-smi-after.csv") - 1)); stray processes: $(wc -l <"$dir/ps-after.txt")"
fi

# slurm_node JOB RANK GPU DIR MAX_STEPS: one "node" of a 2-node Slurm job on this host.
# `exec`: the background job's pid is the launcher's own, so a kill reaches the launcher.
# VLA_VALIDATE_NODE_ARGS: extra vla-launch flags (e.g. "--peer-watch-port off").
slurm_node() {
  # shellcheck disable=SC2086
  exec env SLURM_JOB_ID=$1 SLURM_NNODES=2 SLURM_JOB_NUM_NODES=2 SLURM_NODEID=$2 SLURM_JOB_NODELIST=127.0.0.1,localhost \
    SLURM_PROCID=$2 SLURM_NTASKS=2 CUDA_VISIBLE_DEVICES=$3 \
    "$BIN" --log-dir "$4/log$2" --grace 20 --profile aloha-probe --nproc 1 \
    --set train.max_steps="$5" ${VLA_VALIDATE_NODE_ARGS:-} >"$4/stdout$2" 2>"$4/stderr$2"
}

# kill_test KDIR NODE0_PID NODE1_PID PATIENCE_S: once node 0 trains (step 3 or later, so both ranks
# are in NCCL collectives, where a lost peer leaves the other waiting until NCCL's timeout),
# SIGTERM node 1's launcher; give node 0's launcher PATIENCE_S to stop by itself, then SIGTERM it.
kill_test() {
  local kdir=$1 k0=$2 k1=$3 patience=$4 t0
  for _ in $(seq 1 240); do
    grep -q " [3-9]/1000" "$kdir/stderr0" "$kdir/stdout0" 2>/dev/null && break
    sleep 0.5
  done
  t0=$(date +%s%N)
  kill -TERM "$k1"
  wait "$k1"
  echo "node 1 launcher (SIGTERM) exit $?" >"$kdir/result"
  for _ in $(seq 1 $((patience * 2))); do kill -0 "$k0" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$k0" 2>/dev/null; then
    echo "node 0 launcher still running $patience s after node 1 was killed: sending SIGTERM" >>"$kdir/result"
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv >"$kdir/nvidia-smi-node0-waiting.csv"
    kill -TERM "$k0"
  fi
  wait "$k0"
  echo "node 0 launcher exit $? after $((($(date +%s%N) - t0) / 1000000)) ms" >>"$kdir/result"
}

if has slurm; then
  # Two "nodes" on one host: two launchers with a Slurm-like environment, one GPU each, one
  # world of 2 through c10d on 127.0.0.1. Beside it, a second job whose node 1 launcher is killed.
  dir="$OUTDIR/runs/slurm"
  kdir="$OUTDIR/runs/slurm-kill"
  mkdir -p "$dir" "$kdir"
  slurm_node 4242 0 0 "$dir" "$STEPS" &
  p0=$!
  slurm_node 4242 1 1 "$dir" "$STEPS" &
  p1=$!
  slurm_node 4343 0 2 "$kdir" 1000 &
  k0=$!
  slurm_node 4343 1 3 "$kdir" 1000 &
  k1=$!
  kill_test "$kdir" $k0 $k1 45
  sleep 1
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv >"$kdir/nvidia-smi-after.csv"
  ps -eo pid,ppid,pgid,sid,etimes,cmd | grep -E "probe_finetune|torchrun|vla-launch" | grep -v grep >"$kdir/ps-after.txt"
  # Leave no stray process to the later phases (their plans would see the GPUs taken).
  if [[ -s $kdir/ps-after.txt ]]; then
    pkill -9 -f "rdzv-id 4343" ; pkill -9 -f "probe_finetune.*max_steps 1000"
    sleep 2
  fi
  wait $p0; echo "node 0 exit $?" >"$dir/result"
  wait $p1; echo "node 1 exit $?" >>"$dir/result"
  log "slurm: $(tr '\n' ' ' <"$dir/result"); $(cat "$dir"/stdout* "$dir"/stderr* | grep -c VLA_PROBE_RESULT) result lines"
  log "slurm-kill: $(tr '\n' ' ' <"$kdir/result"); GPU processes after: $(($(wc -l <"$kdir/nvidia-smi-after.csv") - 1)); processes of the killed job left: $(grep -c -E "rdzv-id 4343|max_steps 1000" "$kdir/ps-after.txt")"
fi

if has nowatch; then
  # The same node kill with the peer watch off: does node 0 stop by itself? (What the watch is
  # for.) Node 0 gets up to 120 s.
  kdir="$OUTDIR/runs/slurm-kill-nowatch"
  mkdir -p "$kdir"
  VLA_VALIDATE_NODE_ARGS="--peer-watch-port off" slurm_node 4444 0 0 "$kdir" 1000 &
  k0=$!
  VLA_VALIDATE_NODE_ARGS="--peer-watch-port off" slurm_node 4444 1 1 "$kdir" 1000 &
  k1=$!
  kill_test "$kdir" $k0 $k1 120
  log "slurm-kill-nowatch: $(tr '\n' ' ' <"$kdir/result")"
fi

if has ranks; then
  # --ranks 0 on 2 GPUs: only local rank 0 reaches the terminal; torchrun keeps every rank's
  # output in the launcher's log dir (torchrun/...).
  (
    STEPS=3
    n=$NGPU
    run ranks-0 "$((n - 2)),$((n - 1))" --profile aloha-probe --ranks 0
    dir="$OUTDIR/runs/ranks-0"
    {
      echo "relayed result lines: $(cat "$dir/stdout" "$dir/stderr" | grep -c VLA_PROBE_RESULT)"
      echo "relayed ranks: $(cat "$dir/stdout" "$dir/stderr" | grep -o '"rank":[0-9]*' | sort -u | tr '\n' ' ')"
      echo "torchrun log files:"
      find "$dir/log" -path '*torchrun*' -type f | sed "s|$dir/||" | sort
      echo "ranks in torchrun's files: $(find "$dir/log" -path '*torchrun*' -type f -exec cat {} + | grep -o '"rank":[0-9]*' | sort -u | tr '\n' ' ')"
    } >"$dir/ranks-check.txt"
    log "ranks: $(tr '\n' ' ' <"$dir/ranks-check.txt" | cut -c1-300)"
  ) &
fi

if has bench; then
  # Relay throughput vs cat and the launcher's start-to-exec with NVML, on this host.
  if [[ -x .carry/supervise ]]; then
    SUPERVISE=.carry/supervise bash scripts/bench-relay.sh "${VLA_VALIDATE_RELAY_MIB:-1024}" 5 >"$OUTDIR/bench-relay.txt" 2>&1
  fi
  {
    echo "$(nproc) CPUs, $(uname -r)"
    CUDA_VISIBLE_DEVICES=0 bash scripts/bench-startup.sh "$BIN" 30 nvml
    bash scripts/bench-startup.sh "$BIN" 30 2xh100
  } >"$OUTDIR/bench-startup.txt" 2>&1
  log "bench: $(tr '\n' ' ' <"$OUTDIR/bench-relay.txt" 2>/dev/null | cut -c1-400) | $(tr '\n' ' ' <"$OUTDIR/bench-startup.txt")"
fi

wait # the ranks and oom phases' runs hold GPUs that calib and quality use

if has calib; then
  # Calibration on GPU 0: `calibrate` probes two batch sizes per mode, then held-out batches run
  # with the corrected prediction while nvidia-smi samples the GPU every 100 ms beside the
  # launcher's own NVML monitor.
  dir="$OUTDIR/runs/calib"
  mkdir -p "$dir"
  export VLA_LAUNCH_CACHE_DIR="$dir/cache"
  CUDA_VISIBLE_DEVICES=0 "$BIN" calibrate --profile aloha-probe --steps "${VLA_VALIDATE_CALIB_STEPS:-4}" \
    --log-dir "$dir/log" >"$dir/calibrate.out" 2>"$dir/calibrate.err"
  echo $? >"$dir/calibrate.rc"
  log "calibrate: exit $(cat "$dir/calibrate.rc"); $(tr '\n' ' ' <"$dir/calibrate.out")"
  # Held out means not learned from: each held-out run starts from the store calibrate left
  # (a completed run would otherwise add its own observation before the next one is planned).
  cp "$dir/cache/calibration.json" "$dir/calibration.after-calibrate.json"
  STEPS_SAVED=$STEPS
  STEPS=${VLA_VALIDATE_CALIB_STEPS:-4}
  for held in "on 8 2" "on 16 1" "off 2 8"; do
    read -r ck b a <<<"$held"
    name="heldout-ckpt-$ck-b$b"
    mkdir -p "$OUTDIR/runs/$name"
    cp "$dir/calibration.after-calibrate.json" "$dir/cache/calibration.json"
    nvidia-smi -i 0 --query-gpu=timestamp,uuid,memory.used,memory.total,memory.free \
      --format=csv,noheader,nounits -lms 100 >"$OUTDIR/runs/$name/nvidia-smi.csv" 2>&1 &
    smi=$!
    run "$name" 0 --profile aloha-probe --strategy ddp --batch-size "$b" --grad-accum "$a" --checkpointing "$ck"
    kill $smi
    wait $smi 2>/dev/null
  done
  STEPS=$STEPS_SAVED
  python3 scripts/validation_calib.py "$OUTDIR" >"$OUTDIR/calib.md" 2>&1
  log "calib: $(tr '\n' ' ' <"$OUTDIR/calib.md" | cut -c1-600)"
  unset VLA_LAUNCH_CACHE_DIR
fi

if has quality; then
  # Plan quality: the chosen plan and the planner's listed alternatives, 10+ steps each, the
  # 1-GPU ones side by side on separate GPUs, the 2-GPU ones two at a time.
  STEPS_SAVED=$STEPS
  STEPS=${VLA_VALIDATE_QUALITY_STEPS:-10}
  for n in 1 2; do
    vis=$(seq -s, 0 $((n - 1)))
    CUDA_VISIBLE_DEVICES=$vis "$BIN" plan --profile aloha-probe --json >"$OUTDIR/quality-$n.plan.json" 2>/dev/null
    python3 - "$OUTDIR/quality-$n.plan.json" >"$OUTDIR/quality-$n.args" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
rows = [p] + [dict(a) for a in p["alternatives"]]
for i, r in enumerate(rows):
    print(f"{i} --strategy {r['strategy']} --batch-size {r['batch_size']} --grad-accum {r['grad_accumulation_steps']} "
          f"--checkpointing {'on' if r['gradient_checkpointing'] else 'off'} --nproc {r['nproc_per_node']}")
EOF
  done
  slot=0
  while read -r i args; do
    # shellcheck disable=SC2086
    run "quality-1-$i" "$slot" --profile aloha-probe $args &
    slot=$((slot + 1))
  done <"$OUTDIR/quality-1.args"
  wait
  pairs=("0,1" "2,3")
  k=0
  head -n "${VLA_VALIDATE_QUALITY2_RUNS:-4}" "$OUTDIR/quality-2.args" >"$OUTDIR/quality-2.run"
  while read -r i args; do
    # shellcheck disable=SC2086
    run "quality-2-$i" "${pairs[$((k % 2))]}" --profile aloha-probe $args &
    k=$((k + 1))
    if ((k % 2 == 0)); then wait; fi
  done <"$OUTDIR/quality-2.run"
  wait
  STEPS=$STEPS_SAVED
fi

wait
python3 scripts/validation_report.py "$OUTDIR" >"$OUTDIR/report.md" 2>"$OUTDIR/report.err"
log "report written: $OUTDIR/report.md"
