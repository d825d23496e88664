#!/usr/bin/env bash
# Relay throughput of the supervisor against `cat > file` on the same stream, in the same run,
# for three shapes of output, and whether every byte arrived (the relayed copy and the log).
#
#   scripts/bench-relay.sh [RUNS (default 5)] [SHAPES (default "blocks ranks longline")]
#   SUPERVISE=path/to/supervise         a prebuilt `supervise` example (else built here)
#   BASE_SUPERVISE=path/to/supervise    also time this one (e.g. a build of the base commit)
#   FLOOR=path/to/relay_floor           a prebuilt `relay_floor` example for TWICE=1 (else built here)
#   STARTUP=1                           also time start to exec (50 runs, as before, each after a
#                                       pause of PAUSE seconds, default 0.2: a launcher is started
#                                       once, and runs back to back would find the kernel's cgroup
#                                       lock still fast from the run before, hiding a cold start)
#   TWICE=1                             also time `twice` (examples/relay_floor.rs): reads of up
#                                       to 256 KiB (the launcher's size), each written to the copy
#                                       and to a second file (as the launcher's log), with no other
#                                       work: the floor of any relay that keeps a log beside the copy;
#                                       `splice` (the same with `--splice`): tee(2) and splice(2)
#                                       move the bytes into both files without a copy in user space;
#                                       and `threads` (`--threads`): the copy written by a second
#                                       thread, so that the two writes can use both cores
#
# Shapes (one producer process each, the real interpreter, not a pyenv shim):
#   blocks    256 MiB of 80-byte lines written in 64 KiB blocks
#   ranks     8 processes at once, 8 MiB of 80-byte lines each, in 4 KiB writes (64 MiB)
#   longline  one 10 MiB line, one write
# `cat` copies the producer's stdout to a file; the launcher (the `supervise` example, which runs
# the library's supervisor as `vla-launch` does, the tqdm tracker included) relays it to a file
# the same way and writes the timestamped run log as well. Each repetition runs cat and the
# launcher(s) back to back (each repetition starting with the next of them), so the machine's
# load is shared alike; the median of RUNS is shown, wall time and the CPU time of the whole run
# (producer included, which does not depend on the machine's other load), and the launcher's own
# CPU time (getrusage, children excluded). After every launcher run the
# relayed file is compared with the producer's bytes, and the log of each launcher's last run is
# decoded and compared too.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEFORMAT='%3R %3U %3S' # bash's `time`: wall, then the CPU time of all it started
RUNS=${1:-5}
SHAPES=${2:-blocks ranks longline}
if [[ -z ${SUPERVISE:-} ]]; then
  cargo build --release --quiet --example supervise
fi
if [[ -n ${TWICE:-} && -z ${FLOOR:-} ]]; then
  cargo build --release --quiet --example relay_floor
fi
FLOOR=$(readlink -f "${FLOOR:-target/release/examples/relay_floor}")
SUP=$(readlink -f "${SUPERVISE:-target/release/examples/supervise}")
PY=$(python3 -c 'import sys; print(sys.executable)')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/produce.py" << 'PY'
import os, sys
shape, rank = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
def lines(n, tag):
    return b"".join(b"%s %08d %s\n" % (tag, i, b"x" * (78 - 9 - len(tag))) for i in range(n))
def write_all(b):
    view = memoryview(b)
    while view:
        view = view[os.write(1, view):]
if shape == "blocks":
    block = lines(819, b"block")[: 64 * 1024]
    block += b"y" * (64 * 1024 - len(block))
    for _ in range(256 * 16):
        write_all(block)
elif shape == "rank":
    data = lines(8 * 1024 * 1024 // 80, b"rank%d" % rank)  # whole lines: 8 MiB less 40 bytes
    # Whole lines, at most PIPE_BUF bytes a write: each write stays in one piece in the pipe.
    for i in range(0, len(data), 4080):
        write_all(data[i : i + 4080])
elif shape == "longline":
    write_all(b"z" * (10 * 1024 * 1024 - 1) + b"\n")
PY
cat > "$WORK/decode.py" << 'PY'
# The run log's records (src/launch/log.rs, format 2) back to the stdout bytes.
import sys
out = bytearray()
tag = b""
for line in open(sys.argv[1], "rb").read().split(b"\n")[:-1]:
    if line.startswith(b"+|"):  # a continuation: the stream of the record above
        payload = line[2:]
    else:
        tag, payload = line[25:30], line[30:]
    if tag == b"out |":
        out += payload if payload.endswith(b"\r") else payload + b"\n"
    elif tag == b"out~|":
        out += payload
sys.stdout.buffer.write(out)
PY
producer() {
  case $1 in
    ranks) echo "for r in 0 1 2 3 4 5 6 7; do '$PY' '$WORK/produce.py' rank \$r & done; wait" ;;
    *) echo "exec '$PY' '$WORK/produce.py' $1" ;;
  esac
}
median() { sort -g | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'; }

launchers=(launcher)
[[ -n ${BASE_SUPERVISE:-} ]] && launchers+=(base)
echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $RUNS runs each, medians"
for shape in $SHAPES; do
  bash -c "$(producer "$shape")" > "$WORK/expected"
  if [[ $shape == ranks ]]; then
    # Interleaved differently every run: compare each rank's lines, in order.
    for r in 0 1 2 3 4 5 6 7; do grep -a "^rank$r " "$WORK/expected"; done > "$WORK/expected.sorted"
  fi
  bytes=$(stat -c %s "$WORK/expected")
  : > "$WORK/time.cat"
  : > "$WORK/time.twice"
  : > "$WORK/time.splice"
  : > "$WORK/time.threads"
  for l in "${launchers[@]}"; do : > "$WORK/time.$l"; : > "$WORK/cpu.$l"; done
  for run in $(seq "$RUNS"); do
    # Each repetition starts with the next one of them (cat, launcher, base, cat, ...), so that
    # none always runs right after another's writes (their writeback, a truncated file).
    order=(cat "${launchers[@]}")
    [[ -n ${TWICE:-} ]] && order+=(twice splice threads)
    k=$(((run - 1) % ${#order[@]}))
    for l in "${order[@]:k}" "${order[@]:0:k}"; do
      if [[ $l == cat ]]; then
        { time bash -c "$(producer "$shape")" | cat > "$WORK/out.cat"; } 2>> "$WORK/time.cat"
        continue
      fi
      if [[ $l == twice || $l == splice || $l == threads ]]; then
        flag=()
        [[ $l != twice ]] && flag=("--$l")
        { time bash -c "$(producer "$shape")" | "$FLOOR" "${flag[@]}" "$WORK/second.$l" > "$WORK/out.$l"; } 2>> "$WORK/time.$l"
        cmp -s "$WORK/second.$l" "$WORK/out.$l" || { echo "$l: copies differ" >&2; exit 1; }
        continue
      fi
      bin=$SUP
      [[ $l == base ]] && bin=$(readlink -f "$BASE_SUPERVISE")
      rm -f "$WORK/run.log"
      { time "$bin" "$WORK/run.log" bash -c "$(producer "$shape")" > "$WORK/out.$l" 2> "$WORK/err.$l"; } 2>> "$WORK/time.$l"
      awk '/supervise cpu:/ { printf "%.1f\n", ($4 + $7) * 1000 }' "$WORK/err.$l" >> "$WORK/cpu.$l"
      if [[ $shape == ranks ]]; then
        for r in 0 1 2 3 4 5 6 7; do grep -a "^rank$r " "$WORK/out.$l"; done > "$WORK/out.sorted"
        cmp -s "$WORK/out.sorted" "$WORK/expected.sorted" || { echo "$l $shape: relayed bytes differ" >&2; exit 1; }
      else
        cmp -s "$WORK/out.$l" "$WORK/expected" || { echo "$l $shape: relayed bytes differ" >&2; exit 1; }
      fi
      cp "$WORK/run.log" "$WORK/last.$l.log"
    done
  done
  # The log of the last run holds the same stream, byte for byte.
  for l in "${launchers[@]}"; do
    "$PY" "$WORK/decode.py" "$WORK/last.$l.log" | cmp -s - "$WORK/out.$l" \
      || { echo "$l $shape: the log's stdout differs from the relayed bytes" >&2; exit 1; }
  done
  # Wall time, and the CPU time of everything the run started (producer included): the second
  # does not depend on what else the machine runs.
  wall() { awk '{ printf "%.1f\n", $1 * 1000 }' "$WORK/time.$1" | median; }
  cpu() { awk '{ printf "%.1f\n", ($2 + $3) * 1000 }' "$WORK/time.$1" | median; }
  cat_ms=$(wall cat)
  cat_cpu=$(cpu cat)
  printf '%-9s %4d MiB  cat %6.1f ms (all CPU %4.0f ms)' "$shape" $((bytes >> 20)) "$cat_ms" "$cat_cpu"
  if [[ -n ${TWICE:-} ]]; then
    for l in twice splice threads; do
      printf ' | %s %6.1f ms = %.2fx cat (all CPU %4.0f ms)' "$l" "$(wall $l)" \
        "$(awk -v a="$(wall $l)" -v b="$cat_ms" 'BEGIN { print a / b }')" "$(cpu $l)"
    done
  fi
  for l in "${launchers[@]}"; do
    l_ms=$(wall "$l")
    l_cpu=$(cpu "$l")
    printf ' | %s %6.1f ms = %.2fx cat (all CPU %4.0f ms = %.2fx, own %3.0f ms)' "$l" "$l_ms" \
      "$(awk -v a="$l_ms" -v b="$cat_ms" 'BEGIN { print a / b }')" "$l_cpu" \
      "$(awk -v a="$l_cpu" -v b="$cat_cpu" 'BEGIN { print a / b }')" "$(median < "$WORK/cpu.$l")"
  done
  echo "  [bytes exact]"
done

if [[ -n ${STARTUP:-} ]]; then
  # Start-to-exec: the child prints bash's $EPOCHREALTIME as its first act; the same child run
  # directly gives the baseline, so the difference is the launcher's own start + spawn time.
  N=50
  for what in direct launcher; do
    for _ in $(seq "$N"); do
      sleep "${PAUSE:-0.2}"
      t0=$EPOCHREALTIME
      case $what in
        direct) t1=$(bash -c 'echo $EPOCHREALTIME') ;;
        launcher) t1=$("$SUP" "$WORK/exec.log" bash -c 'echo $EPOCHREALTIME' 2> /dev/null) ;;
      esac
      ms "$t0" "$t1"
    done | median > "$WORK/$what.exec"
  done
  echo "start to exec, median of $N: direct $(cat "$WORK/direct.exec") ms," \
    "through the launcher $(cat "$WORK/launcher.exec") ms"
fi
