#!/usr/bin/env bash
# Relay throughput of the supervisor vs `cat` for the same stream, and the launcher's own
# start-to-exec overhead. Uses the `supervise` example (release build), which runs the same
# library code as `vla-launch` (relay to stdout + timestamped log file).
#
#   scripts/bench-relay.sh [MIB (default 1024)] [RUNS (default 5)]
#   SUPERVISE=path/to/supervise scripts/bench-relay.sh ...   (prebuilt, e.g. on a host without cargo)
#
# The producer is `yes <79 chars> | head -c BYTES`: 80-byte lines, so the log writer does its
# per-line work (one timestamped record per line) as it would for training output.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RUNS=${2:-5}
BYTES=$((MIB * 1024 * 1024))
if [[ -z ${SUPERVISE:-} ]]; then
  cargo build --release --quiet --example supervise
fi
SUP=${SUPERVISE:-target/release/examples/supervise}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LINE=$(printf 'step %074d' 0)
PRODUCER="yes '$LINE' | head -c $BYTES"

now() { date +%s.%N; }
rate() { awk -v b="$BYTES" -v t="$1" 'BEGIN { printf "%.0f", b / 1048576 / t }'; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "stream: $MIB MiB of 80-byte lines, $RUNS runs each, median"
for what in producer cat launcher; do
  for _ in $(seq "$RUNS"); do
    rm -f "$WORK/run.log"
    t0=$(now)
    case $what in
      producer) bash -c "$PRODUCER" > /dev/null ;;
      cat) bash -c "$PRODUCER" | cat > /dev/null ;;
      launcher) "$SUP" "$WORK/run.log" bash -c "$PRODUCER" > /dev/null 2> "$WORK/summary" ;;
    esac
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
  done | median > "$WORK/$what.t"
  echo "$what: $(cat "$WORK/$what.t") s, $(rate "$(cat "$WORK/$what.t")") MiB/s"
done
log_mib=$(awk -v s="$(stat -c %s "$WORK/run.log")" 'BEGIN { printf "%.0f", s / 1048576 }')
echo "launcher log file: $log_mib MiB (timestamp + stream tag per 80-byte line)"
awk -v c="$(cat "$WORK/cat.t")" -v l="$(cat "$WORK/launcher.t")" \
  'BEGIN { printf "launcher / cat throughput: %.0f%%\n", 100 * c / l }'

# Start-to-exec: the child prints bash's $EPOCHREALTIME as its first act; the same child run
# directly gives the baseline, so the difference is the launcher's own start + spawn time.
N=50
for what in direct launcher; do
  for _ in $(seq "$N"); do
    t0=$EPOCHREALTIME
    case $what in
      direct) t1=$(bash -c 'echo $EPOCHREALTIME') ;;
      launcher) t1=$("$SUP" "$WORK/exec.log" bash -c 'echo $EPOCHREALTIME' 2> /dev/null) ;;
    esac
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }'
  done | median > "$WORK/$what.exec"
done
echo "start to exec, median of $N: direct $(cat "$WORK/direct.exec") ms," \
  "through the launcher $(cat "$WORK/launcher.exec") ms"
awk -v d="$(cat "$WORK/direct.exec")" -v l="$(cat "$WORK/launcher.exec")" \
  'BEGIN { printf "launcher overhead to exec: %.2f ms\n", l - d }'
