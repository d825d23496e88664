#!/usr/bin/env bash
# Peer-watch soak: healthy multi-node jobs must never be stopped by the watch.
#
#   scripts/peer-watch-soak.sh [MINUTES] [BIN]
#
# Runs, side by side on loopback, one 2-node and one 4-node job of the real launcher (BIN,
# default target/debug/vla-launch) with the fake torchrun of tests/fixtures, the watch's REAL
# intervals (ping every 5 s, silence limit 30 s), each fake training for MINUTES (default 30).
# Every launcher must end with exit 0 and no "stopping this node's training" line; anything else
# is a false stop. Prints one line per job and a verdict; exit 0 when there was no false stop.
# Each job uses a random Slurm job id (so its ports differ from other runs') and its own secret
# file under a temporary run root; all its processes are children of this script and end with it.
set -u
MINUTES=${1:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${2:-$ROOT/target/debug/vla-launch}
FAKE=$ROOT/tests/fixtures/fake_torchrun
[[ -x $BIN ]] || { echo "no launcher binary at $BIN: run cargo build first" >&2; exit 2; }
WORK=$(mktemp -d /tmp/peer-watch-soak.XXXXXX)
SECONDS_TO_TRAIN=$((MINUTES * 60))
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap cleanup INT TERM

# node JOB NNODES RANK NODELIST
node() {
  local job=$1 n=$2 r=$3 list=$4
  env -u CUDA_VISIBLE_DEVICES -u VLA_LAUNCH_GPUS -u VLA_LAUNCH_JOB_SECRET \
    SLURM_JOB_ID="$job" SLURM_NNODES="$n" SLURM_NODEID="$r" SLURM_JOB_NODELIST="$list" \
    VLA_DATA_ROOT=/data VLA_RUN_ROOT="$WORK/$job" WANDB_ENTITY=e WANDB_PROJECT=p \
    VLA_LAUNCH_PROFILE_DIR=/nonexistent VLA_LAUNCH_CACHE_DIR="$WORK/cache" \
    OPENVLA_OFT_DIR="$ROOT/tests/fixtures/openvla-oft" FAKE_SLEEP="$SECONDS_TO_TRAIN" \
    "$BIN" --profile aloha --gpus 1xh100 --torchrun "$FAKE" --log-dir "$WORK/$job/logs$r" \
    >"$WORK/$job/stdout$r" 2>"$WORK/$job/stderr$r"
  echo $? >"$WORK/$job/rc$r"
}

start_job() {
  local job=$1 n=$2 list=$3
  mkdir -p "$WORK/$job"
  for r in $(seq 0 $((n - 1))); do
    node "$job" "$n" "$r" "$list" &
    pids+=($!)
  done
}

base=$((100000 + RANDOM * 7 % 80000))
job2=$base
job4=$((base + 1))
echo "peer-watch soak: $MINUTES min, jobs $job2 (2 nodes) and $job4 (4 nodes), $(nproc) CPUs, $(uname -srm), work dir $WORK"
t0=$(date +%s)
start_job "$job2" 2 "127.0.0.1,localhost"
start_job "$job4" 4 "127.0.0.1,localhost,127.0.0.2,127.0.0.3"
for p in "${pids[@]}"; do wait "$p"; done
took=$(($(date +%s) - t0))

false_stops=0
for job in "$job2" "$job4"; do
  line="job $job:"
  for rc in "$WORK/$job"/rc*; do
    r=${rc##*/rc}
    code=$(cat "$rc")
    stops=$(grep -c "stopping this node's training" "$WORK/$job/stderr$r")
    # Authenticated connections: node 0 sees every other node, each other node sees node 0.
    if [[ $r == 0 ]]; then
      links=$(grep -c "peer watch: node [0-9]* connected from" "$WORK/$job/stderr$r")
      want=$(($(ls "$WORK/$job"/rc* | wc -l) - 1))
    else
      links=$(grep -c "peer watch: connected to node 0" "$WORK/$job/stderr$r")
      want=1
    fi
    line+=" node $r exit $code (authenticated links: $links, peer stops: $stops);"
    if [[ $code != 0 || $stops != 0 || $links != "$want" ]]; then
      false_stops=$((false_stops + 1))
      grep -E "WARN|peer" "$WORK/$job/stderr$r" | head -5 | sed "s/^/    node $r: /"
    fi
  done
  echo "$line"
done
echo "after $took s: $false_stops false stop(s) or failed node(s)"
[[ $false_stops == 0 ]] && rm -rf "$WORK"
exit $((false_stops > 0))
