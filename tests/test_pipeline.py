"""The Ray backend: same rows and vectors as the local backend, stage placement, resources, retries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from test_indexer import make_folder  # noqa: E402

from cbir_dist.distributed.graph import GraphConfig
from cbir_dist.distributed.plan import plan_stages
from cbir_dist.errors import PipelineError
from cbir_dist.features.profiles import build_spec  # noqa: E402
from cbir_dist.index import run_index
from cbir_dist.index.cluster import run_index_ray
from cbir_dist.index.run import IndexConfig  # noqa: E402
from cbir_dist.store import VectorStore  # noqa: E402


def deep_spec():
    """Random-weight MobileNetV2 at 32 px + correlogram + gabor: every stage of the real graph, fast."""
    return build_spec(backbone="mobilenet_v2", weights="random", image_size=32,
                      descriptors=("correlogram", "gabor"), mode="balanced")


def _cfg(tmp_path, data, name, backend, **kw):
    """The local backend in one process: the reference (worker processes give its rows: test_indexer)."""
    return IndexConfig(str(data), db=str(tmp_path / f"{name}.db"), collection=name, run_dir=str(tmp_path / name),
                       shard_size=8, batch_size=4, progress=False, backend=backend, torch_threads=1, workers=1, **kw)


def _stored(cfg):
    man = pq.read_table(Path(cfg.run_dir) / "manifest.parquet").to_pydict()
    with VectorStore(cfg.db, cfg.collection) as store:
        ids = sorted({i for i, s in zip(man["id"], man["status"]) if s == "ok"})
        return man, store.count(), store.fetch(ids)


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("pipeline"))  # 24 images + duplicate + corrupt + empty


def test_ray_and_local_backends_write_identical_rows(tmp_path, folder, local_ray):
    spec = deep_spec()
    local = run_index(spec, _cfg(tmp_path, folder, "loc", "local"))
    remote = run_index_ray(spec, _cfg(tmp_path, folder, "ray", "ray"))
    assert (remote.indexed, remote.duplicates, remote.rejected) == (local.indexed, local.duplicates, local.rejected)
    assert (remote.indexed, remote.duplicates, remote.rejected) == (24, 1, 2)
    assert remote.rows_written == local.rows_written == 24

    man_l, count_l, rows_l = _stored(_cfg(tmp_path, folder, "loc", "local"))
    man_r, count_r, rows_r = _stored(_cfg(tmp_path, folder, "ray", "ray"))
    assert man_r == man_l  # same files, ids, statuses and reasons, in the same order
    assert count_l == count_r == 24
    assert np.array_equal(rows_l["id"], rows_r["id"]) and list(rows_l["path"]) == list(rows_r["path"])
    np.testing.assert_allclose(rows_r["vector"], rows_l["vector"], rtol=0, atol=1e-6)
    assert np.abs(rows_l["vector"]).max() > 0.01  # real features, not zeros

    stats = json.loads((tmp_path / "ray" / "stats.json").read_text())
    assert stats["backend"] == "ray" and stats["rows_written"] == 24
    assert stats["stage_items"]["decode"] == 27 and stats["stage_items"]["deep"] == 25
    assert all(stats["stage_seconds"][s] > 0 for s in ("decode", "deep", "descriptors", "write"))
    # the workers' CPU per stage, beside their wall seconds
    assert all(stats["stage_cpu_seconds"][s] > 0 for s in ("decode", "deep", "descriptors"))
    assert stats["stage_cpu_seconds"]["inpaint"] == 0
    # how the CPUs were split: no GPU, so one actor per CPU runs the whole pipeline
    assert stats["ray_plan"]["whole"] is True and stats["ray_plan"]["pool_size"] >= 1
    assert stats["peak_worker_rss_mb"] > 0
    assert set(stats["stage_nodes"]) == {"decode", "descriptors", "deep"}
    # the graph's Ray Data settings went to its own datasets; this process's context is as it was
    import ray

    assert ray.data.DataContext.get_current().op_resource_reservation_enabled is True
    # what ran the backbone, as the actors reported it: the same as in this process (ONNX Runtime on a CPU)
    assert stats["runtime"] == remote.runtime == local.runtime and local.runtime.startswith("onnxruntime ")


def _network_hook(tmp_path):
    """Fringe damage reconstructed by the two-stage network (the shipped weights)."""
    from cbir_dist.damage.hook import DamageConfig, damage_transform

    return damage_transform(DamageConfig(fringe=2.0, inpainter="two-stage"))


def test_network_inpainter_runs_in_actors_with_the_local_backends_rows(tmp_path, folder, local_ray):
    """The network's pre-fill in CPU tasks, the network in the backbone's actors (fused): the same rows as the
    local backend, which runs the whole hook in one process."""
    spec = deep_spec()
    hook = _network_hook(tmp_path)
    local = run_index(spec, _cfg(tmp_path, folder, "nloc", "local"), transform=hook)
    remote = run_index_ray(spec, _cfg(tmp_path, folder, "nray", "ray"), transform=hook)
    assert (remote.indexed, remote.duplicates, remote.rejected) == (local.indexed, local.duplicates, local.rejected)
    _, _, rows_l = _stored(_cfg(tmp_path, folder, "nloc", "local"))
    _, _, rows_r = _stored(_cfg(tmp_path, folder, "nray", "ray"))
    assert np.array_equal(rows_l["id"], rows_r["id"])
    np.testing.assert_allclose(rows_r["vector"], rows_l["vector"], rtol=0, atol=1e-6)
    stats = json.loads((tmp_path / "nray" / "stats.json").read_text())
    assert stats["stage_items"]["inpaint"] == stats["stage_items"]["inpaint_net"] == 25
    assert set(stats["stage_nodes"]) == {"decode", "inpaint", "inpaint_net", "deep", "descriptors"}
    local_stats = json.loads((tmp_path / "nloc" / "stats.json").read_text())
    assert local_stats["stage_items"]["inpaint"] == 25 and local_stats["stage_items"]["inpaint_net"] == 0


@pytest.mark.parametrize("placement, backbone", [("separate", "mobilenet_v2"), ("fused", None)])
def test_network_in_a_pool_of_its_own_gives_the_same_features(folder, local_ray, placement, backbone):
    """``inpaint_placement="separate"``, and a spec without a backbone (the network's pool is then the only one)."""
    from cbir_dist.distributed.graph import describe_files
    from cbir_dist.features.extract import Extractor
    from cbir_dist.io.files import list_images
    from cbir_dist.io.records import read_record

    spec = deep_spec() if backbone else build_spec(backbone=None, descriptors=("correlogram", "gabor"), mode="balanced")
    files = [f for f in list_images(folder) if f.path.endswith(".png")][:10]
    hook = _network_hook(None)
    recs, feats = describe_files(spec, files, GraphConfig(batch_size=4, progress=False, torch_threads=1,
                                                          inpaint_placement=placement), transform=hook)
    images = [hook(read_record(f).image, f.path) for f in files if read_record(f).status == "ok"]
    assert sum(r.status == "ok" for r in recs) == len(images) > 5
    ext = Extractor(spec, num_threads=1)
    want = ext.blocks(images)
    for name, got in feats.items():
        np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-6, err_msg=name)


def test_network_plan_gives_the_network_a_pool_only_when_asked():
    fused = plan_stages({"CPU": 2.0}, GraphConfig(), network=True)
    assert fused.inpaint_pool == 0 and fused.pool_size == 2 and fused.whole  # the network in the whole pipeline
    sep = plan_stages({"CPU": 2.0}, GraphConfig(inpaint_placement="separate"), network=True)
    assert (sep.inpaint_pool, sep.pool_size) == (1, 1) and sep.inpaint_cpus + sep.actor_cpus + sep.task_cpus <= 2
    sep16 = plan_stages({"CPU": 16.0}, GraphConfig(inpaint_placement="separate"), network=True)
    assert sep16.inpaint_pool + sep16.pool_size == 16 and sep16.inpaint_cpus == 0.5
    gpu = plan_stages({"CPU": 8.0, "GPU": 2.0}, GraphConfig(inpaint_placement="separate"), network=True)
    assert gpu.actor_gpus == gpu.inpaint_gpus == 0.5 and gpu.inpaint_pool == gpu.pool_size == 2
    alone = plan_stages({"CPU": 8.0, "GPU": 2.0}, GraphConfig(), network=True, deep=False)
    assert alone.inpaint_gpus == 1.0 and alone.inpaint_pool == 2
    assert plan_stages({"CPU": 4.0}, GraphConfig(), network=False, deep=False).inpaint_pool == 0
    with pytest.raises(PipelineError, match="inpaint_placement"):
        GraphConfig(inpaint_placement="gpu")


def test_ray_backend_in_windows_writes_the_same_rows(tmp_path, folder, local_ray):
    """The pending shards go to the graph in windows (bounded driver memory): same rows as one window."""
    from cbir_dist.index.cluster import windows
    from cbir_dist.index.run import IndexRun

    spec = build_spec(backbone="none", descriptors=("glcm",))
    whole = run_index_ray(spec, _cfg(tmp_path, folder, "one", "ray"))
    cfg = _cfg(tmp_path, folder, "win", "ray", window_files=9)  # shards of 8: one shard per window
    run = IndexRun(spec, cfg, progress=False)
    try:
        assert [len(w) for w in windows(run, 9)] == [1, 1, 1, 1]
    finally:
        run.abort()
    windowed = run_index_ray(spec, cfg)
    assert (windowed.indexed, windowed.duplicates, windowed.rejected) == (whole.indexed, whole.duplicates,
                                                                          whole.rejected) == (24, 1, 2)
    man_1, n_1, rows_1 = _stored(_cfg(tmp_path, folder, "one", "ray"))
    man_w, n_w, rows_w = _stored(cfg)
    assert man_w == man_1 and n_w == n_1 == 24
    np.testing.assert_array_equal(rows_w["vector"], rows_1["vector"])


def test_ray_rerun_resumes_and_keeps_one_row_per_image(tmp_path, folder, local_ray):
    spec = build_spec(backbone=None, descriptors=("correlogram",), mode="balanced")
    cfg = _cfg(tmp_path, folder, "again", "ray")
    run_index_ray(spec, cfg)
    shard1 = pq.read_table(tmp_path / "again" / "shards" / "00001.parquet").to_pydict()
    (tmp_path / "again" / "shards" / "00001.done").unlink()  # as if killed after shard 1's upsert, before its marker
    s = run_index_ray(spec, cfg)
    stats = json.loads((tmp_path / "again" / "stats.json").read_text())
    assert stats["shards_processed"] == 1 and s.rows_written == 0
    assert s.already_present == shard1["status"].count("ok") > 0
    assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2)
    assert _stored(cfg)[1] == 24
    # the stored ids went with the graph's decode tasks: the redone shard's images were read, not described
    assert stats["stage_items"]["decode"] == shard1["status"].count("ok") + shard1["status"].count("rejected") \
        + shard1["status"].count("duplicate") and stats["stage_items"]["descriptors"] == 0


def test_a_dead_worker_is_retried_not_fatal(tmp_path, folder, local_ray):
    class KillOnce:  # defined here so that Ray pickles it by value (workers cannot import test modules)
        """Transform hook that kills its worker process the first time it runs (a dead worker mid-job)."""

        def __init__(self, flag: str):
            self.flag = flag

        def __call__(self, image, _id):
            if not os.path.exists(self.flag):
                Path(self.flag).write_text("died once")
                os._exit(1)
            return image

    spec = build_spec(backbone=None, descriptors=("correlogram",), mode="balanced")
    flag = tmp_path / "killed"
    cfg = _cfg(tmp_path, folder, "retry", "ray")
    s = run_index_ray(spec, cfg, transform=KillOnce(str(flag)))
    assert flag.exists()  # a worker really died
    assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2) and s.rows_written == 24


@pytest.mark.parametrize(
    ("cluster", "kw", "expect"),
    [
        # CPU only: one task per CPU, each running the whole pipeline (its backbone on one thread)
        ({"CPU": 2.0}, {}, dict(task_cpus=0.0, actor_cpus=1.0, actor_gpus=0.0, pool_size=2, torch_threads=1,
                                whole=True)),
        ({"CPU": 1.0}, {}, dict(actor_cpus=1.0, pool_size=1, whole=True)),
        ({"CPU": 0.5}, {}, dict(actor_cpus=0.5, pool_size=1, whole=True)),
        ({"CPU": 16.0}, {}, dict(actor_cpus=1.0, pool_size=16)),
        ({"CPU": 4.0}, {"deep_actors": 3}, dict(pool_size=3)),
        ({"CPU": 4.0}, {"deep_actors": 9}, dict(pool_size=4)),  # capped: one per CPU
        ({"CPU": 4.0}, {"torch_threads": 2}, dict(pool_size=4, torch_threads=2)),
        ({"CPU": 8.0, "GPU": 2.0}, {"device": "cpu"}, dict(actor_gpus=0.0, pool_size=8, whole=True)),
        # GPUs: CPU tasks feed one backbone actor per GPU
        ({"CPU": 8.0, "GPU": 2.0}, {}, dict(task_cpus=1.0, actor_gpus=1.0, actor_cpus=1.0, pool_size=2, whole=False)),
        ({"CPU": 4.0, "GPU": 1.0}, {"deep_resources": {"gpu_node": 1}}, dict(actor_resources={"gpu_node": 1})),
    ],
)
def test_plan_never_lets_actors_take_every_cpu(cluster, kw, expect):
    plan = plan_stages(cluster, GraphConfig(**kw))
    for key, value in expect.items():
        assert getattr(plan, key) == value, key
    if not plan.actor_gpus:
        assert plan.pool_size * plan.actor_cpus + plan.task_cpus <= cluster["CPU"]


def test_plan_with_a_separate_network_pool_on_cpus_splits_each_cpu():
    # CPU only, inpaint_placement="separate": CPU tasks, a backbone pool and the network's pool, half a CPU each
    plan = plan_stages({"CPU": 4.0}, GraphConfig(inpaint_placement="separate"), network=True)
    assert not plan.whole and (plan.task_cpus, plan.actor_cpus, plan.inpaint_cpus) == (0.5, 0.5, 0.5)
    assert plan.pool_size * plan.actor_cpus + plan.inpaint_pool * plan.inpaint_cpus + plan.task_cpus <= 4


def test_plan_without_a_backbone_runs_the_whole_pipeline_in_tasks():
    for cluster in ({"CPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}):  # descriptors only: no GPU needed
        plan = plan_stages(cluster, GraphConfig(), deep=False)
        assert plan.whole and (plan.actor_cpus, plan.actor_gpus, plan.inpaint_pool) == (1.0, 0.0, 0)
    # a network inpainter without a backbone takes the backbone's plan
    alone = plan_stages({"CPU": 2.0}, GraphConfig(), network=True, deep=False)
    assert (alone.inpaint_pool, alone.inpaint_cpus, alone.task_cpus) == (2, 0.5, 0.5)


def test_plan_needs_cpus():
    with pytest.raises(PipelineError, match="no CPUs"):
        plan_stages({"GPU": 1.0}, GraphConfig())


def test_job_entry_point_defaults_to_the_ray_backend(tmp_path, folder, local_ray, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "jobs" / "index.py"
    spec = importlib.util.spec_from_file_location("jobs_index", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    run_dir = tmp_path / "job"
    rc = job.main([str(folder), "--db", str(tmp_path / "job.db"), "--collection", "job", "--run-dir", str(run_dir),
                   "--backbone", "none", "--descriptors", "gabor", "--shard-size", "10"])
    assert rc == 0
    assert "indexed 24, duplicates 1, rejected 2" in capsys.readouterr().out
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["backend"] == "ray" and stats["shards"] == 3 and stats["stage_nodes"]["descriptors"]
    with pytest.raises(SystemExit) as exc:
        job.main(["--help"])
    assert exc.value.code == 0 and "python jobs/index.py" in capsys.readouterr().out


def _actor_pids(name: str) -> list[int]:
    """Processes of this machine whose command line (Ray's process title) names ``name``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if name in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_a_killed_whole_pipeline_worker_is_retried(tmp_path, folder, local_ray):
    """Without GPUs the backbone runs in the whole-pipeline tasks: SIGKILL the first such worker as soon
    as it exists; Ray retries its task in another worker (which builds the backbone again) and the job
    completes with every row. (With GPUs the backbone's actors are restarted instead: ACTOR_RESTARTS.)"""
    import signal
    import threading

    killed: list[int] = []
    before = set(_actor_pids("whole_batch"))

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in set(_actor_pids("whole_batch")) - before:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    s = run_index_ray(deep_spec(), _cfg(tmp_path, folder, "taskkill", "ray"))
    thread.join()
    assert killed, "the whole-pipeline worker was never seen"
    assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2) and s.rows_written == 24
    assert _stored(_cfg(tmp_path, folder, "taskkill", "ray"))[1] == 24


# Last in the file: it shuts down the module's Ray instance to start a multi-node cluster.
def test_deep_actors_run_on_the_gpu_node_and_descriptors_elsewhere(tmp_path, folder):
    """Head: 1 CPU, no GPU. Worker: 1 CPU, 1 logical GPU and a custom resource; the backbone actor
    takes both of the worker's CPU and GPU, so the read/descriptor tasks can only run on the head.

    Images are damaged and reconstructed by the two-stage network: its pre-fill runs in the head's
    CPU tasks (stage ``inpaint``), the network in the GPU node's actor with the backbone (``inpaint_net``)."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, num_gpus=1, resources={"deep_node": 1})
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        head_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "deep_node" not in n["Resources"])
        assert worker.node_id != head_id
        cfg = _cfg(tmp_path, folder, "gpu", "ray", deep_resources={"deep_node": 1})
        s = run_index_ray(deep_spec(), cfg, transform=_network_hook(tmp_path))
        assert (s.indexed, s.duplicates, s.rejected) == (24, 1, 2)
        stats = json.loads((tmp_path / "gpu" / "stats.json").read_text())
        nodes = stats["stage_nodes"]
        assert nodes["deep"] == [worker.node_id] and nodes["inpaint_net"] == [worker.node_id]
        assert nodes["decode"] == nodes["inpaint"] == [head_id]
        # the descriptors follow the actors: once the actor pool is done, Ray may give the last batches
        # to the GPU node's freed CPU
        assert head_id in nodes["descriptors"]
        items = stats["stage_node_items"]
        assert {k: v for k, v in items.items() if k != "descriptors"} == {
            "decode": {head_id: 27}, "inpaint": {head_id: 25}, "inpaint_net": {worker.node_id: 25},
            "deep": {worker.node_id: 25}}
        assert sum(items["descriptors"].values()) == 25 and items["descriptors"][head_id] > 0
        # rows and seconds per node add up to each stage's totals
        print("stage_node_items on the logical-GPU cluster (head %s, GPU node %s): %s"
              % (head_id[:8], worker.node_id[:8], json.dumps(stats["stage_node_items"])))
        for stage, per_node in stats["stage_node_seconds"].items():
            assert sum(per_node.values()) == pytest.approx(stats["stage_seconds"][stage], abs=0.01)
    finally:
        ray.shutdown()
        cluster.shutdown()
