#!/usr/bin/env bash
# The main job on embedded defaults: set up .venv, then index and query the generated demo set
# (local process, milvus-lite in ./demo_out). Extra arguments go to `cbir-dist demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
exec .venv/bin/cbir-dist demo "$@"
