"""The index job's driver side and local backend: resume, idempotence, overwrite, bad files, kill-and-resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cbir_dist.demo import make_dataset
from cbir_dist.errors import PipelineError
from cbir_dist.features.profiles import build_spec
from cbir_dist.index import run_index
from cbir_dist.index.local import ShardProcessor
from cbir_dist.index.run import IndexConfig, IndexRun
from cbir_dist.index.writer import ComputedShard
from cbir_dist.io.records import DUPLICATE, OK, REJECTED
from cbir_dist.store import VectorStore

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, per_class: int = 4, size: int = 40) -> Path:
    """6 classes x ``per_class`` PNGs, plus one duplicate, one corrupt and one empty file."""
    data = make_dataset(root / "images", per_class=per_class, size=size)
    first = sorted((data / "desert_dots").iterdir())[0]
    shutil.copy(first, data / "rose_noise" / "zz_copy_of_dots.png")  # duplicate (same bytes, other path)
    (data / "ocean_waves" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "night_rings" / "empty.png").write_bytes(b"")
    return data


def descriptor_spec():
    return build_spec(backbone=None, descriptors=("correlogram",), mode="balanced")


class CountingProcessor(ShardProcessor):
    """The local processor, counting the shards it reads and the images it describes."""

    shards_read = 0
    images_described = 0
    created = 0

    def __init__(self, *args, **kwargs):
        type(self).created += 1
        super().__init__(*args, **kwargs)

    def read(self, files, stored=None):
        type(self).shards_read += 1
        return super().read(files, stored)

    def features(self, images):
        type(self).images_described += len(images)
        return super().features(images)


@pytest.fixture
def counting():
    CountingProcessor.shards_read = CountingProcessor.images_described = CountingProcessor.created = 0
    return CountingProcessor


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path)


def _cfg(tmp_path, data, **kw):
    """One process unless a test asks for workers (``workers=None``: the default, the cores available):
    a pool costs each run a few seconds of spawning, and most tests here are about the driver."""
    kw = {"shard_size": 8, "db": str(tmp_path / "t.db"), "collection": "t", "run_dir": str(tmp_path / "run"),
          "progress": False, "workers": 1, **kw}
    return IndexConfig(str(data), **kw)


def _all_rows(cfg):
    """Every stored row, found through the manifest's ids (each id asked once)."""
    man = pq.read_table(Path(cfg.run_dir) / "manifest.parquet").to_pydict()
    ids = sorted({i for i, s in zip(man["id"], man["status"]) if s == OK})
    with VectorStore(cfg.db, cfg.collection) as store:
        return store.count(), store.fetch(ids), ids


def test_counts_add_up_and_bad_files_are_listed(tmp_path, folder):
    cfg = _cfg(tmp_path, folder)
    s = run_index(descriptor_spec(), cfg)
    assert (s.files, s.indexed, s.duplicates, s.rejected) == (27, 24, 1, 2)
    assert s.indexed + s.duplicates + s.rejected == s.files
    assert s.rows_written == 24
    assert s.line().startswith(f"indexed 24, duplicates 1, rejected 2 (see {tmp_path / 'run' / 'errors.parquet'}); "
                               "1 process, ")
    err = pq.read_table(tmp_path / "run" / "errors.parquet").to_pydict()
    reasons = dict(zip([Path(p).name for p in err["path"]], zip(err["status"], err["reason"])))
    assert reasons["empty.png"] == (REJECTED, "empty file (0 bytes)")
    assert reasons["broken.jpg"][0] == REJECTED and "broken.jpg" in reasons["broken.jpg"][1]
    assert reasons["zz_copy_of_dots.png"][0] == DUPLICATE
    assert reasons["zz_copy_of_dots.png"][1].endswith("desert_dots_00.png")
    count, rows, ids = _all_rows(cfg)
    assert count == 24 and len(ids) == 24 and rows["vector"].shape == (24, descriptor_spec().dim)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["rows_written"] == 24 and stats["files"] == 27 and stats["backend"] == "local"
    assert set(stats["stage_seconds"]) == {"decode", "inpaint", "inpaint_net", "deep", "descriptors", "write"}
    assert stats["stage_items"]["decode"] == 27 and stats["stage_items"]["descriptors"] == 24
    assert stats["stage_images_per_s"]["decode"] > 0 and stats["peak_rss_mb"] > 0


def test_resume_skips_finished_shards(tmp_path, folder, counting):
    cfg = _cfg(tmp_path, folder)
    first = run_index(descriptor_spec(), cfg, processor_factory=counting)
    n_shards = -(-27 // 8)
    assert counting.shards_read == n_shards and counting.images_described == 24
    assert len(list((tmp_path / "run" / "shards").glob("*.done"))) == n_shards

    counting.shards_read = counting.images_described = counting.created = 0
    again = run_index(descriptor_spec(), cfg, processor_factory=counting)
    assert counting.created == 0 and counting.shards_read == 0  # nothing left: the backbone is not even loaded
    assert (again.indexed, again.duplicates, again.rejected) == (first.indexed, first.duplicates, first.rejected)
    assert again.rows_written == 0

    # a changed file voids only its own shard's marker; its unchanged images are already stored
    victim = sorted((folder / "forest_checks").iterdir())[1]
    os.utime(victim, (time.time() + 5, time.time() + 5))
    counting.shards_read = counting.images_described = 0
    third = run_index(descriptor_spec(), cfg, processor_factory=counting)
    assert counting.shards_read == 1 and counting.images_described == 0
    assert third.already_present > 0 and third.indexed == 24


def test_rerun_keeps_one_row_per_image(tmp_path, folder, counting):
    cfg = _cfg(tmp_path, folder)
    run_index(descriptor_spec(), cfg)
    shutil.rmtree(tmp_path / "run")  # lose the run dir: every shard is redone, the store deduplicates by id
    s = run_index(descriptor_spec(), cfg, processor_factory=counting)
    assert s.already_present == 24 and s.rows_written == 0
    # the stored ids reached the backend before any compute: every shard read, no image described
    assert counting.shards_read == 4 and counting.images_described == 0
    count, rows, ids = _all_rows(cfg)
    assert count == 24 and len(set(rows["id"].tolist())) == 24


def test_overwrite_rebuilds(tmp_path, folder, counting):
    cfg = _cfg(tmp_path, folder)
    run_index(descriptor_spec(), cfg)
    counting.shards_read = counting.images_described = 0
    s = run_index(descriptor_spec(), _cfg(tmp_path, folder, overwrite=True), processor_factory=counting)
    assert counting.shards_read == 4 and counting.images_described == 24
    assert s.rows_written == 24 and s.already_present == 0
    assert _all_rows(cfg)[0] == 24


def test_fresh_collection_voids_old_markers(tmp_path, folder, counting):
    cfg = _cfg(tmp_path, folder)
    run_index(descriptor_spec(), cfg)
    shutil.rmtree(tmp_path / "t.db")  # the store is gone but the run dir says "done"
    s = run_index(descriptor_spec(), cfg, processor_factory=counting)
    assert counting.shards_read == 4 and s.rows_written == 24
    assert _all_rows(cfg)[0] == 24


def test_shards_finish_in_order_whatever_order_results_arrive(tmp_path, folder):
    """A backend may deliver shards out of order; the duplicate's original must still be the first path."""
    cfg = _cfg(tmp_path, folder, shard_size=4)
    spec = descriptor_spec()
    run = IndexRun(spec, cfg)
    proc = ShardProcessor(run.spec, cfg)

    def computed():
        for shard in reversed(run.plan.pending):
            recs = proc.read(run.plan.files_of(shard))
            ok = [r for r in recs if r.status == OK]  # duplicates included: the writer picks the original
            yield ComputedShard(shard.index, recs, np.asarray([r.id for r in ok], np.int64),
                                proc.features([r.image for r in ok]))

    run.write(computed())
    s = run.close()
    assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2)
    man = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pydict()
    assert man["path"] == sorted(man["path"])
    dup = man["status"].index(DUPLICATE)
    assert Path(man["path"][dup]).name == "zz_copy_of_dots.png"


def test_the_writer_takes_computed_shards_as_values_and_marks_them_only_when_flushed(tmp_path, folder):
    """The writer alone: shards in as values, rows and manifests out, markers only at the group commit."""
    from cbir_dist.index.summary import StageClock
    from cbir_dist.index.writer import ShardWriter

    cfg = _cfg(tmp_path, folder)
    run = IndexRun(descriptor_spec(), cfg)
    try:
        proc = ShardProcessor(run.spec, cfg)

        class Bar:
            n = 0

            def update(self, k):
                self.n += k

        bar = Bar()
        writer = ShardWriter(run.plan.store, run.spec, run.plan.target, fitted=False, save_features=False,
                             clock=StageClock(), bar=bar)
        shard = run.plan.shards[0]
        recs = proc.read(run.plan.files_of(shard))
        ok = [r for r in recs if r.status == OK]
        feats = proc.features([r.image for r in ok])
        # described in another order than the records': the writer picks each row by id
        order = np.arange(len(ok))[::-1]
        writer.write(shard, ComputedShard(shard.index, recs, np.asarray([ok[j].id for j in order], np.int64),
                                          {n: a[order] for n, a in feats.items()}))
        assert shard.manifest.exists() and not shard.marker.exists()  # written, not yet flushed: no marker
        writer.commit(force=True)
        assert shard.marker.exists() and bar.n == shard.count
        w = writer.written
        assert (w.planned, w.rows_written, w.already_present) == (len(ok), len(ok), 0)
        stored = run.plan.store.fetch([r.id for r in ok])
        np.testing.assert_allclose(stored["vector"], run.spec.fuse(feats), rtol=1e-6)

        nxt = run.plan.shards[1]
        recs = proc.read(run.plan.files_of(nxt))
        with pytest.raises(PipelineError, match="without the features of"):
            writer.write(nxt, ComputedShard(nxt.index, recs, np.zeros(0, np.int64), {}))
    finally:
        run.abort()


def test_by_default_worker_processes_write_the_same_rows_as_one_process_and_resume(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # 2 cores, wherever it runs
    one = _cfg(tmp_path, folder, db=str(tmp_path / "one.db"), run_dir=str(tmp_path / "r1"), shard_size=4)
    two = _cfg(tmp_path, folder, db=str(tmp_path / "two.db"), run_dir=str(tmp_path / "r2"), shard_size=4,
               workers=None)  # the default: the cores this process may use
    s1, s2 = run_index(descriptor_spec(), one), run_index(descriptor_spec(), two)
    assert (s2.indexed, s2.duplicates, s2.rejected, s2.rows_written) == (s1.indexed, s1.duplicates, s1.rejected,
                                                                         s1.rows_written) == (24, 1, 2, 24)
    count1, rows1, ids1 = _all_rows(one)
    count2, rows2, ids2 = _all_rows(two)
    assert count2 == count1 == 24 and ids2 == ids1
    np.testing.assert_array_equal(rows2["vector"], rows1["vector"])  # bit for bit
    assert pq.read_table(tmp_path / "r2" / "manifest.parquet").to_pydict() == \
        pq.read_table(tmp_path / "r1" / "manifest.parquet").to_pydict()
    stats = json.loads((tmp_path / "r2" / "stats.json").read_text())
    # the copy of an image in another shard may be described too (then dropped by the writer)
    assert stats["workers"] == 2 and stats["stage_items"]["decode"] == 27
    assert 24 <= stats["stage_items"]["descriptors"] <= 25
    # the whole machine's busy cores over the run, of the cores available, in stats.json and the line
    assert stats["cores_available"] == 2 and 0 < stats["cores_busy"] == s2.cores_busy
    assert re.search(r"\); 2 processes, \d+\.\d of 2 cores busy$", s2.line()), s2.line()
    assert re.search(r"\); 1 process, \d+\.\d of 2 cores busy$", s1.line()), s1.line()
    # lost markers: the workers read those shards again and describe nothing (their ids are stored)
    for n in (2, 4):
        (tmp_path / "r2" / "shards" / f"0000{n}.done").unlink()
    again = run_index(descriptor_spec(), two)
    stats = json.loads((tmp_path / "r2" / "stats.json").read_text())
    assert again.rows_written == 0 and again.already_present > 0 and again.indexed == 24
    assert stats["shards_processed"] == 2 and stats["stage_items"]["descriptors"] == 0 and stats["workers"] == 2


def test_a_failed_write_with_worker_processes_fails_the_job_and_a_rerun_finishes_it(tmp_path, folder, monkeypatch):
    from cbir_dist.index.writer import ShardWriter

    cfg = _cfg(tmp_path, folder, shard_size=4, workers=2)
    real, calls = ShardWriter.write, []

    def write_then_fail(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run_index(descriptor_spec(), cfg)
    monkeypatch.undo()
    s = run_index(descriptor_spec(), cfg)  # the run dir was released; the rerun resumes
    assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2) and _all_rows(cfg)[0] == 24


def test_worker_processes_damage_and_reconstruct_the_same_way(tmp_path, folder):
    from cbir_dist.damage.hook import DamageConfig, DamageTransform

    step = DamageTransform(DamageConfig(fringe=2.0, inpainter="telea"))
    one = _cfg(tmp_path, folder, db=str(tmp_path / "one.db"), run_dir=str(tmp_path / "r1"))
    two = _cfg(tmp_path, folder, db=str(tmp_path / "two.db"), run_dir=str(tmp_path / "r2"), workers=2)
    run_index(descriptor_spec(), one, transform=step)
    run_index(descriptor_spec(), two, transform=step)
    np.testing.assert_array_equal(_all_rows(two)[1]["vector"], _all_rows(one)[1]["vector"])
    stats = [json.loads((tmp_path / r / "stats.json").read_text()) for r in ("r1", "r2")]
    # every decoded image is damaged when read (the duplicate too: duplicates are known only to the writer)
    assert stats[0]["stage_items"]["inpaint"] == stats[1]["stage_items"]["inpaint"] == 25
    assert stats[1]["stage_seconds"]["inpaint"] > 0


def test_workers_default_to_the_cores_this_process_may_use_and_never_outnumber_the_shards(monkeypatch):
    from cbir_dist.cli.parser import build_parser

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert IndexConfig("x").workers is None and build_parser().parse_args(["index", "x"]).workers is None
    assert [IndexConfig("x").processes(n) for n in (0, 1, 4, 6, 100)] == [1, 1, 4, 6, 6]
    assert [IndexConfig("x", workers=3).processes(n) for n in (0, 2, 100)] == [1, 2, 3]
    assert IndexConfig("x", workers=1).processes(100) == 1


def test_a_job_of_one_shard_starts_no_pool(tmp_path, folder, monkeypatch):
    import concurrent.futures

    def no_pool(*a, **k):
        raise AssertionError("a pool was started for one shard")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    s = run_index(descriptor_spec(), _cfg(tmp_path, folder, shard_size=256, workers=None))  # 27 files, 1 shard
    assert (s.indexed, s.duplicates, s.rejected, s.processes) == (24, 1, 2, 1)
    assert json.loads((tmp_path / "run" / "stats.json").read_text())["workers"] == 1
    with pytest.raises(AssertionError, match="a pool was started"):  # the check would see one
        run_index(descriptor_spec(), _cfg(tmp_path, folder, shard_size=4, workers=None, db=str(tmp_path / "p.db"),
                                          run_dir=str(tmp_path / "r2")))


def test_a_transform_worker_processes_cannot_take_is_refused_before_any_work(tmp_path, folder):
    from cbir_dist.errors import UsageError

    with pytest.raises(UsageError, match="worker processes.*workers=1"):
        run_index(descriptor_spec(), _cfg(tmp_path, folder, workers=2), transform=lambda image, path: image)


def test_without_proc_stat_the_cores_busy_are_absent_not_a_crash(tmp_path, folder, monkeypatch):
    import cbir_dist.io.cpu as cpu

    monkeypatch.setattr(cpu, "_proc_stat", lambda: None)  # off Linux
    with cpu.MachineCpu() as machine:
        pass
    assert machine.cores_busy is None and machine.busy_s is None and machine.wall_s >= 0
    s = run_index(descriptor_spec(), _cfg(tmp_path, folder))
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert s.cores_busy is None and stats["cores_busy"] is None and stats["cores_available"] >= 1
    assert s.line().endswith("errors.parquet); 1 process"), s.line()


def test_a_plan_that_fails_after_creating_the_collection_leaves_none(tmp_path, folder, monkeypatch):
    import cbir_dist.index.plan as plan

    def full(*a, **k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(plan, "_write_listing", full)  # after the collection was created
    cfg = _cfg(tmp_path, folder)
    with pytest.raises(OSError, match="disk full"):
        run_index(descriptor_spec(), cfg)
    with VectorStore(cfg.db, cfg.collection) as store:
        assert not store.exists()


def test_stream_ending_early_is_a_job_error(tmp_path, folder):
    run = IndexRun(descriptor_spec(), _cfg(tmp_path, folder))
    try:
        with pytest.raises(PipelineError, match="ended before shard 0"):
            run.write(iter(()))
    finally:
        run.abort()


def test_no_images_is_a_job_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        run_index(descriptor_spec(), _cfg(tmp_path, tmp_path / "empty"))


@pytest.mark.parametrize("kw", [{"shard_size": 0}, {"batch_size": 0}, {"backend": "spark"}, {"torch_threads": 0},
                                {"deep_actors": 0}, {"max_pixels": 0}, {"workers": 0}])
def test_config_is_validated(kw):
    with pytest.raises(ValueError):
        IndexConfig("x", **kw)


def test_transform_hook_changes_the_vectors(tmp_path, folder):
    def invert(image, _id):
        return 255 - image

    a = _cfg(tmp_path, folder, collection="plain")
    b = _cfg(tmp_path, folder, collection="inverted", run_dir=str(tmp_path / "run2"))
    run_index(descriptor_spec(), a)
    run_index(descriptor_spec(), b, transform=invert)
    assert json.loads((tmp_path / "run2" / "stats.json").read_text())["stage_items"]["inpaint"] == 25
    _, ra, ids = _all_rows(a)
    _, rb, _ = _all_rows(b)
    assert np.array_equal(ra["id"], rb["id"]) and not np.allclose(ra["vector"], rb["vector"])


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: pid -> command line."""
    kids = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if d.name.isdigit() and int(fields[1]) == pid and fields[0] != "Z":
                kids[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _index_cmd(data, db, run_dir, *, descriptors: str, workers: int) -> list[str]:
    """The CLI index job the kill tests start and rerun: collection ``k``, shards of 3, no backbone."""
    return [sys.executable, "-m", "cbir_dist.cli", "index", str(data), "--db", str(db), "--collection", "k",
            "--run-dir", str(run_dir), "--shard-size", "3", "--backbone", "none", "--descriptors", descriptors,
            "--workers", str(workers)]


def test_sigkill_mid_run_then_resume(tmp_path):
    """Kill the CLI job with SIGKILL once a shard is done, rerun it: every valid image exactly once."""
    data = make_folder(tmp_path, per_class=12, size=48)  # 72 images + 3 bad files, 25 shards of 3
    db, run_dir = tmp_path / "k.db", tmp_path / "krun"
    cmd = _index_cmd(data, db, run_dir, descriptors="correlogram,gabor", workers=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    markers = run_dir / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.exists() and any(markers.glob("*.done")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode(errors="replace")
    done_at_kill = len(list(markers.glob("*.done")))
    assert proc.returncode == -signal.SIGKILL, out
    assert 1 <= done_at_kill < 25, f"the kill did not land mid-run ({done_at_kill} shards done)"

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "indexed 72, duplicates 1, rejected 2" in res.stdout
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["shards_processed"] <= 25 - done_at_kill
    cfg = IndexConfig(str(data), db=str(db), collection="k", run_dir=str(run_dir))
    count, rows, ids = _all_rows(cfg)
    assert count == 72 and len(ids) == 72
    assert sorted(rows["id"].tolist()) == ids  # every valid image stored, each id once


def test_the_worker_processes_of_a_killed_job_end_with_it_and_a_rerun_finishes(tmp_path):
    """SIGKILL leaves the job no chance to stop its pool: its workers notice and end; the rerun resumes."""
    data = make_folder(tmp_path, per_class=6, size=48)  # 36 images + 3 bad files, 13 shards of 3
    db, run_dir = tmp_path / "k.db", tmp_path / "krun"
    cmd = _index_cmd(data, db, run_dir, descriptors="correlogram", workers=2)
    # no pipes: a worker outliving the job would hold them open, and reading them would wait for it
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, deadline = [], time.monotonic() + 120
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = [p for p, cmdline in _children(proc.pid).items() if "multiprocessing.spawn" in cmdline]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL and len(workers) == 2
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "the killed job's worker processes outlived it"
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^indexed 36, duplicates 1, rejected 2 .*; 2 processes, ", res.stdout, re.M), res.stdout
