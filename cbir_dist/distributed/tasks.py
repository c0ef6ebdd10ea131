"""Running independent cells (evaluation tasks) in this process or as Ray tasks, behind one small interface.

:mod:`.graph` owns the Ray Data graph of the index and query jobs; this module owns plain Ray tasks
with dependencies (a reconstruction shared by the feature cells of several backbones). Arguments
that are futures of earlier submissions are resolved before the function runs, by Ray or locally.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from ..errors import UsageError
from .connect import connect, disconnect

log = logging.getLogger(__name__)


class _Done:
    """A finished local computation (the local executor runs each submission at once)."""

    def __init__(self, value: Any):
        self.value = value


def _resolve(args, kwargs):
    return ([a.value if isinstance(a, _Done) else a for a in args],
            {k: (v.value if isinstance(v, _Done) else v) for k, v in kwargs.items()})


def _split(value, num_returns: int):
    if num_returns == 1:
        return _Done(value)
    if len(value) != num_returns:
        raise ValueError(f"expected {num_returns} return values, got {len(value)}")
    return [_Done(v) for v in value]


class _LocalPool:
    """One instance of an actor class in this process (the local executor's "actor pool")."""

    def __init__(self, cls, args, kwargs):
        self.instance = cls(*args, **kwargs)
        self.size = 1

    def submit(self, method: str, *args, num_returns: int = 1, **kwargs):
        args, kwargs = _resolve(args, kwargs)
        return _split(getattr(self.instance, method)(*args, **kwargs), num_returns)

    def shutdown(self) -> None:
        pass


class LocalExecutor:
    """Runs every submission immediately in this process; for tests and small jobs."""

    name = "local"

    def put(self, obj: Any) -> _Done:
        return _Done(obj)

    def submit(self, fn: Callable, *args, num_cpus: float = 1, num_returns: int = 1, **kwargs):
        args, kwargs = _resolve(args, kwargs)
        return _split(fn(*args, **kwargs), num_returns)

    def actor_pool(self, cls, *args, size: int = 1, num_cpus: float = 1, num_gpus: float = 0, **kwargs) -> _LocalPool:
        return _LocalPool(cls, args, kwargs)

    def resources(self) -> dict:
        return {}

    def wait_any(self, futures: Sequence[_Done]) -> tuple[list, list]:
        return list(futures[:1]), list(futures[1:])

    def get(self, future: _Done) -> Any:
        return future.value

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """Submits each call as a Ray task (``num_cpus`` each, retried if a worker dies).

    Connects as :func:`cbir_dist.distributed.connect.connect` says; ``num_cpus`` sizes a new
    local instance.
    """

    name = "ray"

    def __init__(self, *, num_cpus: int | None = None, max_retries: int = 2):
        import ray

        self._ray = ray
        self._started = connect(num_cpus=num_cpus)
        self.max_retries = max_retries
        self._remote: dict[Callable, Any] = {}

    def put(self, obj: Any):
        return self._ray.put(obj)

    def submit(self, fn: Callable, *args, num_cpus: float = 1, num_returns: int = 1, **kwargs):
        """A task (a list of ``num_returns`` futures when > 1: each part can be fetched or passed on alone)."""
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(fn)
        return remote.options(num_cpus=num_cpus, max_retries=self.max_retries,
                              num_returns=num_returns).remote(*args, **kwargs)

    def actor_pool(self, cls, *args, size: int = 1, num_cpus: float = 1, num_gpus: float = 0, **kwargs) -> "_RayPool":
        """``size`` actors of ``cls`` (constructed once each with ``args``), restarted if they die."""
        return _RayPool(self._ray, cls, args, kwargs, size=size, num_cpus=num_cpus, num_gpus=num_gpus,
                        max_retries=self.max_retries)

    def resources(self) -> dict:
        """The cluster's total resources (``CPU``, ``GPU``, ...)."""
        return dict(self._ray.cluster_resources())

    def wait_any(self, futures: Sequence) -> tuple[list, list]:
        done, pending = self._ray.wait(list(futures), num_returns=1)
        return done, pending

    def get(self, future) -> Any:
        return self._ray.get(future)

    def shutdown(self) -> None:
        if self._started:
            disconnect()


class _RayPool:
    """A fixed pool of Ray actors; each call goes to the actor with the fewest calls in flight."""

    def __init__(self, ray, cls, args, kwargs, *, size: int, num_cpus: float, num_gpus: float, max_retries: int):
        self._ray = ray
        options = dict(num_cpus=num_cpus, max_restarts=max_retries, max_task_retries=max_retries)
        if num_gpus:
            options["num_gpus"] = num_gpus
        remote = ray.remote(cls).options(**options)
        self.actors = [remote.remote(*args, **kwargs) for _ in range(max(1, int(size)))]
        self.size = len(self.actors)
        self._in_flight: list[list] = [[] for _ in self.actors]

    def submit(self, method: str, *args, num_returns: int = 1, **kwargs):
        for calls in self._in_flight:  # forget finished calls
            if calls:
                done, _ = self._ray.wait(calls, num_returns=len(calls), timeout=0)
                for ref in done:
                    calls.remove(ref)
        i = min(range(self.size), key=lambda j: len(self._in_flight[j]))
        refs = getattr(self.actors[i], method).options(num_returns=num_returns).remote(*args, **kwargs)
        self._in_flight[i].append(refs[0] if num_returns > 1 else refs)
        return refs

    def shutdown(self) -> None:
        for a in self.actors:
            self._ray.kill(a)


def make_executor(backend: str, **kwargs):
    """``"ray"`` or ``"local"``."""
    if backend == "ray":
        return RayExecutor(**kwargs)
    if backend == "local":
        return LocalExecutor()
    raise UsageError(f"backend must be 'ray' or 'local', got {backend!r}")
