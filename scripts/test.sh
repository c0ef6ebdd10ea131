#!/usr/bin/env bash
# The test command: from a fresh clone, set up .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh dev,cluster   # cluster: ray[default], the job server `ray job submit` needs
# a real Milvus standalone server (PyPI `milvus`, in its own .milvus-venv) for the server-URI tests
bash scripts/milvus_server.sh install
# the import rules of docs/architecture.md (import-linter contracts in pyproject.toml)
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q "$@"
