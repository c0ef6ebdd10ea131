"""`ray job submit` for real: ``cluster/submit_local.sh`` on a one-node cluster and on local-multinode.sh.

The script starts a Ray cluster with its job server on free ports in a private temp dir, submits
``jobs/index.py`` and ``jobs/query.py`` with ``--working-dir .``, checks the collection's rows and
the hits, prints where each stage ran, checks what Ray uploaded (no ``.venv``) and always stops the
cluster. Here it runs as a subprocess, once with milvus-lite and once with the head + 2 workers
against the session's Milvus server (token from a file, never on a command line).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # ~1 min each on 2 cores, more under load

SCRIPT = REPO / "cluster" / "submit_local.sh"


def _job_server_installed() -> bool:
    try:
        import ray.dashboard.modules.job.sdk  # noqa: F401  (ray[default], the `cluster` extra)
    except ImportError:
        return False
    return True


def _run(*args: str, tmp_path: Path) -> str:
    if not _job_server_installed():
        pytest.skip("ray[default] is absent: pip install -e '.[cluster]' (scripts/test.sh installs it)")
    env = dict(os.environ, RAY=str(Path(sys.executable).parent / "ray"))
    env.pop("RAY_ADDRESS", None)  # the script's own cluster, not one this shell points at
    keep = tmp_path / "kept"
    proc = subprocess.run(["bash", str(SCRIPT), "--keep", str(keep), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=840)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "check: OK" in out
    return out


def _spread(out: str) -> dict[str, dict[str, int]]:
    """stage -> node name -> rows, from the script's spread table."""
    spread, stage = {}, None
    for line in out.splitlines():
        m = re.match(r"  (\w+) +\d+ rows", line)
        if m:
            stage = m.group(1)
            spread[stage] = {}
            continue
        m = re.match(r"    (head|worker\d+) .*: (\d+) rows", line)
        if m and stage:
            spread[stage][m.group(1)] = int(m.group(2))
    return spread


def test_submit_index_and_query_jobs_to_a_local_head(tmp_path):
    out = _run(tmp_path=tmp_path)
    assert re.search(r"job cbir-index-\S+: SUCCEEDED", out) and re.search(r"job cbir-query-\S+: SUCCEEDED", out)
    assert "collection submit_" in out and ": 24 rows; index job: 24 files, 24 indexed, backend ray" in out
    assert "12 queries x 5 ranks, 0 failed, 24 of 24 distinct hit ids in the collection" in out
    up = next(line for line in out.splitlines() if line.startswith("working dir as uploaded"))
    assert "'cbir_dist'" in up and "'jobs'" in up and ".venv" not in up
    spread = _spread(out)
    assert spread["decode"] == {"head": 24} and spread["descriptors"] == {"head": 24}
    # the kept job logs: the jobs ran under Ray's copy of the working dir, with absolute image paths
    logs = (tmp_path / "kept" / "index.job.log").read_text()
    assert "Running entrypoint for job" in logs and "python jobs/index.py /" in logs


def test_submit_to_head_plus_two_workers_against_the_server(milvus_server, tmp_path):
    """local-multinode.sh (worker1 with a logical GPU): the backbone actor runs on worker1, the CPU
    stages elsewhere; the store is the session's Milvus server with auth, the token read from a file."""
    token_file = milvus_server.write_token_file(tmp_path / "milvus.token")
    out = _run("--multinode", "--db", milvus_server.uri, "--token-file", str(token_file), tmp_path=tmp_path)
    assert f"check: {milvus_server.uri} collection submit_" in out and ": 24 rows;" in out
    spread = _spread(out)
    assert spread["deep"] == {"worker1": 24}, spread  # the GPU-asking actor can only be placed there
    for stage in ("decode", "descriptors"):  # CPU tasks: wherever a CPU is free (head, worker2, worker1)
        assert sum(spread[stage].values()) == 24, spread
    # token safety: the token is in no job log, command line or output (only the file's path is)
    kept = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "kept").glob("*.log"))
    assert "--token-file" in kept
    if milvus_server.token:
        assert milvus_server.token not in kept and milvus_server.token not in out
