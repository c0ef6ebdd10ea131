"""The Ray Data graph that describes images: the index job's Ray backend and the query job's Ray path.

::

    from_items(paths of the parts to describe)
      └─ map_batches(decode_batch)        CPU tasks: read, hash, decode; a status per file, never raising
      └─ map_batches(transform_batch)     CPU tasks: the optional damage-and-reconstruct hook (a classical
                                          inpainter whole; a network's mask, damage and classical pre-fill)
      └─ map_batches(describe_batch)      CPU tasks: the handcrafted descriptor blocks
      └─ map_batches(DeepActor)           actor pool: the backbone, loaded once per actor; 1 GPU each when
                                          the cluster has GPUs, else a CPU share that leaves room for tasks
      └─ iter_batches → driver            rows regrouped into their parts (:class:`PartResult`)

With a *network* inpainter (``two-stage``) its network runs in the backbone's actors, on the
pre-filled batch, before the backbone (``inpaint_placement="fused"``, the default), and the
descriptors follow the actors::

      decode ─ transform (mask, pre-fill) ─ DeepActor(network + backbone, keeps the image) ─ describe_batch

``"separate"`` gives the network a pool of its own (:class:`InpaintActor`) between the pre-fill and
the descriptors; with no backbone in the spec the network's pool is the only one. Classical
inpainters never leave the CPU tasks.

Consecutive CPU stages with the same resources are fused by Ray Data into one task, so a decoded
image crosses the object store once, to the backbone actor, which drops it. The graph knows
nothing of shards, markers or stores: it takes :class:`GraphConfig` and a list of *parts* (lists of
files) and hands back each part's records and features once all of its rows are back, in any
order. The index job's driver (:mod:`cbir_dist.index.cluster`) finishes them in order.

Every stage measures itself: rows carry ``t_<stage>`` (the batch's seconds shared among its rows),
the node id that ran it (``node_<stage>``) and the worker's peak RSS, summed or maxed into
:class:`GraphStats`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import PipelineError
from ..features.spec import DEEP, Block, FeatureSpec
from ..io import records as C
from ..damage.hook import apply_transform, prepare_record
from ..io.files import DEFAULT_MAX_BYTES, ImageFile, peak_rss_mb
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.records import OK, REJECTED, Record, read_record
from .connect import node_id, resources, session

log = logging.getLogger(__name__)

PART = "part"  # int, index of the row's part
POS = "pos"  # int, position of the file inside its part
RSS = "rss_mb"  # float, peak RSS of the last worker that touched the row
KNOWN = "known"  # object, the known-pixel mask a network still has to use (an empty array when none)
#: ``inpaint``: the hook's CPU part (mask + classical inpainter, or a network's pre-fill); ``inpaint_net``:
#: the network, in actors
STAGES = ("decode", "inpaint", "inpaint_net", "deep", "descriptors")
PLACEMENTS = ("fused", "separate")
TASK_RETRIES = 5  # a task whose worker died is retried this often before the job fails
ACTOR_RESTARTS = 5  # a backbone actor that died is restarted this often (its pending batches retried)
_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder image of rejected rows (keeps columns aligned)

#: ``transform(image, path) -> image``: the damage-and-reconstruct hook (picklable).
ImageTransform = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class GraphConfig:
    """What the graph needs to run: batch size, decode limits, backbone placement and weights.

    ``torch_threads`` sets torch's intra-op threads in each backbone actor (default: as many as the
    CPUs the actor holds); ``deep_actors`` caps the backbone actor pool (default: one per GPU, else
    2/3 of the CPUs); ``deep_resources`` adds custom Ray resources each backbone actor needs (e.g.
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

    def __post_init__(self):
        if self.inpaint_placement not in PLACEMENTS:
            raise PipelineError(f"inpaint_placement must be one of {PLACEMENTS}, got {self.inpaint_placement!r}")


@dataclass
class GraphStats:
    """Per-stage seconds and ok-image counts, the nodes that ran each stage, the busiest worker's peak RSS.

    ``node_items`` and ``node_seconds`` split each stage's rows and seconds by the node that ran
    them (stage → node id → rows / seconds; rows counted like ``counts``).
    """

    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    counts: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    nodes: dict = field(default_factory=dict)
    worker_peak_rss_mb: float = 0.0
    node_items: dict = field(default_factory=dict)
    node_seconds: dict = field(default_factory=dict)

    def add_batch(self, batch: dict) -> None:
        n = len(batch[C.ID])
        ok = np.asarray(batch[C.STATUS]) == OK
        n_ok = int(np.sum(ok))
        for s in STAGES:
            if _t(s) in batch:
                self.seconds[s] += float(np.sum(batch[_t(s)]))
                self.counts[s] += n if s == "decode" else n_ok
                self.nodes.setdefault(s, set()).update(str(x) for x in batch[_node(s)])
                items, secs = self.node_items.setdefault(s, {}), self.node_seconds.setdefault(s, {})
                for node, t, is_ok in zip(batch[_node(s)], batch[_t(s)], ok):
                    node = str(node)
                    items[node] = items.get(node, 0) + int(s == "decode" or is_ok)
                    secs[node] = secs.get(node, 0.0) + float(t)
        if RSS in batch and n:
            self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, float(np.max(batch[RSS])))


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


def _t(stage: str) -> str:
    return f"t_{stage}"


def _node(stage: str) -> str:
    return f"node_{stage}"


def _rss_mb() -> float:
    return peak_rss_mb()


def _stamp(out: dict, stage: str, seconds: float, n: int) -> dict:
    out[_t(stage)] = np.full(n, seconds / max(n, 1), np.float64)
    out[_node(stage)] = np.array([node_id()] * n, dtype=object)
    out[RSS] = np.full(n, _rss_mb(), np.float64)
    return out


def _object_array(items: Sequence) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


# --- the stages (plain functions on dict[str, np.ndarray] batches) ---------------------------------


def decode_batch(batch: dict, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Read, hash and decode the batch's files; rejected files keep a status and reason, never raise."""
    t = time.perf_counter()
    recs = [read_record(ImageFile(str(p), str(lab), str(why)), max_pixels=max_pixels, max_bytes=max_bytes)
            for p, lab, why in zip(batch[C.PATH], batch[C.LABEL], batch[C.REASON])]
    out = {
        C.PATH: _object_array([r.path for r in recs]),
        C.LABEL: _object_array([r.label for r in recs]),
        PART: np.asarray(batch[PART], np.int64),
        POS: np.asarray(batch[POS], np.int64),
        C.SIZE: np.array([r.size for r in recs], np.int64),
        C.MTIME: np.array([r.mtime for r in recs], np.float64),
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


_NO_MASK = np.zeros((0, 0), bool)  # the KNOWN value of rows the network has nothing to do for


def is_network(transform) -> bool:
    """True when ``transform`` is a hook whose inpainter is a network (it has a CPU and a network half)."""
    return bool(getattr(transform, "network", False))


def transform_batch(batch: dict, *, transform: ImageTransform) -> dict:
    """Apply the damage-and-reconstruct hook to every ok image of the batch.

    For a network inpainter only its CPU half runs here (:meth:`DamageTransform.prepare`): the image
    column then holds the pre-fills and a ``known`` column the masks, for the network's actors.
    """
    t = time.perf_counter()
    rows = _ok_rows(batch)
    images = _object_array(list(batch[C.IMAGE]))
    paths = batch[C.PATH]
    status, error = _object_array(list(batch[C.STATUS])), _object_array(list(batch[C.ERROR]))
    network = is_network(transform)
    known = _object_array([_NO_MASK] * len(paths))
    for i in rows:
        rec = Record(str(paths[i]), "", image=np.asarray(images[i]))
        if network:
            k = prepare_record(rec, transform)
            if k is not None:
                known[i] = k
        else:
            apply_transform(rec, transform)  # a per-file failure is a value, not a failed task
        if rec.status == REJECTED:
            status[i], error[i], images[i] = REJECTED, rec.error, _EMPTY_IMAGE
        else:
            images[i] = rec.image
    out = dict(batch)
    out[C.IMAGE], out[C.STATUS], out[C.ERROR] = images, status, error
    if network:
        out[KNOWN] = known
    return _stamp(out, "inpaint", time.perf_counter() - t, len(paths))


def refine_batch(batch: dict, stage) -> dict:
    """The network half on the batch's pre-filled rows (those with a mask), in place of their images.

    One call for the whole batch (one forward per image size); if it fails, images are retried one
    at a time and those that still fail are rejected with the reason. Drops the ``known`` column.
    """
    n = len(batch[C.ID])
    known_col = batch.get(KNOWN)
    out = {k: v for k, v in batch.items() if k != KNOWN}
    if known_col is None:
        return out
    ok = np.asarray(batch[C.STATUS]) == OK
    rows = [i for i in range(n) if ok[i] and np.asarray(known_col[i]).size]
    if not rows:
        return out
    images = _object_array(list(batch[C.IMAGE]))
    status, error = _object_array(list(batch[C.STATUS])), _object_array(list(batch[C.ERROR]))
    pre = [np.asarray(images[i]) for i in rows]
    masks = [np.asarray(known_col[i], dtype=bool) for i in rows]
    try:
        done = stage.refine(pre, masks)
    except Exception:  # noqa: BLE001 - find the image that fails, keep the others
        done = []
        for p, m in zip(pre, masks):
            try:
                done.append(stage.refine([p], [m])[0])
            except Exception as exc:  # noqa: BLE001 - a per-file failure is a value
                done.append(exc)
    for i, r in zip(rows, done):
        if isinstance(r, Exception):
            status[i], error[i], images[i] = REJECTED, f"mask/inpaint failed: {type(r).__name__}: {r}", _EMPTY_IMAGE
        else:
            images[i] = r
    out[C.IMAGE], out[C.STATUS], out[C.ERROR] = images, status, error
    return out


def _network_stage(transform, device, torch_threads):
    from ..damage.hook import NetworkStage

    stage = transform.network_stage()
    return NetworkStage(stage.inpainter, device=device, num_threads=torch_threads, **stage.options)


class InpaintActor:
    """Actor body of a network inpainter's own pool (``inpaint_placement="separate"``, or no backbone).

    ``__init__`` loads the network once; ``__call__`` refines a batch's pre-filled rows under
    ``torch.inference_mode()`` (bf16/fp16 autocast on CUDA) and keeps the image column for the descriptors.
    """

    def __init__(self, transform, *, device: str | None = None, torch_threads: int | None = None):
        self.stage = _network_stage(transform, device, torch_threads)
        self.stage.load()

    def __call__(self, batch: dict) -> dict:
        t = time.perf_counter()
        out = refine_batch(batch, self.stage)
        return _stamp(out, "inpaint_net", time.perf_counter() - t, len(batch[C.ID]))


def describe_batch(batch: dict, *, blocks: Sequence[Block], keep_image: bool = True) -> dict:
    """Handcrafted descriptor blocks of the ok rows (zeros on the others) as ``feat_<block>`` columns."""
    from ..features.extract import handcrafted_features

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

    Outputs the deep block as ``feat_deep`` (zeros on non-ok rows) and drops the image column. With
    ``inpaint`` (a network inpainter's hook, ``inpaint_placement="fused"``) the actor also loads that
    network and first refines the batch's pre-filled rows; it then keeps the (reconstructed) images
    for the descriptor tasks that follow it.
    """

    def __init__(self, block: Block, *, device: str | None = None, weights: str | None = None,
                 batch_size: int = 32, torch_threads: int | None = None, inpaint=None):
        from ..features.extract import DeepFeatures

        self.block = block
        self.deep = DeepFeatures(block, device=device, weights=weights, batch_size=batch_size,
                                 num_threads=torch_threads)
        self.stage = _network_stage(inpaint, device, torch_threads) if inpaint is not None else None
        if self.stage is not None:
            self.stage.load()

    def __call__(self, batch: dict) -> dict:
        n = len(batch[C.ID])
        if self.stage is not None:
            t = time.perf_counter()
            batch = _stamp(refine_batch(batch, self.stage), "inpaint_net", time.perf_counter() - t, n)
        t = time.perf_counter()
        rows = _ok_rows(batch)
        col = np.zeros((n, self.block.dim), np.float32)
        if len(rows):
            col[rows] = self.deep(_images(batch, rows))
        out = {k: v for k, v in batch.items() if k != C.IMAGE or self.stage is not None}
        out[C.block_column(DEEP)] = col
        return _stamp(out, "deep", time.perf_counter() - t, n)


# --- resources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """Resources of the CPU tasks, of the backbone actor pool and of a network inpainter's own pool.

    ``inpaint_pool`` is 0 when the network has no pool of its own (no network, or fused into the
    backbone's actors).
    """

    task_cpus: float
    actor_cpus: float
    actor_gpus: float
    pool_size: int
    torch_threads: int | None
    actor_resources: Mapping[str, float] | None = None
    inpaint_cpus: float = 0.0
    inpaint_gpus: float = 0.0
    inpaint_pool: int = 0
    inpaint_threads: int | None = None


def plan_stages(cluster: Mapping[str, float], config: GraphConfig, *, network: bool = False,
                deep: bool = True) -> StagePlan:
    """:func:`plan_actors` for the backbone, then room for a network inpainter (``network``) when it
    needs a pool of its own: always without a backbone (``deep`` False, it takes the backbone's
    plan), and with ``inpaint_placement="separate"``, when the two pools split the actors'
    resources: half a GPU each per GPU, or the CPU budget in two (tasks keep theirs)."""
    from dataclasses import replace

    plan = plan_actors(cluster, config)
    if not network or (deep and config.inpaint_placement == "fused"):
        return plan
    if not deep:
        return replace(plan, inpaint_cpus=plan.actor_cpus, inpaint_gpus=plan.actor_gpus, inpaint_pool=plan.pool_size,
                       inpaint_threads=plan.torch_threads)
    if plan.actor_gpus:  # both pools on every GPU node: each takes half of what one actor would
        halved = {k: v / 2 for k, v in plan.actor_resources.items()} if plan.actor_resources else None
        return replace(plan, actor_gpus=0.5, inpaint_cpus=plan.actor_cpus / 2, actor_cpus=plan.actor_cpus / 2,
                       inpaint_gpus=0.5, inpaint_pool=plan.pool_size, inpaint_threads=plan.torch_threads,
                       actor_resources=halved)
    if plan.pool_size >= 2:
        half = plan.pool_size // 2
        return replace(plan, pool_size=plan.pool_size - half, inpaint_cpus=plan.actor_cpus, inpaint_pool=half,
                       inpaint_threads=plan.torch_threads)
    share = plan.actor_cpus / 2
    return replace(plan, actor_cpus=share, inpaint_cpus=share, inpaint_pool=1, inpaint_threads=plan.torch_threads)


def plan_actors(cluster: Mapping[str, float], config: GraphConfig) -> StagePlan:
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
        raise PipelineError("the Ray cluster has no CPUs to run the read and descriptor tasks on")
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


def build_dataset(spec: FeatureSpec, parts: Sequence[tuple[int, Sequence[ImageFile]]], config: GraphConfig,
                  plan: StagePlan, *, transform: ImageTransform | None = None):
    """The lazy Ray Dataset computing every block of ``spec`` for the files of ``parts``."""
    import ray

    items = [{C.PATH: f.path, C.LABEL: f.label, C.REASON: f.reason, PART: index, POS: j}
             for index, files in parts for j, f in enumerate(files)]
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_retries/max_restarts/max_task_retries through map_batches'
        # **ray_remote_args but has no named parameter for them yet; we want them explicit and finite.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return _build(ray, items, spec, config, plan, transform)


def _actor_args(cpus: float, gpus: float, resources) -> dict:
    args = dict(num_cpus=cpus, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
    if gpus:
        args["num_gpus"] = gpus
    if resources:
        args["resources"] = dict(resources)
    return args


def _build(ray, items, spec, config, plan, transform):
    bs = config.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / bs)))
    task_args = dict(batch_size=bs, batch_format="numpy", udf_modifying_row_count=False,
                     num_cpus=plan.task_cpus, max_retries=TASK_RETRIES)
    ds = ds.map_batches(decode_batch, fn_kwargs={"max_pixels": config.max_pixels, "max_bytes": config.max_bytes},
                        **task_args)
    if transform is not None:
        ds = ds.map_batches(transform_batch, fn_kwargs={"transform": transform}, **task_args)
    network = transform if is_network(transform) else None
    deep = spec.deep
    hand = [b for b in spec.blocks if b.name != DEEP]
    fused = network is not None and deep is not None and config.inpaint_placement == "fused"

    def deep_stage(ds, inpaint=None):
        return ds.map_batches(
            DeepActor,
            fn_constructor_args=(deep,),
            fn_constructor_kwargs={"device": config.device, "weights": config.weights_override,
                                   "batch_size": bs, "torch_threads": plan.torch_threads, "inpaint": inpaint},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.pool_size),
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
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, plan.inpaint_pool)),
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


@contextlib.contextmanager
def run_graph(spec: FeatureSpec, parts: Sequence[tuple[int, Sequence[ImageFile]]], config: GraphConfig, *,
              transform: ImageTransform | None = None, stats: GraphStats | None = None
              ) -> Iterator[Iterator[PartResult]]:
    """Connect to Ray (:mod:`.connect`), build the graph for ``parts`` and hand over a stream of
    :class:`PartResult`, each yielded as soon as all of its rows are back (in any order).

    Stage timings, nodes and the workers' peak RSS accumulate into ``stats``. The stream raises
    :class:`~cbir_dist.errors.PipelineError` when the graph ends with a part incomplete. Disconnects
    at the end of the block when it connected.
    """
    import ray

    stats = stats if stats is not None else GraphStats()
    with session():
        ray.data.DataContext.get_current().enable_progress_bars = bool(config.progress)
        plan = plan_stages(resources(), config, network=is_network(transform), deep=spec.deep is not None)
        log.info("ray plan: %s", plan)
        ds = build_dataset(spec, parts, config, plan, transform=transform)
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
