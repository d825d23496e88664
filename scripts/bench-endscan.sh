#!/usr/bin/env bash
# A run's fixed cost (start, the end-of-run leftover scan, clean-up) with many processes on the
# host: `supervise LOG /bin/true` timed for a new and a base build, alternating, while FILLERS
# idle `sleep` processes (killed at the end) make the /proc scan as large as on a busy node.
#
#   scripts/bench-endscan.sh NEW_SUPERVISE BASE_SUPERVISE [FILLERS (default 800)] [RUNS (default 15)]
#
# Prints the median and the quartiles of each, in microseconds.
set -euo pipefail
NEW=$(readlink -f "$1")
BASE=$(readlink -f "$2")
FILLERS=${3:-800}
RUNS=${4:-15}
WORK=$(mktemp -d)
fillers=()
cleanup() { kill "${fillers[@]}" 2> /dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq "$FILLERS"); do
  sleep 600 &
  fillers+=($!)
done
echo "host: $(nproc) CPUs, $(find /proc -maxdepth 1 -name '[0-9]*' 2> /dev/null | wc -l) processes, load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  for which in new base; do
    bin=$NEW
    [[ $which == base ]] && bin=$BASE
    s=$(date +%s%N)
    "$bin" "$WORK/run.log" /bin/true 2> /dev/null
    e=$(date +%s%N)
    echo "$(((e - s) / 1000))" >> "$WORK/$which"
  done
done
for which in new base; do
  sort -n "$WORK/$which" | awk -v w="$which" '{ a[NR] = $1 }
    END { printf "%-4s median %d us (p25 %d, p75 %d), %d runs\n", w, a[int((NR + 1) / 2)], a[int((NR + 3) / 4)], a[int((3 * NR + 3) / 4)], NR }'
done
