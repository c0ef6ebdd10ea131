#!/usr/bin/env bash
# The main job on embedded defaults: set up .venv, then index and query a labelled image set
# (local process, milvus-lite in ./demo_out) and write demo_out/demo.html. The set is
# ../shared/data/paris6k_subset when that folder exists (our development machines), else a generated
# one; `--images DIR` picks another folder. Extra arguments go to `cbir-dist demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
args=()
if [[ " $* " != *" --images"* ]] && [ -d ../shared/data/paris6k_subset ]; then
  args=(--images ../shared/data/paris6k_subset)
fi
exec .venv/bin/cbir-dist demo ${args[@]+"${args[@]}"} "$@"
