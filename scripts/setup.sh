#!/usr/bin/env bash
# Create .venv (Python 3.11) and install cbir_dist with its pinned dependencies. Idempotent.
# Usage: bash scripts/setup.sh [extra]      e.g. bash scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=${1:-}
spec="."
[ -n "$extra" ] && spec=".[${extra}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
