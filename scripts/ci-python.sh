#!/usr/bin/env bash
# The Python side's checks, as CI runs them: `ruff format --check`, `ruff check` and pytest on
# scripts/ (configuration: pyproject.toml's [tool.ruff] and [tool.pytest.ini_options]).
#
#   scripts/ci-python.sh            # installs ruff and pytest into .venv-ci/ when they are missing
#   PYTHON_CI_VENV=/path scripts/ci-python.sh
#
# Tests that need torch (e.g. the two-process gloo tests) are skipped unless the venv has torch:
# scripts/fsdp/pinned_stack_check.sh runs them on upstream's pinned stack. Exits non-zero when any
# check fails; pytest must find tests (its exit 5, "no tests collected", fails here too).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PYTHON_CI_VENV:-$ROOT/.venv-ci}
PY=${PYTHON:-python3}
if ! "$VENV/bin/python" -c 'import pytest' 2>/dev/null || [ ! -x "$VENV/bin/ruff" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'ruff==0.17.6' 'pytest>=8,<10'
fi
cd "$ROOT"
status=0
"$VENV/bin/ruff" format --check scripts || status=1
"$VENV/bin/ruff" check scripts || status=1
"$VENV/bin/python" -m pytest -q scripts/tests || status=1
exit $status
