"""A real Milvus server for tests: the one helper the suite uses to start, stop, kill and restart one.

The server is the ``milvus`` 2.3.5 PyPI package's standalone Milvus, run by
``scripts/milvus_server.sh`` from its own venv (``$CBIR_MILVUS_VENV``, default ``.milvus-venv``),
on a free 127.0.0.1 port, with its own data directory and (by default) authentication on::

    server = MilvusServer().start()          # or: with MilvusServer() as server: ...
    VectorStore(server.uri, "images", token=server.token)
    server.kill_hard()                       # SIGKILL of the server's process group, data dir kept
    server.kill_server_process_only()        # SIGKILL of the `milvus` process alone (the wrapper follows it)
    server.restart()                         # the same port and data dir: rows flushed before survive
    server.status()                          # `milvus_server.sh status`: returncode 0 only when it serves
    server.stop()                            # SIGINT, then SIGKILL what is left; cleanup() also removes the data

``tests/conftest.py`` starts one for the whole session (the ``milvus_server`` fixture); a test that
kills or restarts a server should start its own, so the others keep theirs. ``available()`` says
whether the venv is installed (the fixture skips with :data:`SKIP_REASON` otherwise).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "milvus_server.sh"
DEFAULT_TOKEN = "root:Milvus"  # Milvus' built-in user, valid once authentication is on
START_TIMEOUT_S = 240
# A restart retries a failed start this long (a port of the previous server not released yet).
RESTART_PORT_WAIT_S = 90


def venv() -> Path:
    """The server venv, as ``scripts/milvus_server.sh`` reads it."""
    return Path(os.environ.get("CBIR_MILVUS_VENV") or REPO / ".milvus-venv")


def available() -> bool:
    return (venv() / "bin" / "milvus-server").exists()


SKIP_REASON = (f"{venv()} is absent: run `bash scripts/milvus_server.sh install` "
               "(or set CBIR_MILVUS_URI to a running Milvus server)")


def free_port() -> int:
    """A TCP port nobody listens on now, below the kernel's ephemeral range (from 32768 here), so no
    outgoing connection can take it while a killed server is down."""
    import random

    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return port
            except OSError:
                continue


def _group_alive(pgid: int) -> bool:
    """Any live, non-zombie process left in the process group ``pgid``?"""
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    return any(int(g) == pgid and not st.startswith("Z")
               for g, st in (line.split() for line in out.splitlines() if line.strip()))


def _server_pids(data_dir: Path) -> list[int]:
    """The live ``milvus`` binaries serving ``data_dir``: the milvus-server wrapper runs the binary it
    unpacked into the data dir, as ``DATA/bin/milvus run standalone`` (a dead one is a zombie with no
    command line)."""
    want = [str(data_dir / "bin" / "milvus").encode(), b"run", b"standalone"]
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "cmdline").read_bytes().split(b"\0")[:-1] == want:
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


class MilvusServer:
    """One Milvus standalone server on ``127.0.0.1:port`` with a private data directory.

    ``data_dir`` defaults to a new temporary directory (removed by :meth:`cleanup`); ``auth`` turns
    on authentication, so :attr:`token` is ``root:Milvus`` (``None`` without auth). ``env`` is added
    to the environment of the script's runs (e.g. a private ``XDG_STATE_HOME``).
    """

    def __init__(self, *, port: int | None = None, data_dir: str | Path | None = None, auth: bool = True,
                 env: dict[str, str] | None = None):
        self.port = port or free_port()
        self._own_data = data_dir is None
        # absolute, as the script makes it: the server's processes are found by this path
        self.data_dir = Path(os.path.abspath(data_dir or tempfile.mkdtemp(prefix="cbir-milvus-test-")))
        self.auth = auth
        self.env = dict(env or {})
        self.started_s: float | None = None  # seconds the last start took
        self.failed_starts: list[str] = []  # why the restarts' failed attempts failed

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str | None:
        return DEFAULT_TOKEN if self.auth else None

    @property
    def pid(self) -> int | None:
        """The pid (= process group) of the running server's wrapper, from its pid file."""
        try:
            return int((self.data_dir / "server.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def server_pid(self) -> int | None:
        """The pid of the live ``milvus`` binary (the server itself, a child of the wrapper), if any."""
        pids = _server_pids(self.data_dir)
        return pids[0] if pids else None

    def alive(self) -> bool:
        """Anything of the server left (its process group): see :meth:`status` for whether it serves."""
        pid = self.pid
        return pid is not None and _group_alive(pid)

    def write_token_file(self, path: str | Path) -> Path:
        """Write :attr:`token` to ``path`` (mode 0600), as ``--token-file`` reads it."""
        path = Path(path)
        path.write_text((self.token or "") + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    # --- lifecycle ---------------------------------------------------------------------------------

    def script(self, cmd: str, *extra: str, timeout: float) -> subprocess.CompletedProcess:
        """Run ``milvus_server.sh CMD --port P --data DIR EXTRA...`` (output captured, never raises on its status)."""
        return subprocess.run(["bash", str(SCRIPT), cmd, "--port", str(self.port), "--data", str(self.data_dir),
                               *extra], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env} if self.env else None)

    def status(self) -> subprocess.CompletedProcess:
        """``milvus_server.sh status``: returncode 0 only when the milvus process is alive and serving."""
        return self.script("status", timeout=60)

    def start(self, timeout: float = START_TIMEOUT_S) -> MilvusServer:
        """Start the server and wait until it serves; raises RuntimeError with the logs' tails if it does not."""
        if not available():
            raise RuntimeError(SKIP_REASON)
        t0 = time.monotonic()
        proc = self.script("start", "--auth" if self.auth else "--no-auth", "--timeout", str(int(timeout)),
                            timeout=timeout + 60)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or lines[-1] != self.uri:
            raise RuntimeError(f"milvus_server.sh start on port {self.port} failed (rc {proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}")
        self.started_s = round(time.monotonic() - t0, 1)
        return self

    def stop(self) -> None:
        """Stop the server (SIGINT to its process group, SIGKILL after 10 s); the data directory stays."""
        self.script("stop", timeout=90)

    def kill_hard(self) -> None:
        """SIGKILL the server's whole process group (the wrapper and the milvus binary) at once: a crash.

        Nothing gets to flush or shut down; the data directory is left as the crash left it.
        """
        pid = self.pid
        if pid is None or not _group_alive(pid):
            raise RuntimeError(f"no running server in {self.data_dir} to kill")
        members = [int(p) for p, g in (line.split() for line in subprocess.run(
            ["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout.splitlines() if line.strip())
            if int(g) == pid]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _group_alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process group {pid} survived SIGKILL for 30 s")
            time.sleep(0.2)
        # the pid file stays, as after a real crash (the script's next start sees an unclean stop);
        # the binary's id files in /tmp/milvus would pile up, so those go
        for p in members:
            Path(f"/tmp/milvus/server_id_{p}").unlink(missing_ok=True)

    def kill_server_process_only(self) -> int:
        """SIGKILL the ``milvus`` binary alone (not its wrapper, not the process group): the server dies.

        The wrapper is left to notice (the script's wrapper exits when its binary does; the stock one
        would keep the slot). Returns the killed pid once it is gone.
        """
        pid = self.server_pid
        if pid is None:
            raise RuntimeError(f"no milvus server process of {self.data_dir} to kill")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid in _server_pids(self.data_dir):
            if time.monotonic() > deadline:
                raise RuntimeError(f"milvus process {pid} survived SIGKILL for 30 s")
            time.sleep(0.1)
        Path(f"/tmp/milvus/server_id_{pid}").unlink(missing_ok=True)
        return pid

    def restart(self, timeout: float = START_TIMEOUT_S) -> MilvusServer:
        """Start again on the same port and data directory (after :meth:`stop` or :meth:`kill_hard`).

        Takes ~10 s on 2 cores (the first request after it then waits ~20 s while Milvus reloads
        the collection). A failed start is retried for up to :data:`RESTART_PORT_WAIT_S`; the
        reasons are kept in :attr:`failed_starts`.
        """
        if self.alive():
            self.stop()
        deadline = time.monotonic() + RESTART_PORT_WAIT_S
        while True:
            try:
                return self.start(timeout)
            except RuntimeError as exc:
                self.failed_starts.append(str(exc))
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

    def cleanup(self) -> None:
        """Stop the server and remove its data directory when this object created it."""
        try:
            self.stop()
        finally:
            if self._own_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"MilvusServer({self.uri}, data_dir={str(self.data_dir)!r}, auth={self.auth})"


class ExternalServer:
    """A server the suite did not start (``$CBIR_MILVUS_URI``, ``$CBIR_MILVUS_TOKEN``): no stop, kill or restart."""

    def __init__(self, uri: str, token: str | None):
        self.uri, self.token = uri, token

    def write_token_file(self, path: str | Path) -> Path:
        return MilvusServer.write_token_file(self, path)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"ExternalServer({self.uri})"
