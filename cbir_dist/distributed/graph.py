"""The Ray Data graph that describes images: the index job's Ray backend and the query job's Ray path.

::

    from_items(paths of the parts to describe)
      └─ map_batches(decode_batch)        CPU tasks: read, hash, decode; a status per file, never raising
      └─ map_batches(transform_batch)     CPU tasks: the optional damage-and-reconstruct hook (a classical
                                          inpainter whole; a network's mask, damage and classical pre-fill)
      └─ map_batches(describe_batch)      CPU tasks: the handcrafted descriptor blocks
      └─ map_batches(DeepActor)           actor pool: the backbone, loaded once per actor, 1 GPU each
      └─ iter_batches → driver            rows regrouped into their parts (:class:`PartResult`)

On a cluster without GPUs, and for a spec without a backbone, the graph is one kind of CPU task,
one per CPU, each running the whole pipeline of its batch (:func:`~.stages.whole_batch`: decode,
the hook, the descriptors, the backbone built once per worker process): split into CPU tasks and
a backbone pool, the two waited on each other and left cores idle (docs/scaling.md, "Every core
busy")::

    from_items ─ map_batches(whole_batch) ─ iter_batches → driver

With a *network* inpainter (``two-stage``) its network runs in the backbone's actors, on the
pre-filled batch, before the backbone (``inpaint_placement="fused"``, the default), and the
descriptors follow the actors::

      decode ─ transform (mask, pre-fill) ─ DeepActor(network + backbone, keeps the image) ─ describe_batch

Without GPUs the network runs in the whole-pipeline task, after the pre-fill and before the
backbone and the descriptors. ``"separate"`` gives the network a pool of its own
(:class:`~.stages.InpaintActor`) between the pre-fill and the descriptors; with no backbone in the
spec the network's pool is the only one.
Classical inpainters never leave the CPU tasks.

Consecutive CPU stages with the same resources are fused by Ray Data into one task, so a decoded
image crosses the object store once, to the backbone actor, which drops it. The graph knows
nothing of shards, markers or stores: it takes :class:`GraphConfig` and a list of *parts* (lists of
files) and hands back each part's records and features once all of its rows are back, in any
order. The index job's driver (:mod:`cbir_dist.index.cluster`) finishes them in order.

Every stage measures itself: rows carry ``t_<stage>`` (the batch's seconds shared among its rows),
the node id that ran it (``node_<stage>``) and the worker's peak RSS, summed or maxed into
:class:`GraphStats`.

This module assembles the graph and consumes its stream on the driver; the stage functions and
actor bodies that run on the workers are in :mod:`.stages`, the split of the cluster's resources
between them (:class:`~.plan.StagePlan`) in :mod:`.plan`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import PipelineError
from ..features.spec import DEEP, FeatureSpec
from ..io import records as C
from ..io.files import DEFAULT_MAX_BYTES, ImageFile
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.records import OK, Record
from .connect import resources, session
from .plan import StagePlan, plan_stages
from .stages import (
    PART,
    POS,
    RSS,
    RUNTIME,
    STAGES,
    DeepActor,
    ImageTransform,
    InpaintActor,
    cpu_column,
    decode_batch,
    describe_batch,
    is_network,
    node_column,
    time_column,
    transform_batch,
    whole_batch,
)

log = logging.getLogger(__name__)

PLACEMENTS = ("fused", "separate")
TASK_RETRIES = 5  # a task whose worker died is retried this often before the job fails
ACTOR_RESTARTS = 5  # a backbone actor that died is restarted this often (its pending batches retried)


@dataclass(frozen=True)
class GraphConfig:
    """What the graph needs to run: batch size, decode limits, backbone placement and weights.

    ``torch_threads`` sets the backbone's intra-op threads in each actor or whole-pipeline task
    (default: torch's own choice beside a GPU, one without GPUs); ``deep_actors`` caps the backbone
    actor pool, or without GPUs the whole-pipeline tasks running at once (default: one per GPU, else
    one per CPU); ``deep_resources`` adds custom Ray resources each backbone actor needs (e.g.
    ``{"deep": 1}`` to pin them on tagged nodes). ``inpaint_placement`` says where a network
    inpainter runs: ``"fused"`` in the backbone's actors, ``"separate"`` in a pool of its own (the
    same resources as the backbone's; on GPUs the two pools share each GPU).
    """

    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    weights_override: str | None = None
    device: str | None = None
    torch_threads: int | None = None
    deep_actors: int | None = None
    deep_resources: Mapping[str, float] | None = None
    progress: bool = True
    inpaint_placement: str = "fused"
    runtime: str = "auto"  # what runs the backbone in the actors (features.backbones.load_backbone)

    def __post_init__(self):
        if self.inpaint_placement not in PLACEMENTS:
            raise PipelineError(f"inpaint_placement must be one of {PLACEMENTS}, got {self.inpaint_placement!r}")


@dataclass
class GraphStats:
    """Per-stage seconds and ok-image counts, the nodes that ran each stage, the busiest worker's peak RSS.

    ``seconds`` are wall seconds in the workers, ``cpu_seconds`` the CPU the workers spent on each
    stage (a stage sharing its core with others takes longer, not more CPU). ``node_items`` and
    ``node_seconds`` split each stage's rows and seconds by the node that ran them (stage → node id
    → rows / seconds; rows counted like ``counts``).
    """

    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    counts: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    cpu_seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    nodes: dict = field(default_factory=dict)
    worker_peak_rss_mb: float = 0.0
    node_items: dict = field(default_factory=dict)
    node_seconds: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)  # the last graph's StagePlan, as a dict
    runtimes: set = field(default_factory=set)  # what ran the backbone, as the actors report it

    def add_batch(self, batch: dict) -> None:
        n = len(batch[C.ID])
        ok = np.asarray(batch[C.STATUS]) == OK
        n_ok = int(np.sum(ok))
        for s in STAGES:
            if time_column(s) in batch:
                self.seconds[s] += float(np.sum(batch[time_column(s)]))
                self.cpu_seconds[s] += float(np.sum(batch[cpu_column(s)]))
                self.counts[s] += n if s == "decode" else n_ok
                self.nodes.setdefault(s, set()).update(str(x) for x in batch[node_column(s)])
                items, secs = self.node_items.setdefault(s, {}), self.node_seconds.setdefault(s, {})
                for node, t, is_ok in zip(batch[node_column(s)], batch[time_column(s)], ok):
                    node = str(node)
                    items[node] = items.get(node, 0) + int(s == "decode" or is_ok)
                    secs[node] = secs.get(node, 0.0) + float(t)
        if RSS in batch and n:
            self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, float(np.max(batch[RSS])))
        if RUNTIME in batch and n_ok:
            self.runtimes.update(str(x) for x in batch[RUNTIME])


class PartResult(NamedTuple):
    """One part, described: its records in file order and the features of its ok ones by path."""

    index: int
    records: list[Record]
    features_by_path: dict[str, list[np.ndarray]]


def features_of(result: PartResult, spec: FeatureSpec, todo: Sequence[Record]) -> dict[str, np.ndarray]:
    """Block name → ``(len(todo), dim)`` features of the records ``todo`` of ``result``."""
    by_path = result.features_by_path
    out = {}
    for k, b in enumerate(spec.blocks):
        rows = [by_path[r.path][k] for r in todo]
        out[b.name] = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, b.dim), np.float32)
    return out


# --- the graph --------------------------------------------------------------------------------------


def build_dataset(spec: FeatureSpec, parts: Sequence[tuple[int, Sequence[ImageFile]]], config: GraphConfig,
                  plan: StagePlan, *, transform: ImageTransform | None = None, stored: np.ndarray | None = None):
    """The lazy Ray Dataset computing every block of ``spec`` for the files of ``parts``; files whose
    ids are among the sorted ``stored`` come back ``stored`` (see :func:`~.stages.decode_batch`)."""
    import ray

    items = [{C.PATH: f.path, C.LABEL: f.label, C.REASON: f.reason, PART: index, POS: j}
             for index, files in parts for j, f in enumerate(files)]
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_retries/max_restarts/max_task_retries through map_batches'
        # **ray_remote_args but has no named parameter for them yet; we want them explicit and finite.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return _build(ray, items, spec, config, plan, transform, stored)


def _actor_args(cpus: float, gpus: float, resources) -> dict:
    args = dict(num_cpus=cpus, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
    if gpus:
        args["num_gpus"] = gpus
    if resources:
        args["resources"] = dict(resources)
    return args


def _pool(ray, size: int, batches: int):
    """A fixed pool of ``size`` actors, or one per batch when there are fewer: all start at once
    (grown one by one, a pool spends a short run with its CPUs idle), none without work."""
    size = max(1, min(size, batches))
    return ray.data.ActorPoolStrategy(min_size=size, max_size=size)


def _build(ray, items, spec, config, plan, transform, stored):
    bs = config.batch_size
    decode = {"max_pixels": config.max_pixels, "max_bytes": config.max_bytes, "stored": stored}
    hand = [b for b in spec.blocks if b.name != DEEP]
    batches = max(1, math.ceil(len(items) / bs))
    ds = ray.data.from_items(items, override_num_blocks=batches)
    if plan.whole:  # the whole pipeline in each task, one per CPU
        return ds.map_batches(
            whole_batch,
            fn_kwargs={"token": uuid.uuid4().hex, "block": spec.deep,
                       "hand": hand, "decode": decode,
                       "transform": transform, "device": config.device, "weights": config.weights_override,
                       "batch_size": bs, "torch_threads": plan.torch_threads, "runtime": config.runtime},
            batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
            num_cpus=plan.actor_cpus, max_retries=TASK_RETRIES,
            **({"concurrency": plan.pool_size} if config.deep_actors and spec.deep is not None else {}),
            **({"resources": dict(plan.actor_resources)} if plan.actor_resources else {}),
        )
    task_args = dict(batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
                     num_cpus=plan.task_cpus, max_retries=TASK_RETRIES)
    ds = ds.map_batches(decode_batch, fn_kwargs=decode, **task_args)
    if transform is not None:
        ds = ds.map_batches(transform_batch, fn_kwargs={"transform": transform}, **task_args)
    network = transform if is_network(transform) else None
    deep = spec.deep
    fused = network is not None and deep is not None and config.inpaint_placement == "fused"

    def deep_stage(ds, inpaint=None):
        return ds.map_batches(
            DeepActor,
            fn_constructor_args=(deep,),
            fn_constructor_kwargs={"device": config.device, "weights": config.weights_override,
                                   "batch_size": bs, "torch_threads": plan.torch_threads, "inpaint": inpaint,
                                   "runtime": config.runtime},
            compute=_pool(ray, plan.pool_size, batches),
            batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
            **_actor_args(plan.actor_cpus, plan.actor_gpus, plan.actor_resources),
        )

    if fused:  # the network and the backbone in one actor; the descriptors after it (they need the reconstruction)
        ds = deep_stage(ds, inpaint=network)
        if hand:
            ds = ds.map_batches(describe_batch, fn_kwargs={"blocks": hand, "keep_image": False}, **task_args)
        else:
            ds = ds.map_batches(_drop_image, **task_args)
        return ds
    if network is not None:
        ds = ds.map_batches(
            InpaintActor, fn_constructor_args=(network,),
            fn_constructor_kwargs={"device": config.device, "torch_threads": plan.inpaint_threads},
            compute=_pool(ray, plan.inpaint_pool, batches),
            batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
            **_actor_args(plan.inpaint_cpus, plan.inpaint_gpus, plan.actor_resources),
        )
    if hand or deep is None:
        ds = ds.map_batches(describe_batch, fn_kwargs={"blocks": hand, "keep_image": deep is not None},
                            **task_args)
    if deep is not None:
        ds = deep_stage(ds)
    return ds


def _drop_image(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != C.IMAGE}


class _PartAssembler:
    """Collects streamed rows per part; a part is complete when every one of its files came back.

    Rows are keyed by their position in the part, so a row delivered twice (a retried task) counts once.
    """

    def __init__(self, parts: Sequence[tuple[int, Sequence[ImageFile]]], feature_columns: Sequence[str]):
        self.expected = {index: len(files) for index, files in parts}
        self.rows: dict[int, dict[int, tuple] | None] = {index: {} for index, _ in parts}
        self.feature_columns = list(feature_columns)

    def add(self, batch: dict) -> list[int]:
        """Add a batch's rows; returns the parts it completed."""
        completed = []
        cols = [batch[c] for c in C.MANIFEST_COLUMNS]
        feats = [np.asarray(batch[c]) for c in self.feature_columns]
        for j, (p, pos) in enumerate(zip(batch[PART], batch[POS])):
            p = int(p)
            rows = self.rows.get(p)
            if rows is None or int(pos) in rows:  # a row delivered twice, or of a part handed over
                continue
            rows[int(pos)] = (tuple(c[j] for c in cols), [f[j] for f in feats])
            if len(rows) == self.expected[p]:
                completed.append(p)
        return completed

    def take(self, p: int) -> PartResult:
        rows, self.rows[p] = self.rows[p], None  # None: handed over; later copies of its rows are ignored
        recs, by_path = [], {}
        for pos in range(self.expected[p]):
            (path, label, size, mtime, id_, status, error), feats = rows[pos]
            recs.append(Record(str(path), str(label), int(size), float(mtime), int(id_), str(status), str(error)))
            by_path[str(path)] = feats
        return PartResult(p, recs, by_path)

    def missing(self) -> list[int]:
        return [p for p, rows in self.rows.items() if rows is not None]


#: Ray Data settings of the graph (on the dataset's own copy of the context, see :func:`data_context`).
#: ``op_resource_reservation_enabled``: Ray Data's resource allocator reserves a share of the cluster
#: for each operator and caps each operator's tasks by it: on 2 CPUs it let one decode-and-describe
#: task run at a time (1.39 tasks running on average, 1.35 cores busy). :class:`~.plan.StagePlan`
#: already splits the CPUs between the tasks and the actor pools so that neither starves the other.
DATA_CONTEXT = {"op_resource_reservation_enabled": False}


@contextlib.contextmanager
def data_context(**settings) -> Iterator[None]:
    """The current Ray Data context with ``settings`` while a dataset is built: each dataset copies the
    context when it is created and keeps its copy, so the caller's own context is left as it was."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


@contextlib.contextmanager
def run_graph(spec: FeatureSpec, parts: Sequence[tuple[int, Sequence[ImageFile]]], config: GraphConfig, *,
              transform: ImageTransform | None = None, stats: GraphStats | None = None,
              stored: np.ndarray | None = None) -> Iterator[Iterator[PartResult]]:
    """Connect to Ray (:mod:`.connect`), build the graph for ``parts`` and hand over a stream of
    :class:`PartResult`, each yielded as soon as all of its rows are back (in any order). Files whose
    ids are among the sorted ``stored`` come back with status ``stored`` and no features.

    Stage timings, nodes and the workers' peak RSS accumulate into ``stats``. The stream raises
    :class:`~cbir_dist.errors.PipelineError` when the graph ends with a part incomplete. Disconnects
    at the end of the block when it connected.
    """
    import ray

    stats = stats if stats is not None else GraphStats()
    with session():
        plan = plan_stages(resources(), config, network=is_network(transform), deep=spec.deep is not None)
        log.info("ray plan: %s", plan)
        stats.plan = dataclasses.asdict(plan)
        ray.data.DataContext.get_current().enable_progress_bars = bool(config.progress)  # read when iterating
        with data_context(**DATA_CONTEXT):
            ds = build_dataset(spec, parts, config, plan, transform=transform, stored=stored)
        asm = _PartAssembler(parts, [C.block_column(n) for n in spec.names])

        def stream() -> Iterator[PartResult]:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                stats.add_batch(batch)
                for p in asm.add(batch):
                    yield asm.take(p)
            if asm.missing():
                raise PipelineError(f"the Ray graph ended before parts {asm.missing()[:10]} were complete")

        results = stream()
        try:
            yield results
        finally:
            # End Ray Data's iteration while still connected: closed later (after ray.shutdown, e.g.
            # when the consumer failed), its executor's shutdown would start a new Ray instance and hang.
            results.close()


def describe_files(spec: FeatureSpec, files: Sequence[ImageFile], config: GraphConfig, *,
                   transform: ImageTransform | None = None) -> tuple[list[Record], dict[str, np.ndarray]]:
    """Every block of ``spec`` for ``files`` through the graph (the query job's Ray path).

    Returns the files' records (status and reason per file, in the order given) and the features of
    the ok ones, block name → ``(n_ok, dim)``, in record order.
    """
    with run_graph(spec, [(0, list(files))], config, transform=transform) as stream:
        (result,) = list(stream)
    ok = [r for r in result.records if r.status == OK]
    return result.records, features_of(result, spec, ok)
