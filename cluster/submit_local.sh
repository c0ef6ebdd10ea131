#!/usr/bin/env bash
# `ray job submit` for real, on this machine: start a Ray cluster with its job server, submit
# jobs/index.py and then jobs/query.py with `--working-dir .`, check the collection and the hits
# afterwards, print how the work spread over the nodes, and always tear the cluster down.
#
# Usage: bash cluster/submit_local.sh [--multinode] [--port P] [--images DIR] [--queries DIR]
#            [--db PATH|URI] [--token-file FILE] [--keep DIR] [--timeout S] [-- INDEX OPTIONS...]
#
#   (default)     one head node (2 CPUs) with the dashboard and job server: `ray start --head`
#   --multinode   cluster/local-multinode.sh: a head + 2 workers tagged {"deep": 1}, worker1 with a
#                 logical GPU; the index job then uses a backbone (MobileNetV2, random weights) so
#                 that the deep-feature actor lands on the GPU worker
#   --images DIR  the class-per-folder images to index (default: a generated set, 6 classes x 4)
#   --queries DIR the query images (default: another generated set, 6 classes x 2)
#   --db          milvus-lite path (default: a fresh one in the work dir) or a Milvus server URI
#   --token-file  the Milvus server's token, read by the jobs from this file (see below)
#   --keep DIR    keep the work dir (logs, run dir, hits) here instead of deleting it
#   -- ...        extra options for jobs/index.py (default: --backbone none, or the backbone above)
#
# Ports: the cluster uses P..P+49, P+1000..P+1299 and the dashboard/job server P+1875; without
# --port the first free such block from 21000 up is taken. Every node's temp dir is under the work
# dir (Ray's `--temp-dir`), and the cluster is stopped by process group (never `ray stop`, which
# would stop every Ray instance on the machine).
#
# Token safety: a token is never put on a command line (`ps`) or in the job's runtime env
# (`--runtime-env-json` env_vars are stored in the job's metadata: `ray job list`, the dashboard).
# The jobs get `--token-file FILE` (a path; the file must be readable where the job's driver runs,
# here the head on this machine). Without --db the jobs use milvus-lite, which needs no token: the
# job's driver is the single writer and runs on the head, so a local path works on one machine.
#
# The job's working dir is uploaded by Ray honouring .gitignore, so .venv/ and .milvus-venv/ stay
# behind; the script checks that from the copy Ray unpacked on the head.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

multinode=0
port=""
images=""
queries=""
db=""
token_file=""
keep=""
timeout=600
index_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --multinode) multinode=1; shift ;;
    --port) port=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --queries) queries=$2; shift 2 ;;
    --db) db=$2; shift 2 ;;
    --token-file) token_file=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --) shift; index_opts=("$@"); break ;;
    *) echo "submit_local.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

if [ -n "${RAY:-}" ]; then :
elif command -v ray >/dev/null 2>&1; then RAY=$(command -v ray)
elif [ -x "$ROOT/.venv/bin/ray" ]; then RAY="$ROOT/.venv/bin/ray"
else echo "submit_local.sh: no 'ray' CLI found (activate the venv or set RAY=...)" >&2; exit 1
fi
export RAY
PYTHON="$(dirname "$RAY")/python"
"$PYTHON" -c 'import ray.dashboard.modules.job.sdk' 2>/dev/null \
  || { echo "submit_local.sh: the job server needs ray[default]: pip install -e '.[cluster]'" >&2; exit 1; }

abspath() { "$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"; }

# Short on purpose: Ray's unix sockets live under it and must stay under 108 bytes.
work=$(mktemp -d /tmp/cbir-submit-XXXXXX)
export CBIR_RAY_LOCAL_DIR="$work/ray"

free_block() {  # the first base port P >= 21000 (step 100) whose cluster ports are all free
  "$PYTHON" - <<'EOF'
import socket, sys

def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
    return True

for base in range(21000, 60000 - 1900, 100):
    ports = [*range(base, base + 50), *range(base + 1000, base + 1300, 7), base + 1875]
    if all(free(p) for p in ports):
        print(base)
        sys.exit(0)
sys.exit("no free port block")
EOF
}
[ -n "$port" ] || port=$(free_block)
dash=$((port + 1875))

cleanup() {
  local rc=$?
  bash "$ROOT/cluster/local-multinode.sh" stop --port "$port" >/dev/null 2>&1 || true
  if [ -n "$keep" ]; then
    mkdir -p "$keep" && cp -r "$work"/. "$keep"/ 2>/dev/null || true
    echo "submit_local.sh: kept the work dir in $keep"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- data and store --------------------------------------------------------------------------------
if [ -z "$images" ]; then
  images="$work/images"
  "$PYTHON" -c 'import sys; from cbir_dist.demo import make_dataset; make_dataset(sys.argv[1], per_class=4, size=64)' "$images"
fi
if [ -z "$queries" ]; then
  queries="$work/queries"
  "$PYTHON" -c 'import sys; from cbir_dist.demo import make_dataset; make_dataset(sys.argv[1], per_class=2, size=64, seed=1)' "$queries"
fi
images=$(abspath "$images")      # the jobs run from Ray's copy of the working dir: absolute paths only
queries=$(abspath "$queries")
[ -n "$db" ] || db="$work/cbir.db"
case "$db" in http://*|https://*) ;; *) db=$(abspath "$db") ;; esac
store_opts=(--db "$db")
if [ -n "$token_file" ]; then
  token_file=$(abspath "$token_file")
  store_opts+=(--token-file "$token_file")
fi
collection="submit_$$_$RANDOM"
if [ ${#index_opts[@]} -eq 0 ]; then
  if [ "$multinode" = 1 ]; then
    index_opts=(--backbone mobilenet_v2 --weights random --image-size 64 --descriptors correlogram)
  else
    index_opts=(--backbone none)
  fi
fi

# --- the cluster -------------------------------------------------------------------------------------
t0=$(date +%s)
if [ "$multinode" = 1 ]; then
  bash cluster/local-multinode.sh start --port "$port" --workers 2 --gpu
else
  bash cluster/local-multinode.sh start --port "$port" --workers 0 --head-cpus 2
fi
echo "submit_local.sh: cluster up in $(( $(date +%s) - t0 )) s"
export RAY_ADDRESS="http://127.0.0.1:$dash"     # the job server: what `ray job submit` talks to

job_status() {  # the job's status from the job server's REST API (the CLI's wording is for people)
  "$PYTHON" -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(f"{sys.argv[1]}/api/jobs/{sys.argv[2]}", timeout=10))["status"])' \
    "$RAY_ADDRESS" "$1" 2>/dev/null || echo UNKNOWN
}

submit() {  # submit NAME ARGS...: run jobs/NAME.py ARGS... as a Ray job, wait, print its summary lines
  local name=$1; shift
  local id="cbir-$name-$$-$RANDOM" rc=0 status t=$(date +%s)
  # a plain blocking submit: uploads the working dir, tails the job's logs, exits 1 when it failed
  timeout "$timeout" "$RAY" job submit --submission-id "$id" --working-dir . -- python "jobs/$name.py" "$@" \
    >"$work/$name.job.log" 2>&1 || rc=$?
  [ "$rc" = 124 ] && "$RAY" job stop "$id" >/dev/null 2>&1 || true
  status=$(job_status "$id")
  echo "job $id: $status in $(( $(date +%s) - t )) s (ray job submit exit $rc)"
  grep -E "Uploading package|Creating a file package" "$work/$name.job.log" | sed 's/^.*-- /  | /' || true
  grep -E "^(indexed|[0-9]+ queries|P@1)|error:" "$work/$name.job.log" | sed 's/^/  | /' || true
  if [ "$status" != SUCCEEDED ] || [ "$rc" != 0 ]; then
    echo "--- tail of the $name job's log" >&2; tail -n 40 "$work/$name.job.log" >&2
    return 1
  fi
}

submit index "$images" "${store_opts[@]}" --collection "$collection" --run-dir "$work/runs/index" \
  --batch-size 4 "${index_opts[@]}"
submit query "$queries" "${store_opts[@]}" --collection "$collection" -k 5 --out "$work/hits.parquet"

# --- checks --------------------------------------------------------------------------------------------
"$PYTHON" - "$db" "$collection" "$token_file" "$work" "$port" "$images" <<'EOF'
import json, os, sys
from pathlib import Path

import pyarrow.parquet as pq

from cbir_dist.store import VectorStore

db, collection, token_file, work, port, images = sys.argv[1:]
work = Path(work)
token = Path(token_file).read_text().splitlines()[0].strip() if token_file else None
stats = json.loads((work / "runs/index/stats.json").read_text())
manifest = pq.read_table(work / "runs/index/manifest.parquet").to_pydict()
ok_ids = [int(i) for i, s in zip(manifest["id"], manifest["status"]) if s == "ok"]
n_files = sum(1 for p in Path(images).rglob("*") if p.is_file())
with VectorStore(db, collection, token=token) as store:
    rows = store.count()
    hits = pq.read_table(work / "hits.parquet").to_pydict()
    hit_ids = {int(i) for i, e in zip(hits["id"], hits["error"]) if not e}
    present = store.existing_ids(list(hit_ids)) if hit_ids else set()
    store.drop()  # the collection was this run's only
failed = [q for q, e in zip(hits["query"], hits["error"]) if e]
n_q = len({q for q, e in zip(hits["query"], hits["error"]) if not e})
p1 = [lab == ql for lab, ql, r, e in zip(hits["label"], hits["query_label"], hits["rank"], hits["error"])
      if r == 1 and not e]
print(f"check: {db} collection {collection}: {rows} rows; index job: {stats['files']} files, "
      f"{stats['indexed']} indexed, backend {stats['backend']}")
print(f"check: hits: {n_q} queries x {len(hits['id']) // max(n_q, 1)} ranks, {len(failed)} failed, "
      f"{len(present)} of {len(hit_ids)} distinct hit ids in the collection, P@1 {100 * sum(p1) / max(len(p1), 1):.1f}")
problems = []
if stats["backend"] != "ray":
    problems.append(f"the index job ran on backend {stats['backend']}, not ray")
if rows != len(ok_ids) or rows != stats["indexed"] or rows != n_files:
    problems.append(f"{rows} rows, but {n_files} files and {len(ok_ids)} ok in the manifest")
if failed or not hit_ids or present != hit_ids:
    problems.append(f"hits: {len(failed)} failed queries, {len(hit_ids - present)} hit ids not in the collection")
if len(hits["id"]) != 5 * n_q:
    problems.append(f"{len(hits['id'])} hit rows for {n_q} queries at k = 5")

# where the work ran, by node name (local-multinode.sh gives node i the ports P+10i+1)
import ray

ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR", log_to_driver=False)
names = {}
for n in ray.nodes():
    i = (int(n["NodeManagerPort"]) - int(port) - 1) // 10
    res = {k: v for k, v in n["Resources"].items() if not k.startswith("node:") and "memory" not in k}
    names[n["NodeID"]] = ("head" if i == 0 else f"worker{i}") + f" {res}"
ray.shutdown()
print("spread (stats.json: stage -> node: rows, seconds):")
for stage, items in stats.get("stage_node_items", {}).items():
    secs = stats.get("stage_node_seconds", {}).get(stage, {})
    total = stats["stage_items"].get(stage)
    print(f"  {stage:12s} {total} rows, {stats['stage_seconds'].get(stage)} s")
    for node, n in sorted(items.items(), key=lambda kv: names.get(kv[0], kv[0])):
        print(f"    {names.get(node, node[:8])}: {n} rows, {secs.get(node, 0):.2f} s")
print("stats.json:", json.dumps({k: stats.get(k) for k in ("stage_nodes", "stage_seconds", "stage_items",
                                                              "seconds", "shards")}))

# what Ray uploaded as the working dir, as unpacked on the head
pkgs = sorted({p.resolve() for p in (work / "ray/head").glob("session_2*/runtime_resources/working_dir_files/*")
               if p.is_dir()})
if not pkgs:
    problems.append("no unpacked working dir found under the head's temp dir")
for pkg in pkgs:
    files = [p for p in pkg.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"working dir as uploaded: {pkg.name}: {len(files)} files, {size / 1e6:.2f} MB; "
          f"top level: {sorted(p.name for p in pkg.iterdir())}")
    leaked = [name for name in (".venv", ".milvus-venv", ".git") if (pkg / name).exists()]
    if leaked:
        problems.append(f"the uploaded working dir holds {leaked}")
    if not (pkg / "jobs/index.py").is_file() or not (pkg / "cbir_dist/cli/__init__.py").is_file():
        problems.append("the uploaded working dir lacks jobs/ or cbir_dist/")
if problems:
    sys.exit("check FAILED: " + "; ".join(problems))
print("check: OK")
EOF
echo "submit_local.sh: done in $(( $(date +%s) - t0 )) s"
