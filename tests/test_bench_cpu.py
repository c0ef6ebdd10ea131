"""benchmarks/cpu.py: the cores-busy and CPU-by-role figures of the benchmarks come from real /proc readings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"


def _cpu():
    spec = importlib.util.spec_from_file_location("bench_cpu", REPO / "benchmarks" / "cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("cmdline, want", [
    ("/usr/bin/python -m cbir_dist.cli index x", "driver"),
    (".../ray/core/src/ray/gcs/gcs_server --log_dir=...", "gcs"),
    (".../ray/core/src/ray/raylet/raylet --raylet_socket_name=...", "raylet"),
    ("ray::IDLE", "worker"),
    ("python .../ray/_private/workers/default_worker.py --node-ip-address=...", "worker"),
    ("python -u .../ray/dashboard/agent.py", "ray other"),
    ("python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7) --multiprocessing-fork",
     "worker"),
    ("/tmp/m/bin/milvus run standalone", "milvus"),
    ("bash", "other"),
])
def test_roles(cmdline, want):
    assert _cpu().role(cmdline, 7 if want == "driver" else 8, 7) == want


def test_a_child_burning_cpu_is_counted_as_the_driver_and_by_the_machine():
    cpu = _cpu()
    with cpu.MachineCpu() as machine, cpu.ProcessCpu(interval=0.05) as procs:
        p = subprocess.Popen([sys.executable, "-c", BURN + "time.sleep(0.3)\n"])
        procs.driver = p.pid
        p.wait()
    assert 0.45 <= procs.seconds.get("driver", 0.0) <= 1.5, procs.seconds
    assert machine.busy_s >= 0.5 and machine.wall_s >= 0.6 and machine.cores_busy > 0.3
