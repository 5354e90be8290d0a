#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest args...]
# e.g. ./scripts/test.sh tests/test_packaging.py -m "not slow"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup-env.sh"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
