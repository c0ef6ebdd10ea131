"""Where a command's CPU goes: the whole machine's busy cores, and each process's CPU by role.

Per-stage timers measure only the time a stage ran; idle cores and the CPU of processes no timer
sees (Ray's raylet and GCS, Milvus, the driver between stages) show only from outside. Two views,
both from ``/proc``:

- **the machine** (:class:`~cbir_dist.io.cpu.MachineCpu`, the one the index and evaluate jobs
  report too): busy jiffies of ``/proc/stat`` (user, nice, system, irq, softirq; steal apart)
  before and after, divided by the wall time: the cores kept busy. Run with nothing else on the
  machine: it counts every process.
- **each process by role** (:class:`ProcessCpu`): a thread samples ``/proc/[pid]/stat`` of every
  process every ``interval`` seconds and keeps each one's CPU (utime + stime) since it was first
  seen, summed by role (:func:`role`: ``driver`` for the command's own pid, ``worker`` (Ray's, or the local backend's),
  ``raylet``, ``gcs``, ``ray other``, ``milvus``, ``other``). A process that lives less than one
  interval may be missed; the machine's figure is the complete one.

    with MachineCpu() as machine, ProcessCpu(driver_pid) as procs:
        ... run the command ...
    machine.cores_busy, procs.seconds  # {"driver": 41.2, "worker": 60.3, ...}
"""

from __future__ import annotations

import os
import threading

from cbir_dist.io.cpu import _HZ, MachineCpu, _proc_stat  # noqa: F401 - the machine's view lives in the package


def role(cmdline: str, pid: int, driver: int | None) -> str:
    """The role of a process in an index run, from its command line."""
    if pid == driver:
        return "driver"
    if "gcs_server" in cmdline:
        return "gcs"
    if "raylet" in cmdline:
        return "raylet"
    if cmdline.startswith("ray::") or "default_worker.py" in cmdline or "multiprocessing.spawn" in cmdline:
        return "worker"  # a Ray worker, or a local backend's worker process (--workers N)
    if "/ray/" in cmdline or "ray/_private" in cmdline or "dashboard" in cmdline:
        return "ray other"
    if "milvus" in cmdline:
        return "milvus"
    return "other"


def _read(pid: str) -> tuple[float, str] | None:
    """(CPU seconds, command line) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _HZ, cmd or stat[stat.index("(") + 1 : stat.rindex(")")]


class ProcessCpu:
    """CPU seconds by role of every process over a ``with`` block, sampled (see the module docstring).

    ``driver``: the pid of the command measured (its CPU is the ``driver`` role; may be set after
    entering, once the command started). Processes alive at the start count from their CPU then.
    """

    def __init__(self, driver: int | None = None, *, interval: float = 0.25):
        self.driver = driver
        self.interval = interval
        self._first: dict[tuple[str, float], float] = {}  # (pid, start time) -> CPU when first seen
        self._last: dict[tuple[str, float], tuple[float, str]] = {}
        self._stop = threading.Event()
        self._me = os.getpid()

    def _sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == self._me:
                continue
            got = _read(pid)
            if got is None:
                continue
            key = (pid, self._start_time(pid))
            self._first.setdefault(key, got[0] if self._baseline else 0.0)
            self._last[key] = (got[0], role(got[1], int(pid), self.driver))

    @staticmethod
    def _start_time(pid: str) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            return float(stat[stat.rindex(")") + 2 :].split()[19])
        except (OSError, IndexError, ValueError):
            return -1.0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "ProcessCpu":
        self._baseline = True
        self._sample()  # what runs already counts from now
        self._baseline = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds: dict[str, float] = {}
        for key, (cpu, r) in self._last.items():
            spent = cpu - self._first.get(key, 0.0)
            if spent > 0:
                self.seconds[r] = self.seconds.get(r, 0.0) + spent
        self.seconds = {r: round(s, 2) for r, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
