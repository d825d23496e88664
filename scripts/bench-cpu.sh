#!/usr/bin/env bash
# The launcher's own CPU time during a run, against `tee` on the same stream, in the same run.
# The training is a stand-in for torchrun printing 100 lines a second to stdout and 10 tqdm `\r`
# updates a second to stderr (each flushed, as `PYTHONUNBUFFERED=1` training does) for SECONDS.
#
#   scripts/bench-cpu.sh [SECONDS (default 30)] [BIN (default target/release/vla-launch)] [BASE_BIN]
#   MODES="file terminal" (default both)
#
# - tee:      the stand-in's stdout and stderr through `tee FILE` (2>&1).
# - launcher: the real CLI (`vla-launch --gpus 1xh100 --torchrun STAND-IN`: planning, run record,
#   the supervisor, the log, the tqdm tracker and, on a terminal, the status line).
# - base:     the same with BASE_BIN (e.g. a release build of the base commit).
# Modes: "file" sends the output to files; "terminal" runs it under `script`, on a pty (the
# status line is shown there). What is measured: the CPU time (user + system, from
# /proc/PID/stat; ticks of 10 ms) and the scheduler's run time of its threads alive at the end
# (/proc/PID/task/*/schedstat, ns), between the stand-in's first and last line, of the tee or
# launcher process alone (the launcher's watchdog, a process of its own, is shown apart).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-30}
BIN=$(readlink -f "${2:-target/release/vla-launch}")
BASE=${3:+$(readlink -f "$3")}
MODES=${MODES:-file terminal}
PY=$(python3 -c 'import sys; print(sys.executable)')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TICK=$(getconf CLK_TCK)

cat > "$WORK/torchrun" << PY
#!$PY
import os, sys, time
mark = os.environ["BENCH_MARK"]
if os.environ.get("BENCH_PID_OF_PARENT"):
    open(mark + "/pid", "w").write(str(os.getppid()))
open(mark + "/gen", "w").write(str(os.getpid()))
open(mark + "/start", "w").close()
seconds = float(os.environ["BENCH_SECONDS"])
n = int(seconds * 100)
t0 = time.monotonic()
for i in range(n):
    os.write(1, b"step %08d loss %.4f lr 0.0005 grad_norm 1.2345 tokens/s 12345.6 padding pad\\n" % (i, 1 / (i + 1)))
    if i % 10 == 0:
        k = i // 10
        pct = 100 * k // (n // 10)
        os.write(2, b"\\r%3d%%|%-10s| %d/%d [00:%02d<00:%02d, 10.00it/s]" % (pct, b"#" * (pct // 10), k, n // 10, k % 60, (n // 10 - k) % 60))
    delay = t0 + (i + 1) / 100 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
open(mark + "/done", "w").close()
time.sleep(0.3)
PY
chmod +x "$WORK/torchrun"
"$PY" tests/fixtures/openvla-oft/vla-scripts/finetune.py --help > "$WORK/help.txt"
printf '#!/bin/bash\ncat %q\n' "$WORK/help.txt" > "$WORK/python"
chmod +x "$WORK/python"
export VLA_DATA_ROOT=/data VLA_RUN_ROOT="$WORK/runs" WANDB_ENTITY=e WANDB_PROJECT=p \
  OPENVLA_OFT_DIR="$PWD/tests/fixtures/openvla-oft" BENCH_SECONDS=$SECONDS_RUN TERM=xterm

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
sched() { cat /proc/"$1"/task/*/schedstat 2> /dev/null | awk '{ s += $1 } END { print s + 0 }'; }
# The launcher's children other than the stand-in: its watchdog.
others() {
  local kids
  kids=$(cat /proc/"$1"/task/*/children 2> /dev/null | tr ' ' '\n' | grep -vx "$2" | grep . || true)
  local s=0
  for k in $kids; do s=$((s + $(ticks "$k" 2> /dev/null || echo 0))); done
  echo "$s"
}
# Waits for a mark file; a launcher that exits without starting the stand-in ends the script.
wait_for() {
  while [[ ! -e $1 ]]; do
    if [[ -n ${2:-} ]] && ! kill -0 "$2" 2> /dev/null; then
      echo "the run ended before $1 appeared:" >&2
      cat "$WORK"/out.* "$WORK"/screen.* 2> /dev/null | tail -5 >&2
      exit 1
    fi
    sleep 0.05
  done
}

measure() { # what mode
  local what=$1 mode=$2 mark="$WORK/mark.$1.$2" cmd
  rm -rf "$mark" && mkdir -p "$mark"
  case $what in
    tee) cmd="BENCH_MARK='$mark' '$WORK/torchrun' 2>&1 | tee '$WORK/tee.out' & echo \$! > '$mark/pid'; wait" ;;
    launcher | base)
      local bin=$BIN
      [[ $what == base ]] && bin=$BASE
      cmd="BENCH_MARK='$mark' BENCH_PID_OF_PARENT=1 '$bin' -q --profile aloha --gpus 1xh100 \
        --set script.python='$WORK/python' --torchrun '$WORK/torchrun' --log-dir '$WORK/logs'"
      ;;
  esac
  if [[ $mode == terminal ]]; then
    script -qfec "$cmd" /dev/null > "$WORK/screen.$what" 2>&1 &
  else
    bash -c "$cmd" > "$WORK/out.$what" 2>&1 &
  fi
  local runner=$!
  wait_for "$mark/start" "$runner"
  wait_for "$mark/pid"
  local pid gen
  pid=$(cat "$mark/pid")
  gen=$(cat "$mark/gen")
  local t0=$EPOCHREALTIME c0 s0 w0
  c0=$(ticks "$pid")
  s0=$(sched "$pid")
  w0=$(others "$pid" "$gen")
  wait_for "$mark/done"
  local t1=$EPOCHREALTIME c1 s1 w1
  c1=$(ticks "$pid")
  s1=$(sched "$pid")
  w1=$(others "$pid" "$gen")
  wait "$runner" || true
  awk -v w="$t1" -v v="$t0" -v c=$((c1 - c0)) -v s=$((s1 - s0)) -v o=$((w1 - w0)) -v tick="$TICK" \
    -v what="$what" -v mode="$mode" 'BEGIN {
      wall = w - v
      printf "%-8s %-8s %5.1f s  CPU %6.3f%% of a core (%d ticks), threads alive %6.3f%%", \
        mode, what, wall, 100 * c / tick / wall, c, 100 * s / 1e9 / wall
      if (what != "tee") printf ", watchdog %.3f%%", 100 * o / tick / wall
      printf "\n"
    }'
}

echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); ${SECONDS_RUN} s per run," \
  "100 lines/s + 10 tqdm updates/s"
for mode in $MODES; do
  for what in tee launcher ${BASE:+base}; do
    measure "$what" "$mode"
  done
done
