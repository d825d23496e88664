#!/usr/bin/env bash
# Planning time against a base commit, in one run: the planner benchmark (benches/planner.rs,
# criterion) is run on BASE (a temporary worktree with this tree's benches/planner.rs, so both
# measure the same cases) and then on this working tree, which criterion compares with it.
#
#   scripts/bench-plan.sh [BASE (default main)] [FILTER (default: every case)]
#   e.g. scripts/bench-plan.sh 29fb1ee 'xh100( cpu)?$'   (8, 64 and 512 H100s, wall and CPU time)
#
# Both builds share this tree's target directory (dependencies are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-main}
FILTER=${2:-}
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
cleanup() {
  git -C "$ROOT" worktree remove --force "$WORK/base" 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
git worktree add --quiet --detach "$WORK/base" "$BASE"
cp benches/planner.rs "$WORK/base/benches/planner.rs"
# Shorter than criterion's defaults (3 s warm-up, 5 s, 100 samples): 7 cases x 2 trees, and
# the base takes over a second for 512 GPUs.
ARGS=(--warm-up-time 1 --measurement-time 3 --sample-size 10 --noplot)
echo "== base: $(git -C "$WORK/base" log -1 --format='%h %s' | cut -c1-80)"
(cd "$WORK/base" && CARGO_TARGET_DIR=$TARGET cargo bench --quiet --features bench --bench planner \
  -- "${ARGS[@]}" --save-baseline plan-base ${FILTER:+"$FILTER"})
echo "== this tree: $(git log -1 --format='%h' HEAD)$(git diff --quiet HEAD || echo ' + changes')"
CARGO_TARGET_DIR=$TARGET cargo bench --quiet --features bench --bench planner \
  -- "${ARGS[@]}" --baseline plan-base ${FILTER:+"$FILTER"}
