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
# `start` prints the URI to use (http://127.0.0.1:P) on its last line; defaults: P=19530, DIR a new
# private folder (mktemp -d, mode 700) remembered per port for `status`/`stop` in
# ${XDG_STATE_HOME:-~/.local/state}/cbir_dist/. The pid file is DIR/server.pid and the logs are under
# DIR/logs; `stop` signals a pid only after checking it is this script's server for DIR.
# --auth turns on Milvus authentication: connect with token root:Milvus (Milvus's default user),
# passed as MILVUS_TOKEN=root:Milvus or --token-file FILE, never on a command line.
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
state_dir="${XDG_STATE_HOME:-$HOME/.local/state}/cbir_dist"
pointer="$state_dir/milvus-$port.data"
if [ -z "$data" ]; then
  if [ "$cmd" = "start" ]; then
    data=$(mktemp -d "${TMPDIR:-/tmp}/cbir-milvus-$port.XXXXXX")  # private: mode 700, unpredictable name
    mkdir -p "$state_dir" && chmod 700 "$state_dir"
    (umask 077 && echo "$data" >"$pointer")
  elif [ -f "$pointer" ]; then
    data=$(cat "$pointer")
  else
    data="/nonexistent/cbir-milvus-$port"  # nothing this script started: status/stop report "not running"
  fi
fi
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

is_our_server() {  # is_our_server PID: the pid is this script's milvus-server wrapper for $data
  local pid=$1 cmdline
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  case "$cmdline" in
    *milvus-server*"--data $data "*) return 0 ;;
  esac
  return 1
}

running_pid() {
  # Prints the server's pid (the process-group leader) when it is alive.
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && is_our_server "$pid" && { echo "$pid"; return 0; }
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

launch() {
  # setsid: the python wrapper and the milvus binary it spawns share one new process group,
  # so `stop` can signal both (the wrapper handles only SIGINT and would orphan the binary).
  # Every port goes through --extra-config (a key of the generated milvus.yaml), not the wrapper's
  # own port flags: the wrapper test-binds those without SO_REUSEADDR and, when that fails (a killed
  # server's connections still in TIME_WAIT, up to a minute), moves the server to another port or
  # gives up; milvus itself binds them with SO_REUSEADDR, so a restart on the same ports works.
  # ETCD_CONFIG_PATH: Milvus reads environment overrides of its config keys (etcd.config.path).
  ETCD_CONFIG_PATH="$data/embed_etcd.yaml" PYTHONUNBUFFERED=1 setsid "$VENV/bin/milvus-server" --data "$data" \
    --extra-config "proxy.port=$port" --extra-config "etcd.endpoints=localhost:$ETCD_PORT" \
    --extra-config "rootCoord.port=$ROOT_COORD_PORT" --extra-config "proxy.internalPort=$PROXY_INTERNAL_PORT" \
    --extra-config "queryCoord.port=$QUERY_COORD_PORT" --extra-config "queryNode.port=$QUERY_NODE_PORT" \
    --extra-config "indexNode.port=$INDEX_NODE_PORT" --extra-config "dataCoord.port=$DATA_COORD_PORT" \
    --extra-config "dataNode.port=$DATA_NODE_PORT" \
    --extra-config "common.session.ttl=${CBIR_MILVUS_SESSION_TTL:-10}" --extra-config "common.session.retryTimes=100" \
    "${auth[@]}" >"$data/server.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_ready() {  # wait_ready SECONDS: 0 once ready; exits 1 if the server died; 1 on timeout
  # Ready = the proxy accepts TCP connections and the wrapper has passed its /healthz wait
  # (it prints its banner after that; PYTHONUNBUFFERED above makes the banner reach the file).
  local start
  start=$(date +%s)
  while :; do
    # during start-up the pid may still be setsid's: liveness only (running_pid also checks the cmdline)
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "milvus_server.sh: the server exited during start-up" >&2
      log_tail; exit 1
    fi
    if port_open "$port" && grep -q "Ctrl+C to exit" "$data/server.out" 2>/dev/null; then
      return 0
    fi
    [ $(( $(date +%s) - start )) -ge "$1" ] && return 1
    sleep 1
  done
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
    chmod 700 "$data"
    t0=$(date +%s)
    # A server killed without `stop` leaves its components' etcd sessions behind (etcd renews their
    # leases when it restarts), and components that register before they expire can wedge on
    # "node not match". A short session TTL (10 s instead of 30) shortens that window; a first start
    # after an unclean stop that is not ready in time is stopped cleanly (which removes the
    # sessions) and started once more.
    unclean=0
    [ -f "$pidfile" ] && unclean=1
    rm -f "$pidfile"
    # Every port the server listens on is its own, so several servers run side by side (tests, the
    # fault-injection restart): the wrapper would otherwise start etcd on 2379/2380 and every
    # internal service on a fixed default. They are drawn below the kernel's ephemeral range (where
    # any outgoing connection could take a port while the server is down) and kept in ports.env, so a
    # restart on the same folder comes back on the same ports (one that got taken is drawn anew).
    "$VENV/bin/python" - "$data/ports.env" <<'PYEOF'
import os, random, socket, sys
path = sys.argv[1]
names = ["ETCD", "ETCD_PEER", "ROOT_COORD", "PROXY_INTERNAL", "QUERY_COORD", "QUERY_NODE", "INDEX_NODE",
         "DATA_COORD", "DATA_NODE"]
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
old = {}
if os.path.exists(path):
    for line in open(path):
        k, _, v = line.strip().partition("=")
        if v.isdigit():
            old[k] = int(v)
held, out = [], []
def grab(port):
    s = socket.socket()
    # SO_REUSEADDR as the server's own listeners set it: a port whose old connections linger in
    # TIME_WAIT after a kill is still this server's, and must not be swapped (its etcd sessions name it)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("", port))  # free on every interface: the internal services listen on all of them
    except OSError:
        s.close()
        return False
    held.append(s)
    return True
rng = random.SystemRandom()
for n in names:
    port = old.get(f"{n}_PORT")
    if port is None or not grab(port):
        while True:
            port = rng.randrange(20000, min(low, 32768))
            if grab(port):
                break
    out.append(f"{n}_PORT={port}")
open(path, "w").write("\n".join(out) + "\n")
PYEOF
    # shellcheck disable=SC1091
    . "$data/ports.env"
    printf '%s\n' "name: default" \
      "listen-peer-urls: http://127.0.0.1:$ETCD_PEER_PORT" \
      "initial-advertise-peer-urls: http://127.0.0.1:$ETCD_PEER_PORT" \
      "initial-cluster: default=http://127.0.0.1:$ETCD_PEER_PORT" \
      "listen-client-urls: http://127.0.0.1:$ETCD_PORT" \
      "advertise-client-urls: http://127.0.0.1:$ETCD_PORT" >"$data/embed_etcd.yaml"
    attempts=1
    [ "$unclean" = 1 ] && attempts=2
    for attempt in $(seq 1 "$attempts"); do
      limit=$timeout
      [ "$attempt" -lt "$attempts" ] && limit=$(( timeout < 90 ? timeout : 90 ))
      launch
      if wait_ready "$limit"; then
        break
      fi
      if [ "$attempt" -lt "$attempts" ]; then
        echo "milvus_server.sh: not ready after $limit s following an unclean stop; stopping it cleanly and starting again" >&2
        "$0" stop --port "$port" --data "$data" >/dev/null 2>&1 || true
        t0=$(date +%s)
        continue
      fi
      echo "milvus_server.sh: not ready after $limit s" >&2
      log_tail; "$0" stop --port "$port" --data "$data" >/dev/null 2>&1 || true
      exit 1
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
    if ! is_our_server "$pid"; then
      # the wrapper may be gone while its milvus binary lives on in the group: accept that case only
      # when a member of the group is a milvus binary started from this data dir
      if ! ps -eo pgid=,args= | awk -v g="$pid" -v d="$data" '$1 == g && index($0, d) {f = 1} END {exit !f}'; then
        echo "milvus_server.sh: pid $pid in $pidfile is not this script's server for $data; not signalling it" >&2
        exit 1
      fi
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
