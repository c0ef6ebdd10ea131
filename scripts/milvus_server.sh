#!/usr/bin/env bash
# A real Milvus standalone server (the `milvus` 2.3.5 PyPI package, "embedded Milvus") on 127.0.0.1,
# for the server-URI tests and for trying `--db http://...` without Docker.
# It lives in its own venv (.milvus-venv): the package bundles the milvus binary and its libraries
# and must not share an environment with the project's pymilvus/milvus-lite.
#
# Usage: bash scripts/milvus_server.sh install
#        bash scripts/milvus_server.sh start   [--port P] [--data DIR | --fresh] [--timeout S] [--auth | --no-auth]
#        bash scripts/milvus_server.sh restart [--port P] [--data DIR] [--timeout S] [--auth | --no-auth]
#        bash scripts/milvus_server.sh status  [--port P] [--data DIR]
#        bash scripts/milvus_server.sh stop    [--port P] [--data DIR]
# `start` prints the URI to use (http://127.0.0.1:P) on its last line. Without --data it serves the
# data of the last server this script made on port P (it says so on stderr) and makes a new private
# folder (mktemp -d, mode 700) only when there is none or with --fresh; that folder is remembered per
# port in ${XDG_STATE_HOME:-~/.local/state}/cbir_dist/ (only when a new one is made) for the other
# commands. `start` on a data dir whose `milvus` process died cleans up what is left and starts again
# on the same data; `restart` stops what is left of the server (SIGINT, then SIGKILL) and starts it
# again on the same data and port; `status` exits 0 only when the milvus process is alive and serves
# (its port accepts connections and /healthz says OK). The pid file is DIR/server.pid, the logs are
# under DIR/logs; `stop` signals a pid only after checking it is this script's server for DIR.
# --auth turns on Milvus authentication: connect with token root:Milvus (Milvus's default user),
# passed as MILVUS_TOKEN=root:Milvus or --token-file FILE, never on a command line. A data dir last
# served with --auth keeps it on a later start/restart unless --no-auth is given.
set -euo pipefail
caller_pwd=$(pwd)
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${CBIR_MILVUS_VENV:-$ROOT/.milvus-venv}"
PY=${PYTHON:-python3.11}
MILVUS_VERSION=2.3.5

die() { echo "milvus_server.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2; }

cmd=${1:-}
[ $# -gt 0 ] && shift
port=19530
data=""
timeout=240
auth_flag=""  # "", on or off
fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --auth) auth_flag=on; shift ;;
    --no-auth) auth_flag=off; shift ;;
    --fresh) fresh=1; shift ;;
    *) echo "milvus_server.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$fresh" = 1 ]; then
  [ "$cmd" = start ] || { echo "milvus_server.sh: --fresh goes with start only" >&2; exit 2; }
  [ -z "$data" ] || { echo "milvus_server.sh: --fresh makes a new data dir; it does not go with --data" >&2; exit 2; }
fi

state_dir="${XDG_STATE_HOME:-$HOME/.local/state}/cbir_dist"
pointer="$state_dir/milvus-$port.data"
last=""  # the data dir of the last server this script made for this port
[ -f "$pointer" ] && last=$(head -n 1 "$pointer")
new_store=0
if [ -n "$data" ]; then
  # absolute and normalized as the milvus-server wrapper makes it (os.path.abspath): the server's
  # processes are found by the paths in their command lines; a relative DIR is the caller's
  case "$data" in /*) ;; *) data="$caller_pwd/$data" ;; esac
  data=$(realpath -m -s -- "$data")
elif [ "$cmd" = start ] && [ "$fresh" = 0 ] && [ -n "$last" ] && [ -d "$last" ]; then
  data=$last
  echo "milvus_server.sh: reusing the data of the last server on port $port: $data; pass --data DIR or --fresh for a new one" >&2
elif [ "$cmd" = start ]; then
  if [ "$fresh" = 0 ] && [ -n "$last" ]; then
    echo "milvus_server.sh: the data dir of the last server on port $port ($last) is gone; making a new one" >&2
  fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/cbir-milvus-$port.XXXXXX")  # private: mode 700, unpredictable name
  new_store=1  # the pointer is written (just before the launch) only for this new store
elif [ -n "$last" ]; then
  data=$last
else
  data="/nonexistent/cbir-milvus-$port"  # nothing this script started: status/stop report "not running"
fi
pidfile="$data/server.pid"

log_tail() {
  for f in "$data/server.out" "$data/logs/milvus-stderr.log" "$data/logs/milvus-stdout.log"; do
    [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 40 "$f" >&2; }
  done
  return 0
}

group_alive() {  # group_alive PGID: any live (non-zombie) process left in that process group?
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

group_has_data() {  # group_has_data PGID: a member of the group names $data on its command line
  ps -ww -eo pgid=,args= | D="$data" awk -v g="$1" '$1 == g && index($0, ENVIRON["D"]) {f = 1} END {exit !f}'
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
  # Prints the wrapper's pid (the process-group leader) when it is alive. The wrapper is not the
  # server: see server_pids for that.
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && is_our_server "$pid" && { echo "$pid"; return 0; }
  return 1
}

server_pids() {
  # The live `milvus` binaries of $data: the server itself. The wrapper runs DIR/bin/milvus (it
  # unpacks the binary there) as `DIR/bin/milvus run standalone`; a dead one is a zombie "[milvus]".
  ps -ww -eo pid=,stat=,args= | SRV="$data/bin/milvus run standalone" awk '{
    pid = $1; st = $2; sub(/^[ \t]*[0-9]+[ \t]+[^ \t]+[ \t]+/, "")
    if ($0 == ENVIRON["SRV"] && st !~ /^Z/) print pid }'
}

wrapper_spawned() {  # wrapper_spawned PID: the wrapper got as far as starting its milvus binary
  # (it unpacks and configures first, for seconds): a zombie binary, the log it opens right before
  # starting the binary newer than the pid file, or its banner
  ps -eo ppid=,stat=,comm= | awk -v w="$1" '$1 == w && $2 ~ /^Z/ && $3 == "milvus" {f = 1} END {exit !f}' \
    && return 0
  [ -f "$data/logs/milvus-stdout.log" ] && ! [ "$pidfile" -nt "$data/logs/milvus-stdout.log" ] && return 0
  grep -q "Ctrl+C to exit" "$data/server.out" 2>/dev/null
}

metrics_port() {  # metrics_port SPID: the port of the server's /healthz (its METRICS_PORT)
  local p=""
  p=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n 's/^METRICS_PORT=//p' | head -n 1) || true
  if [ -z "$p" ] && [ -f "$data/ports.env" ]; then
    p=$(sed -n 's/^METRICS_PORT=//p' "$data/ports.env")
  fi
  echo "$p"
}

probe() {
  # probe PORT [METRICS_PORT]: 0 when the proxy port accepts TCP connections and /healthz on the
  # metrics port answers OK; 1 when the port is closed; 2 when the health check fails
  "$VENV/bin/python" - "$1" "${2:-}" <<'EOF'
import socket, sys, urllib.request
s = socket.socket()
s.settimeout(1.0)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
if sys.argv[2]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/healthz", timeout=5) as resp:
            sys.exit(0 if b"OK" in resp.read() else 2)
    except Exception:
        sys.exit(2)
EOF
}

port_open() { probe "$1"; }

serving() {  # serving SPID: that milvus process answers on $port
  probe "$port" "$(metrics_port "$1")"
}

_stop_left() {  # _stop_left PGID [PID...]: anything of these still alive (not a zombie)?
  local g=$1 p st
  shift
  [ -n "$g" ] && group_alive "$g" && return 0
  for p in "$@"; do
    st=$(ps -o stat= -p "$p" 2>/dev/null || true)
    case "$st" in "" | *Z*) ;; *) return 0 ;; esac
  done
  return 1
}

stop_server() {
  # Stops whatever is left of the server of $data: the wrapper's process group (SIGINT, which the
  # wrapper handles by stopping the binary; SIGCONT in case it is stopped; SIGKILL after 10 s) and
  # any milvus binary of $data outside it. Sets stop_forced=0 only when a live server stopped on
  # SIGINT (a clean stop: Milvus removes its etcd sessions); 1 otherwise.
  local pid spids singles="" p g members=""
  stop_forced=1
  pid=$(cat "$pidfile" 2>/dev/null || true)
  spids=$(server_pids)
  if [ -n "$pid" ] && group_alive "$pid"; then
    if ! is_our_server "$pid" && ! group_has_data "$pid"; then
      # the wrapper may be gone while its milvus binary lives on in the group: that case has a
      # member started from this data dir; anything else is not ours
      echo "milvus_server.sh: pid $pid in $pidfile is not this script's server for $data (a stale pid file); not signalling it" >&2
      rm -f "$pidfile"
      pid=""
    fi
  else
    pid=""
  fi
  for p in $spids; do
    g=$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ') || true
    [ -n "$pid" ] && [ "$g" = "$pid" ] || singles="$singles $p"
  done
  if [ -z "$pid" ] && [ -z "$singles" ]; then
    rm -f "$pidfile"
    echo "not running"
    return 0
  fi
  [ -n "$pid" ] && members=$(ps -eo pid=,pgid= | awk -v g="$pid" '$2 == g {print $1}')
  members="$members $singles"
  if [ -n "$pid" ]; then
    kill -INT -- "-$pid" 2>/dev/null || true
    kill -CONT -- "-$pid" 2>/dev/null || true
  fi
  for p in $singles; do kill -INT "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
  for _ in $(seq 1 20); do
    _stop_left "$pid" $singles || break
    sleep 0.5
  done
  if _stop_left "$pid" $singles; then
    [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    for p in $singles; do kill -KILL "$p" 2>/dev/null || true; done
    sleep 0.5
  elif [ -n "$spids" ]; then
    stop_forced=0
  fi
  rm -f "$pidfile"
  # The milvus binary leaves a server_id_<pid> file in /tmp/milvus whatever its data dir is.
  for p in $members; do rm -f "/tmp/milvus/server_id_$p"; done
  rmdir /tmp/milvus 2>/dev/null || true
  p="$pid $singles"
  p=$(echo $p)  # one space between the pids
  echo "stopped (pid $p)"
}

# The wrapper: the package's milvus-server with two changes. It exits as soon as its milvus binary
# does (the stock one waits forever on a dead binary and keeps the slot: `start` on the data dir
# answered "already running"), and its /healthz port starts from $CBIR_MILVUS_METRICS_PORT (the
# stock one takes the first free port from 9091, which servers side by side race for).
# shellcheck disable=SC2016
WRAPPER_PY='import os, sys, milvus; sys.argv = sys.argv[1:]; milvus.MilvusServer.running = property(lambda s: s.server_proc is not None and s.server_proc.poll() is None); p = os.environ.get("CBIR_MILVUS_METRICS_PORT", ""); milvus.default_server.webservice_port = int(p) if p.isdigit() else 9091; sys.exit(milvus.main())'

launch() {
  # setsid: the python wrapper and the milvus binary it spawns share one new process group,
  # so `stop` can signal both (the wrapper handles only SIGINT and would orphan the binary).
  # Every port goes through --extra-config (a key of the generated milvus.yaml), not the wrapper's
  # own port flags: the wrapper test-binds those without SO_REUSEADDR and, when that fails (a killed
  # server's connections still in TIME_WAIT, up to a minute), moves the server to another port or
  # gives up; milvus itself binds them with SO_REUSEADDR, so a restart on the same ports works.
  # ETCD_CONFIG_PATH: Milvus reads environment overrides of its config keys (etcd.config.path).
  ETCD_CONFIG_PATH="$data/embed_etcd.yaml" PYTHONUNBUFFERED=1 CBIR_MILVUS_METRICS_PORT="$METRICS_PORT" \
    setsid "$VENV/bin/python" -c "$WRAPPER_PY" milvus-server --data "$data" \
    --extra-config "proxy.port=$port" --extra-config "etcd.endpoints=localhost:$ETCD_PORT" \
    --extra-config "rootCoord.port=$ROOT_COORD_PORT" --extra-config "proxy.internalPort=$PROXY_INTERNAL_PORT" \
    --extra-config "queryCoord.port=$QUERY_COORD_PORT" --extra-config "queryNode.port=$QUERY_NODE_PORT" \
    --extra-config "indexNode.port=$INDEX_NODE_PORT" --extra-config "dataCoord.port=$DATA_COORD_PORT" \
    --extra-config "dataNode.port=$DATA_NODE_PORT" \
    --extra-config "common.session.ttl=${CBIR_MILVUS_SESSION_TTL:-10}" --extra-config "common.session.retryTimes=100" \
    "${auth[@]}" >"$data/server.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_ready() {  # wait_ready SECONDS: 0 once ready; 1 on timeout; 2 if the server died
  # Ready = the proxy accepts TCP connections and the wrapper has passed its /healthz wait
  # (it prints its banner after that; PYTHONUNBUFFERED above makes the banner reach the file).
  local start
  start=$(date +%s)
  while :; do
    # during start-up the pid may still be setsid's: liveness only (running_pid also checks the cmdline);
    # the wrapper exits when its milvus binary does
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      return 2
    fi
    if port_open "$port" && grep -q "Ctrl+C to exit" "$data/server.out" 2>/dev/null; then
      return 0
    fi
    [ $(( $(date +%s) - start )) -ge "$1" ] && return 1
    sleep 1
  done
}

old_pointer=""
restore_pointer() {  # a start that made a new store but failed: the pointer names the old one again
  echo "milvus_server.sh: the new data dir $data is left for its logs; the pointer of port $port is left as it was" >&2
  if [ -n "$old_pointer" ]; then
    (umask 077 && echo "$old_pointer" >"$pointer")
  else
    rm -f "$pointer"
  fi
}

unclean=0  # the last server of $data was not stopped cleanly (see below); restart sets it too

do_start() {
  [ -x "$VENV/bin/milvus-server" ] || die "$VENV is missing: run 'bash scripts/milvus_server.sh install' first"
  [ -f "$pidfile" ] && unclean=1
  # A server of this data dir that is alive: serving (nothing to do) or starting (wait for it). The
  # wrapper alone is not the server: it may be unpacking the binary (starting) or outlive it (dead).
  local t_wait spids wpid said=0 n
  t_wait=$(date +%s)
  while :; do
    spids=$(server_pids)
    if [ -n "$spids" ]; then
      for n in $spids; do
        if serving "$n"; then
          echo "already running (pid $(cat "$pidfile" 2>/dev/null || echo "?"), server pid $n, data $data)"
          echo "http://127.0.0.1:$port"
          exit 0
        fi
      done
    elif ! { wpid=$(running_pid) && ! wrapper_spawned "$wpid"; }; then
      break
    fi
    if [ $(( $(date +%s) - t_wait )) -ge "$timeout" ]; then
      die "the server of $data (pid $(cat "$pidfile" 2>/dev/null || echo "?")) is alive but not serving on port $port after $timeout s: see 'status', or 'restart' it"
    fi
    [ "$said" = 0 ] && { echo "milvus_server.sh: a server of $data is starting; waiting for it" >&2; said=1; }
    sleep 1
  done
  # What is left of a server whose milvus process died: its wrapper (it keeps the pid file's slot)
  # or the rest of its process group. Stopped here, then started again on the same data.
  wpid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$wpid" ] && group_alive "$wpid" && { is_our_server "$wpid" || group_has_data "$wpid"; }; then
    echo "milvus_server.sh: the milvus server process of $data is dead but its wrapper (pid $wpid) is alive; stopping what is left and starting again on the same data" >&2
    stop_server >&2
    unclean=1
  fi
  if port_open "$port"; then
    die "port $port on 127.0.0.1 is already in use; pick another with --port"
  fi
  mkdir -p "$data"
  chmod 700 "$data"
  if [ "$new_store" = 1 ]; then
    # the pointer names the new store while it starts (status/stop find it); restored if it fails
    old_pointer=$last
    mkdir -p "$state_dir" && chmod 700 "$state_dir"
    (umask 077 && echo "$data" >"$pointer")
    trap restore_pointer EXIT
  fi
  # Authentication: as asked, else as the data dir's last server had it (a restart after a crash
  # must not come back open).
  local auth_on=0
  case "$auth_flag" in
    on) auth_on=1 ;;
    off) auth_on=0 ;;
    *)
      if [ "$(sed -n 's/^auth=//p' "$data/server.conf" 2>/dev/null)" = 1 ]; then
        auth_on=1
        echo "milvus_server.sh: authentication stays on, as the last server of $data had it (--no-auth turns it off)" >&2
      fi ;;
  esac
  auth=()
  [ "$auth_on" = 1 ] && auth=(--authorization-enabled true)
  echo "auth=$auth_on" >"$data/server.conf"
  t0=$(date +%s)
  # A server killed without `stop` leaves its components' etcd sessions behind (etcd renews their
  # leases when it restarts), and components that register before they expire can wedge on
  # "node not match". A short session TTL (10 s instead of 30) shortens that window; a first start
  # after an unclean stop that is not ready in time (or dies) is stopped cleanly (which removes the
  # sessions) and started once more.
  rm -f "$pidfile"
  # Every port the server listens on is its own, so several servers run side by side (tests, the
  # fault-injection restart): the wrapper would otherwise start etcd on 2379/2380, /healthz on
  # 9091 and every internal service on a fixed default. They are drawn below the kernel's ephemeral
  # range (where any outgoing connection could take a port while the server is down) and kept in
  # ports.env, so a restart on the same folder comes back on the same ports (one that got taken is
  # drawn anew).
  "$VENV/bin/python" - "$data/ports.env" <<'PYEOF'
import os, random, socket, sys
path = sys.argv[1]
names = ["ETCD", "ETCD_PEER", "ROOT_COORD", "PROXY_INTERNAL", "QUERY_COORD", "QUERY_NODE", "INDEX_NODE",
         "DATA_COORD", "DATA_NODE", "METRICS"]
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
  local attempts=1 attempt limit rc
  [ "$unclean" = 1 ] && attempts=2
  for attempt in $(seq 1 "$attempts"); do
    limit=$timeout
    [ "$attempt" -lt "$attempts" ] && limit=$(( timeout < 90 ? timeout : 90 ))
    launch
    rc=0
    wait_ready "$limit" || rc=$?
    [ "$rc" = 0 ] && break
    if [ "$attempt" -lt "$attempts" ]; then
      if [ "$rc" = 2 ]; then
        echo "milvus_server.sh: the server exited during start-up following an unclean stop; starting again" >&2
      else
        echo "milvus_server.sh: not ready after $limit s following an unclean stop; stopping it cleanly and starting again" >&2
      fi
      stop_server >/dev/null 2>&1 || true
      t0=$(date +%s)
      continue
    fi
    if [ "$rc" = 2 ]; then
      echo "milvus_server.sh: the server exited during start-up" >&2
    else
      echo "milvus_server.sh: not ready after $limit s" >&2
    fi
    log_tail; stop_server >/dev/null 2>&1 || true
    exit 1
  done
  trap - EXIT
  echo "milvus $MILVUS_VERSION started (pid $(cat "$pidfile"), server pid $(server_pids | head -n 1), data $data, $(( $(date +%s) - t0 )) s)"
  echo "http://127.0.0.1:$port"
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
    do_start
    ;;

  restart)
    # Stop whatever is left of the server of the data dir (gracefully, then SIGKILL of its group),
    # then start it again on the same data dir and port.
    case "$data" in
      /nonexistent/*) die "nothing to restart on port $port: no data dir remembered for it (pass --data DIR, or use start)" ;;
    esac
    [ -d "$data" ] || die "nothing to restart: no data dir $data (use start)"
    [ -f "$pidfile" ] && unclean=1
    stop_server
    [ "$stop_forced" = 0 ] && unclean=0
    do_start
    ;;

  status)
    # The server is the milvus process, not its wrapper: running = that process alive and answering
    # on the port (TCP connect) and on /healthz.
    spids=$(server_pids)
    wpid=$(running_pid || true)
    if [ -n "$spids" ]; then
      for spid in $spids; do
        mport=$(metrics_port "$spid")
        rc=0
        probe "$port" "$mport" || rc=$?
        if [ "$rc" = 0 ]; then
          echo "running (pid ${wpid:-?}, server pid $spid, data $data): http://127.0.0.1:$port"
          exit 0
        fi
      done
      if [ "$rc" = 1 ]; then
        echo "starting or unhealthy (server pid $spid, data $data; port $port closed)"
      else
        echo "starting or unhealthy (server pid $spid, data $data; /healthz on port ${mport:-?} not OK)"
      fi
      exit 1
    elif [ -n "$wpid" ] && ! wrapper_spawned "$wpid"; then
      echo "starting (pid $wpid, data $data; the milvus server process is not started yet)"
      exit 1
    elif [ -n "$wpid" ]; then
      echo "not running (the milvus server process of $data is dead; its wrapper, pid $wpid, is left: 'start' or 'restart' cleans it up)"
      exit 3
    else
      echo "not running (no milvus server process for $data)"; exit 3
    fi
    ;;

  stop)
    stop_server
    ;;

  *)
    usage
    ;;
esac
