#!/usr/bin/env bash
# A real Milvus standalone server (the `milvus` 2.3.5 PyPI package, "embedded Milvus") on 127.0.0.1,
# for the server-URI tests and for trying `--db http://...` without Docker.
# It lives in its own venv (.milvus-venv): the package bundles the milvus binary and its libraries
# and must not share an environment with the project's pymilvus/milvus-lite.
#
# Usage: bash scripts/milvus_server.sh install
#        bash scripts/milvus_server.sh start  [--port P] [--data DIR] [--timeout S] [--auth]
#        bash scripts/milvus_server.sh status [--port P] [--data DIR]
#        bash scripts/milvus_server.sh stop   [--port P] [--data DIR]
# `start` prints the URI to use (http://127.0.0.1:P) on its last line; defaults: P=19530,
# DIR=/tmp/cbir-milvus-P. The pid file is DIR/server.pid and the logs are under DIR/logs.
# --auth turns on Milvus authentication: connect with token root:Milvus (Milvus's default user).
# Several servers can run on one machine (each with its own --port and --data; the embedded etcd
# gets free ports of its own), and a server can be restarted on the same port and data at once,
# also after it was killed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${CBIR_MILVUS_VENV:-$ROOT/.milvus-venv}"
PY=${PYTHON:-python3.11}
MILVUS_VERSION=2.3.5

cmd=${1:-}
[ $# -gt 0 ] && shift
port=19530
data=""
timeout=240
auth=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --auth) auth=(--authorization-enabled true); shift ;;
    *) echo "milvus_server.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$data" ] || data="/tmp/cbir-milvus-$port"
pidfile="$data/server.pid"

die() { echo "milvus_server.sh: $*" >&2; exit 1; }

log_tail() {
  for f in "$data/server.out" "$data/logs/milvus-stderr.log" "$data/logs/milvus-stdout.log"; do
    [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 40 "$f" >&2; }
  done
  return 0
}

group_alive() {  # group_alive PGID: any live (non-zombie) process left in that process group?
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

running_pid() {
  # Prints the server's pid (the process-group leader) when it is alive.
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

port_open() {
  "$VENV/bin/python" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1.0)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

case "$cmd" in
  install)
    t0=$(date +%s)
    if [ ! -x "$VENV/bin/python" ]; then
      "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "milvus==$MILVUS_VERSION"
    "$VENV/bin/milvus-server" --help >/dev/null || die "milvus-server is not runnable in $VENV"
    echo "milvus $MILVUS_VERSION installed in $VENV ($(( $(date +%s) - t0 )) s)"
    ;;

  start)
    [ -x "$VENV/bin/milvus-server" ] || die "$VENV is missing: run 'bash scripts/milvus_server.sh install' first"
    if pid=$(running_pid); then
      echo "already running (pid $pid, data $data)"
      echo "http://127.0.0.1:$port"
      exit 0
    fi
    if port_open "$port"; then
      die "port $port on 127.0.0.1 is already in use; pick another with --port"
    fi
    mkdir -p "$data"
    t0=$(date +%s)
    # The embedded etcd listens on 2379 (client) and 2380 (peer) unless told otherwise, so a second
    # server on this machine would fail to start: give it two free ports of its own, kept in the data
    # dir so that a restart on the same data finds the same member URLs. Milvus reads the file from
    # $ETCD_CONFIG_PATH (its etcd.config.path setting).
    etcd_cfg="$data/embedEtcd.yaml"
    if [ ! -s "$etcd_cfg" ]; then
      read -r etcd_client etcd_peer < <("$VENV/bin/python" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
      cat >"$etcd_cfg" <<EOF
name: default
listen-client-urls: http://127.0.0.1:$etcd_client
advertise-client-urls: http://127.0.0.1:$etcd_client
listen-peer-urls: http://127.0.0.1:$etcd_peer
initial-advertise-peer-urls: http://127.0.0.1:$etcd_peer
initial-cluster: default=http://127.0.0.1:$etcd_peer
EOF
    fi
    # setsid: the python wrapper and the milvus binary it spawns share one new process group,
    # so `stop` can signal both (the wrapper handles only SIGINT and would orphan the binary).
    # --extra-config proxy.port: the wrapper test-binds --proxy-port without SO_REUSEADDR and, when
    # that fails (e.g. a killed server's connections still in TIME_WAIT, up to a minute), silently
    # moves the server to the next free port; the extra config pins the port milvus itself binds
    # (with SO_REUSEADDR), so a restart on the same port works at once.
    ETCD_CONFIG_PATH="$etcd_cfg" PYTHONUNBUFFERED=1 setsid "$VENV/bin/milvus-server" --data "$data" \
      --proxy-port "$port" --extra-config "proxy.port=$port" "${auth[@]}" \
      >"$data/server.out" 2>&1 </dev/null &
    echo $! >"$pidfile"
    # Ready = the proxy accepts TCP connections and the wrapper has passed its /healthz wait
    # (it prints its banner after that; PYTHONUNBUFFERED above makes the banner reach the file).
    while :; do
      if ! running_pid >/dev/null; then
        echo "milvus_server.sh: the server exited during start-up" >&2
        log_tail; exit 1
      fi
      if port_open "$port" && grep -q "Ctrl+C to exit" "$data/server.out" 2>/dev/null; then
        break
      fi
      if [ $(( $(date +%s) - t0 )) -ge "$timeout" ]; then
        echo "milvus_server.sh: not ready after $timeout s" >&2
        log_tail; "$0" stop --port "$port" --data "$data" >/dev/null 2>&1 || true
        exit 1
      fi
      sleep 1
    done
    echo "milvus $MILVUS_VERSION started (pid $(cat "$pidfile"), data $data, $(( $(date +%s) - t0 )) s)"
    echo "http://127.0.0.1:$port"
    ;;

  status)
    if pid=$(running_pid); then
      if port_open "$port"; then
        echo "running (pid $pid, data $data): http://127.0.0.1:$port"
      else
        echo "starting or unhealthy (pid $pid, port $port closed)"; exit 1
      fi
    else
      echo "not running (no live pid in $pidfile)"; exit 3
    fi
    ;;

  stop)
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || ! group_alive "$pid"; then
      echo "not running"; rm -f "$pidfile"; exit 0
    fi
    members=$(ps -eo pid=,pgid= | awk -v g="$pid" '$2 == g {print $1}')
    # SIGINT is what the milvus-server wrapper handles: it stops the milvus binary, then exits.
    kill -INT -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      group_alive "$pid" || break
      sleep 0.5
    done
    if group_alive "$pid"; then
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 0.5
    fi
    rm -f "$pidfile"
    # The milvus binary leaves a server_id_<pid> file in /tmp/milvus whatever its data dir is.
    for p in $members; do rm -f "/tmp/milvus/server_id_$p"; done
    rmdir /tmp/milvus 2>/dev/null || true
    echo "stopped (pid $pid)"
    ;;

  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
