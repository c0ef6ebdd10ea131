#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine, for trying the cluster code paths without a cloud:
# a head node (1 CPU, no custom resources) plus N worker nodes (1 CPU each, tagged {"deep": 1}),
# the first of which can declare a logical GPU so GPU-pinned actors have somewhere to land.
#
# Start:  bash cluster/local-multinode.sh start [--workers N] [--gpu] [--port P] [--head-cpus C]
#         (start is the default; --workers 0 --head-cpus 2 is a one-node cluster with a job server)
#         then: RAY_ADDRESS=127.0.0.1:P python jobs/index.py ...   (or ray.init(address="127.0.0.1:P"))
#         or, when this ray is ray[default] (dashboard + job server on P+1875, 8265 by default):
#               ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/index.py ...
# Status: bash cluster/local-multinode.sh status
# Stop:   bash cluster/local-multinode.sh stop
#
# Every node gets its own ports and its own temp dir under $CBIR_RAY_LOCAL_DIR (/tmp/cbir-ray-P),
# which is what Ray requires to run several nodes on one host. Each node runs as `ray start --block`
# in its own process group, and `stop` ends exactly those groups: it never runs `ray stop`, which
# would kill every Ray process on the machine (other users' and other tests' clusters included).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"          # a local trial cluster: no token auth
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

cmd=start
case "${1:-}" in start|stop|status) cmd=$1; shift ;; esac
workers=2
gpu=0
port=6390
head_cpus=1
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --gpu) gpu=1; shift ;;
    --port) port=$2; shift 2 ;;
    --head-cpus) head_cpus=$2; shift 2 ;;
    *) echo "local-multinode.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# Short path on purpose: Ray's unix sockets live under it and must stay under 108 bytes.
dir="${CBIR_RAY_LOCAL_DIR:-/tmp/cbir-ray-$port}"
object_store=$(( ${CBIR_RAY_OBJECT_STORE_MB:-256} * 1024 * 1024 ))
dashboard_port=$(( port + 1875 ))          # 8265 for the default port 6390

if [ -n "${RAY:-}" ]; then :
elif command -v ray >/dev/null 2>&1; then RAY=$(command -v ray)
elif [ -x "$ROOT/.venv/bin/ray" ]; then RAY="$ROOT/.venv/bin/ray"
else echo "local-multinode.sh: no 'ray' CLI found (activate the venv or set RAY=...)" >&2; exit 1
fi
PYTHON="$(dirname "$RAY")/python"
# Job entrypoints (`ray job submit -- python ...`) run under the nodes' PATH: make `python` the
# interpreter that holds this ray.
export PATH="$(dirname "$RAY"):$PATH"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_open() {
  "$PYTHON" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
    "$1" 2>/dev/null
}

fail() {  # print the nodes' log tails, tear down what was started, exit 1
  echo "local-multinode.sh: $*" >&2
  for f in "$dir"/*.out; do [ -e "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }; done
  "$0" stop --port "$port" >&2 || true
  exit 1
}

wait_nodes() {
  # Wait until the GCS reports $1 alive nodes (or 90 s pass).
  "$PYTHON" - "127.0.0.1:$port" "$1" <<'EOF'
import sys, time
import ray
address, want = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while True:
    n = sum(1 for node in ray.nodes() if node["Alive"])
    if n >= want:
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {n} of {want} nodes joined after 90 s")
    time.sleep(0.5)
print("cluster resources:", {k: v for k, v in sorted(ray.cluster_resources().items())
                            if not k.startswith("node:")})
EOF
}

start_node() {  # start_node NAME ARGS...: `ray start --block` in its own process group
  local name=$1; shift
  mkdir -p "$dir/$name"
  setsid "$RAY" start --block --object-store-memory "$object_store" \
    --disable-usage-stats "$@" >"$dir/$name.out" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

group_alive() {  # group_alive PGID: any live (non-zombie) process left in that process group?
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

stop_groups() {  # stop_groups PIDFILE...: SIGTERM each node's process group, SIGKILL what is left
  local f pid left
  for f in "$@"; do
    pid=$(cat "$f")
    if group_alive "$pid"; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 30); do
    left=0
    for f in "$@"; do group_alive "$(cat "$f")" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.5
  done
  for f in "$@"; do
    pid=$(cat "$f")
    if group_alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    rm -f "$f"
    echo "stopped $(basename "$f" .pid)"
  done
}

case "$cmd" in
  start)
    if alive "$dir/head.pid"; then
      echo "already running: address 127.0.0.1:$port (bash $0 stop to tear down)"; exit 0
    fi
    # Logs of the previous run (one run's are kept until the next start); only what this script made.
    rm -rf "$dir"/head "$dir"/worker[0-9]* "$dir"/*.out "$dir"/*.pid
    mkdir -p "$dir"
    # Ports: head uses P (GCS), P+1..P+9; worker i uses P+10i..P+10i+9, plus a worker-port range.
    # The dashboard (and with it `ray job submit`) needs ray[default]; with only ray[data]
    # installed, Ray leaves it out and the cluster is reached with ray.init(address=...).
    start_node head --head --port "$port" --num-cpus "$head_cpus" --num-gpus 0 --temp-dir "$dir/head" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --node-manager-port $((port + 1)) --object-manager-port $((port + 2)) \
      --dashboard-agent-listen-port $((port + 3)) --dashboard-agent-grpc-port $((port + 4)) \
      --metrics-export-port $((port + 5)) --runtime-env-agent-port $((port + 6)) \
      --ray-client-server-port $((port + 7)) \
      --min-worker-port $((port + 1000)) --max-worker-port $((port + 1099))
    # Workers need the GCS up before they register.
    t0=$(date +%s)
    until port_open "$port"; do
      if ! alive "$dir/head.pid" || [ $(( $(date +%s) - t0 )) -ge 60 ]; then
        fail "the head node did not come up"
      fi
      sleep 0.5
    done
    for i in $(seq 1 "$workers"); do
      b=$((port + 10 * i))
      gpus=0
      [ "$gpu" = 1 ] && [ "$i" = 1 ] && gpus=1
      start_node "worker$i" --address "127.0.0.1:$port" --num-cpus 1 --num-gpus "$gpus" \
        --resources '{"deep": 1}' --temp-dir "$dir/worker$i" \
        --node-manager-port $((b + 1)) --object-manager-port $((b + 2)) \
        --dashboard-agent-listen-port $((b + 3)) --dashboard-agent-grpc-port $((b + 4)) \
        --metrics-export-port $((b + 5)) --runtime-env-agent-port $((b + 6)) \
        --min-worker-port $((port + 1000 + 100 * i)) --max-worker-port $((port + 1099 + 100 * i))
    done
    wait_nodes $((workers + 1)) || fail "not every node joined"
    echo "Ray address:    127.0.0.1:$port   (ray.init(address=\"127.0.0.1:$port\") or RAY_ADDRESS=127.0.0.1:$port)"
    if port_open "$dashboard_port"; then
      echo "Jobs/dashboard: http://127.0.0.1:$dashboard_port   (ray job submit --address http://127.0.0.1:$dashboard_port ...)"
    else
      echo "Jobs/dashboard: not running (install ray[default] for the dashboard and 'ray job submit')"
    fi
    echo "Stop with:      bash $0 stop --port $port"
    ;;

  status)
    for f in "$dir"/*.pid; do
      [ -e "$f" ] || { echo "not running"; exit 3; }
      n=$(basename "$f" .pid)
      if alive "$f"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: dead"; fi
    done
    ;;

  stop)
    pidfiles=()
    for f in "$dir"/worker*.pid "$dir"/head.pid; do [ -e "$f" ] && pidfiles+=("$f"); done
    if [ ${#pidfiles[@]} -eq 0 ]; then echo "not running"; else stop_groups "${pidfiles[@]}"; fi
    ;;
esac
