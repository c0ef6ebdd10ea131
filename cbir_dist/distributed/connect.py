"""The one Ray connection policy of the package (index and query graphs, evaluation tasks, training).

Order: an existing connection in this process; ``$RAY_ADDRESS`` (a remote cluster, or the job's
cluster under ``ray job submit``); the cluster that ``ray start`` last recorded on this machine;
else a new local instance with this machine's CPUs. Deliberately not ``address="auto"``: that
also joins any other Ray instance it finds running here (another program's, a test's). A failed
start of a *local* instance is retried (seen on a loaded 2-core machine right after another
instance shut down: the new head's processes did not come up in time).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from ..errors import PipelineError

log = logging.getLogger(__name__)

LOCAL_START_ATTEMPTS = 3
_INIT_KWARGS = {"include_dashboard": False, "log_to_driver": True}


def _start_failed(exc: BaseException) -> bool:
    """A local instance that did not come up (Ray raises RuntimeError, or a bare Exception "timed out
    during startup" on a loaded machine); an unreachable cluster or a bad argument is not retried."""
    return not isinstance(exc, (ConnectionError, ValueError, TypeError))


def _init(ray, *, attempts: int = LOCAL_START_ATTEMPTS, wait_s: float = 2.0, **kwargs) -> None:
    """``ray.init``, retried when a local start fails, never when a cluster is unreachable."""
    from tenacity import (
        before_sleep_log,
        retry,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
    )

    @retry(retry=retry_if_exception(_start_failed), stop=stop_after_attempt(attempts),
           wait=wait_exponential(multiplier=wait_s, max=4 * wait_s), reraise=True,
           before_sleep=before_sleep_log(log, logging.WARNING))
    def init():
        before = _child_pids()
        try:
            with _without_secrets():
                ray.init(**_INIT_KWARGS, **kwargs)
        except Exception:
            ray.shutdown()
            _stop_new_children(before)  # a head that failed its start leaves its processes behind
            raise

    init()


#: environment variables Ray's processes must not inherit: they hold credentials, and only this
#: process (the single writer) talks to the store
SECRET_ENV = ("MILVUS_TOKEN",)


@contextlib.contextmanager
def _without_secrets() -> Iterator[None]:
    """Start a local Ray instance without the store's token in its environment: its raylet, and every
    worker the raylet starts, inherit this process's environment as it is when ``ray.init`` runs."""
    saved = {k: os.environ.pop(k) for k in SECRET_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _child_pids() -> set[int]:
    """This process's descendants, from ``/proc`` (Linux; elsewhere none are known)."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[0] != b"Z":  # a zombie is gone already, only not yet reaped
            parents[int(name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _stop_new_children(before: set[int], grace_s: float = 5.0) -> None:
    """Stop the processes this process started since ``before`` (a failed Ray start's GCS and raylet)."""
    import signal
    import time

    new = _child_pids() - before
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in new:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and (_child_pids() & new):
            time.sleep(0.1)
        new &= _child_pids()
        if not new:
            break
    if new:
        log.warning("could not stop %d process(es) left by a Ray start that failed", len(new))


def connect(*, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; True when this call connected (and should disconnect).

    ``num_cpus`` applies only when a new local instance is started.
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, **_INIT_KWARGS)
        else:
            local = {} if num_cpus is None else {"num_cpus": num_cpus}
            try:  # the cluster `ray start` recorded here, else a new local instance
                _init(ray, **local)
            except ConnectionError as exc:
                log.warning("the Ray cluster recorded on this machine is unreachable (%s); starting a local one", exc)
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own instance, on this machine only
                _init(ray, address="local", **local)
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions for a head that did not start
        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "a local Ray instance"
        raise PipelineError(f"could not connect to {where}: {exc}. Check that the cluster is up (`ray status`), "
                            "or unset RAY_ADDRESS to run on a local instance") from exc
    log.info("Ray: %s", resources())
    return True


def resources() -> dict[str, float]:
    """The cluster's total resources (CPU, GPU, memory, custom), without the per-node entries."""
    import ray

    return {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}


def disconnect() -> None:
    import ray

    ray.shutdown()


_DEFER_ON_ERROR = False
_deferred = False


def defer_shutdown_on_error(defer: bool = True) -> None:
    """When a block of :func:`session` fails, leave Ray running for the process's exit to stop.

    For command-line processes that exit right after a failure: shutting Ray down while the failed
    job's background threads still reach into it can end the process from Ray's own core worker
    ("The core worker has already been shutdown ... The process will exit") before the job's error
    is printed. Ray's exit hook shuts the instance down once the process is done.
    """
    global _DEFER_ON_ERROR
    _DEFER_ON_ERROR = bool(defer)


@contextlib.contextmanager
def session(*, num_cpus: int | None = None) -> Iterator[None]:
    """Connected to Ray inside the block; disconnects at the end when it connected."""
    started = connect(num_cpus=num_cpus)
    try:
        yield
    except BaseException:
        global _deferred
        if started and _DEFER_ON_ERROR:
            started, _deferred = False, True
        raise
    finally:
        if started:
            disconnect()


def shutdown_deferred() -> None:
    """Shut down the Ray instance a failed :func:`session` left running (see :func:`defer_shutdown_on_error`)."""
    global _deferred
    if _deferred:
        _deferred = False
        disconnect()


def node_id() -> str:
    """The id of the Ray node running the caller (a task or actor)."""
    import ray

    return ray.get_runtime_context().get_node_id()
