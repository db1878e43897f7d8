#!/usr/bin/env bash
# Set up, then run the whole test suite: lint, types, unit and integration tests.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check agent scripts/diode_tools scripts/check_markers.py tests
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/python -m pytest -q "$@"
