#!/usr/bin/env bash
# The integration tests' wall time, two checkouts side by side: `cargo test -q --test it` in each,
# alternately, ROUNDS times (the machine's load changes between runs; alternating spreads it over
# both). Build both first (`cargo test --test it --no-run` in each): the build is not timed. Prints
# one line per run with the 1-minute load average before it, and the user and system CPU time of
# the whole test process tree (the suite is CPU-bound on a 2-core machine: wall is at least half
# of that).
#   scripts/bench-suite.sh BASE_CHECKOUT OTHER_CHECKOUT [ROUNDS]
# e.g. git worktree add /tmp/suitebase 29fb1ee && (cd /tmp/suitebase && cargo test --test it
# --no-run) && scripts/bench-suite.sh /tmp/suitebase . 2
set -euo pipefail
base=$(cd "$1" && pwd)
other=$(cd "$2" && pwd)
rounds=${3:-2}
for round in $(seq "$rounds"); do
  for tree in "$base" "$other"; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    times=$(mktemp)
    (cd "$tree" && /usr/bin/time -f '%e %U %S' -o "$times" cargo test -q --test it >/dev/null 2>&1) ||
      echo "warning: the suite failed in $tree" >&2
    read -r wall user sys <"$times"
    rm -f "$times"
    tests=$(cd "$tree" && cargo test -q --test it -- --list 2>/dev/null | grep -c ': test$')
    printf 'round %s  %-40s %3s tests  wall %6.2f s  cpu %6.2f s (user %.2f, sys %.2f)  load %s\n' \
      "$round" "$(git -C "$tree" rev-parse --short HEAD)" "$tests" "$wall" \
      "$(echo "$user + $sys" | bc)" "$user" "$sys" "$load"
  done
done
