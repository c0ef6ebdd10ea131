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


class LocalExecutor:
    """Runs every submission immediately in this process; for tests and small jobs."""

    name = "local"

    def put(self, obj: Any) -> _Done:
        return _Done(obj)

    def submit(self, fn: Callable, *args, num_cpus: float = 1, **kwargs) -> _Done:
        args = [a.value if isinstance(a, _Done) else a for a in args]
        kwargs = {k: (v.value if isinstance(v, _Done) else v) for k, v in kwargs.items()}
        return _Done(fn(*args, **kwargs))

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

    def submit(self, fn: Callable, *args, num_cpus: float = 1, **kwargs):
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(fn)
        return remote.options(num_cpus=num_cpus, max_retries=self.max_retries).remote(*args, **kwargs)

    def wait_any(self, futures: Sequence) -> tuple[list, list]:
        done, pending = self._ray.wait(list(futures), num_returns=1)
        return done, pending

    def get(self, future) -> Any:
        return self._ray.get(future)

    def shutdown(self) -> None:
        if self._started:
            disconnect()


def make_executor(backend: str, **kwargs):
    """``"ray"`` or ``"local"``."""
    if backend == "ray":
        return RayExecutor(**kwargs)
    if backend == "local":
        return LocalExecutor()
    raise UsageError(f"backend must be 'ray' or 'local', got {backend!r}")
