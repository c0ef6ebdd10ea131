"""Several index jobs writing into one server collection at once: nothing doubled, nothing lost.

Each job is its own ``cbir-dist index`` process (its own run directory), started together against
the session's Milvus server. Inputs overlap (the same images in several jobs' folders) or are
disjoint. Afterwards ``count(*)`` equals the number of unique ids equals the union of the inputs,
and each job's summary line is true for its own folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cbir_dist.demo import make_dataset
from cbir_dist.io.files import content_id
from cbir_dist.store import VectorStore

pytestmark = pytest.mark.slow  # 2-3 processes at once on 2 cores, ~1 min per case

REPO = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "none", "--descriptors", "correlogram"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list[Path]:
    """36 distinct generated images (6 classes x 6) to deal into the jobs' folders."""
    data = make_dataset(tmp_path_factory.mktemp("writers") / "pool", per_class=6, size=40)
    files = sorted(data.rglob("*.png"))
    assert len({content_id(f.read_bytes()) for f in files}) == len(files)
    return files


def _folder(root: Path, files: list[Path]) -> Path:
    for f in files:
        dst = root / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    return root


def _run_together(folders, server, token_file, collection, backend, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    procs = []
    for n, folder in enumerate(folders):
        cmd = [sys.executable, "-m", "cbir_dist.cli", "index", str(folder), "--db", server.uri, "--token-file",
               str(token_file), "--collection", collection, "--run-dir", str(tmp_path / f"run{n}"),
               "--shard-size", "4", "--backend", backend, "--workers", "1", *FAST]  # the writers are the point
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


@pytest.mark.parametrize("backend, layout", [
    ("local", "overlapping-3"),
    ("local", "disjoint-3"),
    ("ray", "overlapping-2"),
])
def test_concurrent_index_jobs_store_each_image_once(milvus_server, pool, tmp_path, backend, layout):
    kind, n_jobs = layout.split("-")
    n_jobs = int(n_jobs)
    if kind == "overlapping":  # every job gets the same 21 images plus 5 of its own
        shared, rest = pool[:21], pool[21:]
        parts = [shared + rest[5 * j:5 * j + 5] for j in range(n_jobs)]
    else:
        size = len(pool) // n_jobs
        parts = [pool[size * j:size * (j + 1)] for j in range(n_jobs)]
    folders = [_folder(tmp_path / f"in{j}", part) for j, part in enumerate(parts)]
    union = {content_id(f.read_bytes()) for part in parts for f in part}
    collection = f"w{uuid.uuid4().hex[:8]}"
    token_file = milvus_server.write_token_file(tmp_path / "token")
    try:
        outs = _run_together(folders, milvus_server, token_file, collection, backend, tmp_path)
        with VectorStore(milvus_server.uri, collection, token=milvus_server.token) as store:
            store.flush_and_index()
            count = store.count()
            present = store.existing_ids(sorted(union))
        assert count == len(union) and present == union, (count, len(union), len(present))
        for out, part in zip(outs, parts):  # each summary is true for its own folder
            assert re.search(rf"^indexed {len(part)}, duplicates 0, rejected 0", out, re.M), out
    finally:
        with VectorStore(milvus_server.uri, collection, token=milvus_server.token) as store:
            store.drop()
