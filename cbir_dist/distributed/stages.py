"""The stages of the Ray Data graph (:mod:`.graph`): the functions and actor bodies that run on the workers.

Each stage is a plain function (or an actor class) on ``dict[str, np.ndarray]`` batches:
:func:`decode_batch` (read, hash, decode), :func:`transform_batch` (the damage-and-reconstruct hook,
or a network inpainter's CPU half), :func:`describe_batch` (the handcrafted descriptors),
:class:`DeepActor` (the backbone, optionally after a network inpainter), :class:`InpaintActor`
(a network inpainter's own pool) and, on clusters without GPUs and for specs without a backbone,
:func:`whole_batch` (all of them in one CPU task). A per-file failure is a row's status and
reason, never a failed task.

Every stage measures itself: rows carry ``t_<stage>`` (the batch's wall seconds shared among its
rows), ``c_<stage>`` (the CPU seconds the worker process spent on it, all its threads: the stage's
cost whatever else shares the core), the node id that ran it (``node_<stage>``) and the worker's
peak RSS (``rss_mb``), which the driver sums into :class:`~.graph.GraphStats`; the backbone's rows
also say what ran it (``runtime_deep``).

Each worker runs its stage on one thread (OpenCV's pool is set to one thread in every worker that
runs a stage; a backbone actor's torch threads are the plan's): the tasks and actors are the
parallelism, and a library's own thread pool on top of them only makes them compete for the cores.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..damage.hook import apply_transform, prepare_record
from ..features.spec import DEEP, Block
from ..io import records as C
from ..io.files import DEFAULT_MAX_BYTES, ImageFile, peak_rss_mb
from ..io.records import OK, REJECTED, Record, mark_stored, read_record
from .connect import node_id

PART = "part"  # int, index of the row's part
POS = "pos"  # int, position of the file inside its part
RSS = "rss_mb"  # float, peak RSS of the last worker that touched the row
RUNTIME = "runtime_deep"  # object, what ran the backbone on the row ("onnxruntime 1.32.0", "torch ... cuda bf16")
KNOWN = "known"  # object, the known-pixel mask a network still has to use (an empty array when none)
#: ``inpaint``: the hook's CPU part (mask + classical inpainter, or a network's pre-fill); ``inpaint_net``:
#: the network, in actors
STAGES = ("decode", "inpaint", "inpaint_net", "deep", "descriptors")
_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder image of rejected rows (keeps columns aligned)

#: ``transform(image, path) -> image``: the damage-and-reconstruct hook (picklable).
ImageTransform = Callable[[np.ndarray, str], np.ndarray]


def time_column(stage: str) -> str:
    """The column of a stage's wall seconds per row."""
    return f"t_{stage}"


def cpu_column(stage: str) -> str:
    """The column of a stage's CPU seconds per row (the worker process's, all threads)."""
    return f"c_{stage}"


def node_column(stage: str) -> str:
    """The column of the node id that ran a stage on the row."""
    return f"node_{stage}"


def _rss_mb() -> float:
    return peak_rss_mb()


_ONE_THREAD = False


def _one_thread() -> None:
    """OpenCV on one thread in this worker (once per process; see the module docstring)."""
    global _ONE_THREAD
    if not _ONE_THREAD:
        import cv2

        cv2.setNumThreads(1)
        _ONE_THREAD = True


class _Clock:
    """Wall and process CPU time since it was made; :meth:`stamp` writes a stage's columns."""

    def __init__(self):
        _one_thread()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stamp(self, out: dict, stage: str, n: int) -> dict:
        per = max(n, 1)
        out[time_column(stage)] = np.full(n, (time.perf_counter() - self.wall) / per, np.float64)
        out[cpu_column(stage)] = np.full(n, (time.process_time() - self.cpu) / per, np.float64)
        out[node_column(stage)] = np.array([node_id()] * n, dtype=object)
        out[RSS] = np.full(n, _rss_mb(), np.float64)
        return out


def _object_array(items: Sequence) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


# --- the stages (plain functions on dict[str, np.ndarray] batches) ---------------------------------


def decode_batch(batch: dict, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 stored: np.ndarray | None = None) -> dict:
    """Read, hash and decode the batch's files; rejected files keep a status and reason, never raise.

    Files whose ids are among the sorted ``stored`` ids get status ``stored`` and no image: the
    later stages, which work on ``ok`` rows only, pass them by."""
    clock = _Clock()
    recs = [read_record(ImageFile(str(p), str(lab), str(why)), max_pixels=max_pixels, max_bytes=max_bytes)
            for p, lab, why in zip(batch[C.PATH], batch[C.LABEL], batch[C.REASON])]
    for r in recs:
        mark_stored(r, stored)
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
    return clock.stamp(out, "decode", len(recs))


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
    clock = _Clock()
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
    return clock.stamp(out, "inpaint", len(paths))


def refine_batch(batch: dict, stage) -> dict:
    """The network half on the batch's pre-filled rows (those with a mask), in place of their images.

    One call for the whole batch (one forward per image size); if it fails, images are retried one
    at a time (:meth:`~cbir_dist.damage.hook.NetworkStage.refine_each`) and those that still fail are
    rejected with the reason. Drops the ``known`` column.
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
    for i, r in zip(rows, stage.refine_each(pre, masks)):
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
        clock = _Clock()
        out = refine_batch(batch, self.stage)
        return clock.stamp(out, "inpaint_net", len(batch[C.ID]))


def describe_batch(batch: dict, *, blocks: Sequence[Block], keep_image: bool = True) -> dict:
    """Handcrafted descriptor blocks of the ok rows (zeros on the others) as ``feat_<block>`` columns."""
    from ..features.extract import handcrafted_features

    clock = _Clock()
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
    return clock.stamp(out, "descriptors", n)


class DeepActor:
    """Actor body of the backbone stage: ``__init__`` loads the model once, ``__call__`` describes a batch.

    Outputs the deep block as ``feat_deep`` (zeros on non-ok rows) and drops the image column. With
    ``inpaint`` (a network inpainter's hook, ``inpaint_placement="fused"``) the actor also loads that
    network and first refines the batch's pre-filled rows; it then keeps the (reconstructed) images
    for the descriptor tasks that follow it.
    """

    def __init__(self, block: Block, *, device: str | None = None, weights: str | None = None,
                 batch_size: int = 32, torch_threads: int | None = None, inpaint=None, runtime: str = "auto"):
        from ..features.extract import DeepFeatures

        self.block = block
        self.deep = DeepFeatures(block, device=device, weights=weights, batch_size=batch_size,
                                 num_threads=torch_threads, runtime=runtime)
        self.stage = _network_stage(inpaint, device, torch_threads) if inpaint is not None else None
        if self.stage is not None:
            self.stage.load()

    def __call__(self, batch: dict) -> dict:
        n = len(batch[C.ID])
        if self.stage is not None:
            clock = _Clock()
            batch = clock.stamp(refine_batch(batch, self.stage), "inpaint_net", n)
        clock = _Clock()
        rows = _ok_rows(batch)
        col = np.zeros((n, self.block.dim), np.float32)
        if len(rows):
            col[rows] = self.deep(_images(batch, rows))
        out = {k: v for k, v in batch.items() if k != C.IMAGE or self.stage is not None}
        out[C.block_column(DEEP)] = col
        out[RUNTIME] = np.array([self.deep.runtime] * n, dtype=object)  # reported back to the driver
        return clock.stamp(out, "deep", n)


class WholePipeline:
    """The whole per-image pipeline of a batch in one process (see :func:`whole_batch`).

    Read and decode (:func:`decode_batch`), the hook (:func:`transform_batch`), then the backbone
    (:class:`DeepActor`, a network inpainter first when there is one; none when ``block`` is None)
    and the descriptors (:func:`describe_batch`), in the order the images need them: the
    descriptors before the backbone (which drops the images), or after a network that reconstructs
    them. Without GPUs this keeps every core on the images: one such pipeline per CPU, each on one
    thread, is the local backend's worker pool on Ray; no image crosses the object store, and no
    stage waits for another's pool.
    """

    def __init__(self, block: Block | None, *, hand: Sequence[Block], decode: dict, transform=None,
                 device: str | None = None, weights: str | None = None, batch_size: int = 32,
                 torch_threads: int | None = None, runtime: str = "auto"):
        self.hand, self.decode, self.transform = list(hand), dict(decode), transform
        self.network = transform if is_network(transform) else None
        self.deep = None if block is None else DeepActor(block, device=device, weights=weights,
                                                         batch_size=batch_size, torch_threads=torch_threads,
                                                         inpaint=self.network, runtime=runtime)

    def __call__(self, batch: dict) -> dict:
        batch = decode_batch(batch, **self.decode)
        if self.transform is not None:
            batch = transform_batch(batch, transform=self.transform)
        if self.deep is None:
            return describe_batch(batch, blocks=self.hand, keep_image=False)
        if self.network is not None:  # the network reconstructs the images the descriptors describe
            batch = self.deep(batch)
            if not self.hand:
                return {k: v for k, v in batch.items() if k != C.IMAGE}
            return describe_batch(batch, blocks=self.hand, keep_image=False)
        if self.hand:
            batch = describe_batch(batch, blocks=self.hand, keep_image=True)
        return self.deep(batch)  # drops the images


_WHOLE: dict[str, WholePipeline] = {}  # this worker process's pipeline, by the graph's token


def whole_batch(batch: dict, *, token: str, block: Block | None, **kwargs) -> dict:
    """The whole pipeline of ``batch`` in a CPU task (:class:`WholePipeline`): the graph of clusters
    without GPUs, and of specs without a backbone.

    The pipeline (the backbone, a network inpainter) is built on the worker process's first batch of
    the graph named by ``token`` and kept for the process's later batches of that graph (Ray reuses
    a job's worker processes), the previous graph's let go. Tasks, not an actor pool: measured on 2
    cores (docs/scaling.md), Ray Data kept a pool of 2 such actors 1.3 cores busy, handing batches
    to one while the other waited, where its task pool keeps every CPU on a batch.
    """
    pipeline = _WHOLE.get(token)
    if pipeline is None:
        _WHOLE.clear()
        pipeline = _WHOLE[token] = WholePipeline(block, **kwargs)
    return pipeline(batch)
