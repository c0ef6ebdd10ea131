"""The Ray Data graph of the index job; the only module that imports ray.

::

    from_items(paths of the pending shards)
      └─ map_batches(decode_batch)        CPU tasks: read, hash, decode; a status per file, never raising
      └─ map_batches(transform_batch)     CPU tasks: the optional masking/inpainting hook
      └─ map_batches(describe_batch)      CPU tasks: the handcrafted descriptor blocks
      └─ map_batches(DeepActor)           actor pool: the backbone, loaded once per actor; 1 GPU each when
                                          the cluster has GPUs, else a CPU share that leaves room for tasks
      └─ iter_batches → driver            the single writer: dedupe, fuse, upsert, shard markers (IndexRun)

Consecutive CPU stages with the same resources are fused by Ray Data into one task, so a decoded
image crosses the object store once, to the backbone actor, which drops it. The driver (the one
process allowed to open a milvus-lite file) finishes shards in file order with the same
:class:`~cbir_dist.indexer.IndexRun` as the local backend, so both backends write the same rows.

Every stage measures itself: rows carry ``t_<stage>`` (the batch's seconds shared among its rows),
the node id that ran it (``node_<stage>``) and the worker's peak RSS, summed or maxed by the driver
into ``stats.json``.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import columns as C
from .fuse import DEEP, Block, FeatureSpec
from .imageio import ImageFile
from .indexer import STAGES, ImageTransform, IndexConfig, IndexRun, IndexSummary, Shard, run_shards_in_order
from .errors import CbirError
from .ingest import OK, REJECTED, Record, read_record

log = logging.getLogger(__name__)

SHARD = "shard"  # int, shard index of the row's file
POS = "pos"  # int, position of the file inside its shard
SIZE, MTIME = "size", "mtime"
RSS = "rss_mb"  # float, peak RSS of the last worker that touched the row
TASK_RETRIES = 5  # a task whose worker died is retried this often before the job fails
ACTOR_RESTARTS = 5  # a backbone actor that died is restarted this often (its pending batches retried)
_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder image of rejected rows (keeps columns aligned)
_MANIFEST = (C.PATH, C.LABEL, SIZE, MTIME, C.ID, C.STATUS, C.ERROR)


def _t(stage: str) -> str:
    return f"t_{stage}"


def _node(stage: str) -> str:
    return f"node_{stage}"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stamp(out: dict, stage: str, seconds: float, n: int) -> dict:
    out[_t(stage)] = np.full(n, seconds / max(n, 1), np.float64)
    out[_node(stage)] = np.array([_node_id()] * n, dtype=object)
    out[RSS] = np.full(n, _rss_mb(), np.float64)
    return out


def _object_array(items: Sequence) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


# --- the stages (plain functions on dict[str, np.ndarray] batches) ---------------------------------


def decode_batch(batch: dict, *, max_pixels: int) -> dict:
    """Read, hash and decode the batch's files; rejected files keep a status and reason, never raise."""
    t = time.perf_counter()
    paths, labels = batch[C.PATH], batch[C.LABEL]
    recs = [read_record(ImageFile(str(p), str(lab)), max_pixels=max_pixels) for p, lab in zip(paths, labels)]
    out = {
        C.PATH: _object_array([r.path for r in recs]),
        C.LABEL: _object_array([r.label for r in recs]),
        SHARD: np.asarray(batch[SHARD], np.int64),
        POS: np.asarray(batch[POS], np.int64),
        SIZE: np.array([r.size for r in recs], np.int64),
        MTIME: np.array([r.mtime for r in recs], np.float64),
        C.ID: np.array([r.id for r in recs], np.int64),
        C.STATUS: _object_array([r.status for r in recs]),
        C.ERROR: _object_array([r.error for r in recs]),
        C.IMAGE: _object_array([r.image if r.image is not None else _EMPTY_IMAGE for r in recs]),
    }
    return _stamp(out, "decode", time.perf_counter() - t, len(recs))


def _ok_rows(batch: dict) -> np.ndarray:
    return np.flatnonzero(np.asarray(batch[C.STATUS]) == OK)


def _images(batch: dict, rows: np.ndarray) -> list[np.ndarray]:
    col = batch[C.IMAGE]
    return [np.asarray(col[i]) for i in rows]


def transform_batch(batch: dict, *, transform: ImageTransform) -> dict:
    """Apply the masking/inpainting hook to every ok image of the batch."""
    t = time.perf_counter()
    rows = _ok_rows(batch)
    images = _object_array(list(batch[C.IMAGE]))
    ids = batch[C.ID]
    status, error = _object_array(list(batch[C.STATUS])), _object_array(list(batch[C.ERROR]))
    for i in rows:
        try:
            images[i] = transform(np.asarray(images[i]), int(ids[i]))
        except (OSError, ValueError, CbirError) as exc:  # a per-file failure is a value, not a failed task
            status[i], error[i], images[i] = REJECTED, f"mask/inpaint failed: {exc}", _EMPTY_IMAGE
    out = dict(batch)
    out[C.IMAGE], out[C.STATUS], out[C.ERROR] = images, status, error
    return _stamp(out, "inpaint", time.perf_counter() - t, len(ids))


def describe_batch(batch: dict, *, blocks: Sequence[Block], keep_image: bool = True) -> dict:
    """Handcrafted descriptor blocks of the ok rows (zeros on the others) as ``feat_<block>`` columns."""
    from .extract import handcrafted_features

    t = time.perf_counter()
    n = len(batch[C.ID])
    rows = _ok_rows(batch)
    feats = handcrafted_features(_images(batch, rows), blocks)
    out = {k: v for k, v in batch.items() if keep_image or k != C.IMAGE}
    for b in blocks:
        if b.name == DEEP:
            continue
        col = np.zeros((n, b.dim), np.float32)
        col[rows] = feats[b.name]
        out[C.block_column(b.name)] = col
    return _stamp(out, "descriptors", time.perf_counter() - t, n)


class DeepActor:
    """Actor body of the backbone stage: ``__init__`` loads the model once, ``__call__`` describes a batch.

    Outputs the deep block as ``feat_deep`` (zeros on non-ok rows) and drops the image column.
    """

    def __init__(self, block: Block, *, device: str | None = None, weights: str | None = None,
                 batch_size: int = 32, torch_threads: int | None = None):
        from .extract import DeepFeatures

        if torch_threads is not None:
            import torch

            torch.set_num_threads(int(torch_threads))
        self.block = block
        self.deep = DeepFeatures(block, device=device, weights=weights, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        t = time.perf_counter()
        n = len(batch[C.ID])
        rows = _ok_rows(batch)
        col = np.zeros((n, self.block.dim), np.float32)
        if len(rows):
            col[rows] = self.deep(_images(batch, rows))
        out = {k: v for k, v in batch.items() if k != C.IMAGE}
        out[C.block_column(DEEP)] = col
        return _stamp(out, "deep", time.perf_counter() - t, n)


# --- resources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """Resources of the CPU tasks and of the backbone actor pool."""

    task_cpus: float
    actor_cpus: float
    actor_gpus: float
    pool_size: int
    torch_threads: int | None
    actor_resources: Mapping[str, float] | None = None


def plan_stages(cluster: Mapping[str, float], config: IndexConfig) -> StagePlan:
    """Split the cluster between CPU tasks and backbone actors so that neither can starve the other.

    With GPUs (and ``config.device`` not ``"cpu"``): one actor per GPU (``num_gpus=1``, one CPU to
    feed it). Without: up to one single-threaded actor per CPU for two thirds of the CPUs (the
    backbone usually costs more than decoding and descriptors; Ray Data grows the pool from one
    actor as batches queue up), and never more than ``CPU - task_cpus`` CPUs together, so at least
    one read/descriptor task can always run (an actor pool holding every CPU would leave the tasks
    that feed it unscheduled: the job hangs without an error).
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    if cpus <= 0:
        raise RuntimeError("the Ray cluster has no CPUs to run the read and descriptor tasks on")
    task_cpus = 1.0 if cpus >= 2 else 0.5
    extra = dict(config.deep_resources) if config.deep_resources else None
    if gpus >= 1 and (config.device is None or str(config.device).startswith("cuda")):
        pool = config.deep_actors or int(gpus)
        return StagePlan(task_cpus, 1.0 if cpus >= 2 else 0.0, 1.0, min(pool, int(gpus)),
                         config.torch_threads, extra)
    budget = cpus - task_cpus
    actor_cpus = 1.0 if budget >= 1 else max(budget, 0.25)
    pool = config.deep_actors or max(1, int(cpus * 2 // 3))
    pool = max(1, min(pool, int(budget // actor_cpus)))
    threads = config.torch_threads or max(1, int(actor_cpus))
    return StagePlan(task_cpus, actor_cpus, 0.0, pool, threads, extra)


# --- the graph --------------------------------------------------------------------------------------


def build_dataset(spec: FeatureSpec, config: IndexConfig, shards: Sequence[Shard], plan: StagePlan, *,
                  transform: ImageTransform | None = None):
    """The lazy Ray Dataset computing every block of ``spec`` for the files of ``shards``."""
    import ray

    items = [
        {C.PATH: f.path, C.LABEL: f.label, SHARD: s.index, POS: j}
        for s in shards for j, f in enumerate(s.files)
    ]
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_retries/max_restarts/max_task_retries through map_batches'
        # **ray_remote_args but has no named parameter for them yet; we want them explicit and finite.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return _build(ray, items, spec, config, plan, transform)


def _build(ray, items, spec, config, plan, transform):
    bs = config.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / bs)))
    task_args = dict(batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
                     num_cpus=plan.task_cpus, max_retries=TASK_RETRIES)
    ds = ds.map_batches(decode_batch, fn_kwargs={"max_pixels": config.max_pixels}, **task_args)
    if transform is not None:
        ds = ds.map_batches(transform_batch, fn_kwargs={"transform": transform}, **task_args)
    deep = spec.deep
    hand = [b for b in spec.blocks if b.name != DEEP]
    if hand or deep is None:
        ds = ds.map_batches(describe_batch, fn_kwargs={"blocks": hand, "keep_image": deep is not None},
                            **task_args)
    if deep is not None:
        actor_args = dict(num_cpus=plan.actor_cpus, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
        if plan.actor_gpus:
            actor_args["num_gpus"] = plan.actor_gpus
        if plan.actor_resources:
            actor_args["resources"] = dict(plan.actor_resources)
        ds = ds.map_batches(
            DeepActor,
            fn_constructor_args=(deep,),
            fn_constructor_kwargs={"device": config.device, "weights": config.weights_override,
                                   "batch_size": bs, "torch_threads": plan.torch_threads},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.pool_size),
            batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
            **actor_args,
        )
    return ds


class _ShardAssembler:
    """Collects streamed rows per shard; a shard is complete when every one of its files came back.

    Rows are keyed by their position in the shard, so a row delivered twice (a retried task) counts once.
    """

    def __init__(self, shards: Sequence[Shard], feature_columns: Sequence[str]):
        self.expected = {s.index: len(s.files) for s in shards}
        self.rows: dict[int, dict[int, tuple]] = {s.index: {} for s in shards}
        self.feature_columns = list(feature_columns)

    def add(self, batch: dict) -> list[int]:
        """Add a batch's rows; returns the shards it completed."""
        completed = []
        cols = [batch[c] for c in _MANIFEST]
        feats = [np.asarray(batch[c]) for c in self.feature_columns]
        for j, (s, pos) in enumerate(zip(batch[SHARD], batch[POS])):
            s = int(s)
            rows = self.rows.get(s)
            if rows is None or int(pos) in rows:  # a row delivered twice
                continue
            rows[int(pos)] = (tuple(c[j] for c in cols), [f[j] for f in feats])
            if len(rows) == self.expected[s]:
                completed.append(s)
        return completed

    def take(self, s: int) -> tuple[list[Record], dict]:
        rows, self.rows[s] = self.rows[s], None  # None: handed over; later copies of its rows are ignored
        recs, by_path = [], {}
        for pos in range(self.expected[s]):
            (path, label, size, mtime, id_, status, error), feats = rows[pos]
            recs.append(Record(str(path), str(label), int(size), float(mtime), int(id_), str(status), str(error)))
            by_path[str(path)] = feats
        return recs, by_path


def _compute_from(by_path: dict, names: Sequence[str]):
    def compute(todo: Sequence[Record]) -> dict[str, np.ndarray]:
        return {
            name: np.stack([by_path[r.path][k] for r in todo]).astype(np.float32, copy=False)
            for k, name in enumerate(names)
        }

    return compute


def stream_shards(ds, run: IndexRun, shards: Sequence[Shard]) -> Iterator[tuple[int, list[Record], object]]:
    """Execute ``ds``, yielding ``(shard index, records, compute)`` as each shard's rows are all back.

    Adds the stages' timings to ``run.clock`` and records the workers' peak RSS and node ids.
    """
    names = run.spec.names
    asm = _ShardAssembler(shards, [C.block_column(n) for n in names])
    stage_cols = [s for s in STAGES if s != "write"]
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        n = len(batch[C.ID])
        for s in stage_cols:
            if _t(s) in batch:
                ok = n if s == "decode" else int(np.sum(np.asarray(batch[C.STATUS]) == OK))
                run.clock.add(s, float(np.sum(batch[_t(s)])), ok)
                run.nodes.setdefault(s, set()).update(str(x) for x in batch[_node(s)])
        if RSS in batch and n:
            run.worker_peak_rss_mb = max(run.worker_peak_rss_mb, float(np.max(batch[RSS])))
        for s in asm.add(batch):
            recs, by_path = asm.take(s)
            yield s, recs, _compute_from(by_path, names)


# --- connecting -------------------------------------------------------------------------------------


def connect() -> bool:
    """Make sure this process is connected to Ray; returns True when it connected (and should disconnect).

    Order: an existing connection in this process; ``RAY_ADDRESS`` (a remote cluster, or the job's
    cluster under ``ray job submit``); the cluster that ``ray start`` last recorded on this machine;
    else a new local instance with all of this machine's CPUs. Deliberately not ``address="auto"``:
    that also joins any other Ray instance it finds running here (another program's, a test's).
    """
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(include_dashboard=False, log_to_driver=True)
    except ConnectionError as exc:
        if os.environ.get("RAY_ADDRESS"):
            raise
        log.warning("the Ray cluster recorded on this machine is unreachable (%s); starting a local one", exc)
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})
    return True


def run_index_ray(
    spec: FeatureSpec,
    config: IndexConfig,
    *,
    store=None,
    transform: ImageTransform | None = None,
) -> IndexSummary:
    """Index ``config.images_dir`` with the Ray Data graph above; same run directory and result as
    :func:`cbir_dist.indexer.run_index`.

    The driver is the single writer; features stream back while later files are still being read.
    Connects as :func:`connect` says and disconnects at the end if it connected. Job-level failures
    raise (no images, store errors, a stage failing after its retries); bad files never do.
    """
    import ray

    run = IndexRun(spec, config, store=store, progress=False)
    try:
        pending = run.pending
        if pending:
            started = connect()
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = bool(config.progress)
                plan = plan_stages(ray.cluster_resources(), config)
                log.info("ray plan: %s", plan)
                ds = build_dataset(run.spec, config, pending, plan, transform=transform)
                run_shards_in_order(run, stream_shards(ds, run, pending))
            finally:
                if started:
                    ray.shutdown()
        else:
            for shard in run.shards:
                run.load_done(shard)
    except BaseException:
        run.abort()
        raise
    return run.close()


# --- the query side ---------------------------------------------------------------------------------


def describe_files_ray(spec: FeatureSpec, files: Sequence[ImageFile], config: IndexConfig, *,
                       transform: ImageTransform | None = None) -> tuple[list[Record], dict[str, np.ndarray]]:
    """Every block of ``spec`` for ``files`` through the index job's Ray Data graph (the query job's path).

    Returns the files' records (status and reason per file, in the order given) and the features of
    the ok ones, block name → ``(n_ok, dim)``, in record order. ``transform`` damages and reconstructs
    each image (mask + inpainting) inside the CPU tasks.
    """
    import ray

    from pathlib import Path

    shard = Shard(0, list(files), [], Path("."), False)
    started = connect()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = bool(config.progress)
        plan = plan_stages(ray.cluster_resources(), config)
        ds = build_dataset(spec, config, [shard], plan, transform=transform)
        asm = _ShardAssembler([shard], [C.block_column(n) for n in spec.names])
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            asm.add(batch)
        recs, by_path = asm.take(0)
    finally:
        if started:
            ray.shutdown()
    ok = [r for r in recs if r.status == OK]
    return recs, _compute_from(by_path, spec.names)(ok)
