"""The cores a job may use, and the cores the whole machine kept busy while it ran (``/proc/stat``).

:func:`cores_available` is the number of cores this process may run on (its CPU affinity: a
container's or ``taskset``'s limit counts). :class:`MachineCpu` reads the machine's busy jiffies
(user, nice, system, irq, softirq; steal apart) from ``/proc/stat`` when it starts and when it
stops, and divides the busy CPU seconds by the wall time: the cores kept busy. It counts **the
whole machine**, every process on it (the job's workers, a store or Ray running beside it, and
anything else that ran meanwhile), and only this machine (not a cluster's other nodes). Off
Linux, where ``/proc/stat`` does not exist, its figures are ``None``.

    with MachineCpu() as machine:
        ... the job ...
    machine.cores_busy  # 1.9 (of cores_available() == 2), or None off Linux
"""

from __future__ import annotations

import os
import time

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cores_available() -> int:
    """The cores this process may run on: its CPU affinity where the system has one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _proc_stat() -> tuple[int, int] | None:
    """(busy jiffies, steal jiffies) of the whole machine: user, nice, system, irq, softirq; steal.
    None where there is no ``/proc/stat`` (off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq, steal


class MachineCpu:
    """Busy cores of the whole machine between :meth:`start` and :meth:`stop` (or over a ``with``
    block); see the module docstring. After :meth:`stop`: ``wall_s``, and ``busy_s`` (CPU seconds of
    every process), ``steal_s`` and ``cores_busy`` (``busy_s / wall_s``), each ``None`` off Linux."""

    busy_s: float | None = None
    steal_s: float | None = None
    cores_busy: float | None = None
    wall_s: float = 0.0

    def start(self) -> "MachineCpu":
        self._t0, self._stat0 = time.monotonic(), _proc_stat()
        return self

    def stop(self) -> "MachineCpu":
        stat = _proc_stat()
        self.wall_s = time.monotonic() - self._t0
        if stat is not None and self._stat0 is not None:
            self.busy_s = (stat[0] - self._stat0[0]) / _HZ
            self.steal_s = (stat[1] - self._stat0[1]) / _HZ
            self.cores_busy = self.busy_s / self.wall_s if self.wall_s > 0 else 0.0
        return self

    def __enter__(self) -> "MachineCpu":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
