#!/usr/bin/env bash
# The test command: from a fresh clone, set up .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
