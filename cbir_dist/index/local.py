"""The local backend of the index job: read, decode, damage and describe each shard on this machine.

It computes the plan's pending shards and hands each to the run's writer, in this process, as a
value (:class:`~.writer.ComputedShard`); images whose ids the plan found stored are read (their id
is their content) but neither damaged nor described. The run uses N processes,
:meth:`IndexConfig.processes <.run.IndexConfig.processes>`: ``config.workers`` (default: the cores
this process may use), never more than the shards pending. With N = 1 (one shard pending, or
``--workers 1``, or a ``processor_factory``, whose processors run here) the shards are computed
here, one after the other, and a later copy of an image is not described again; with N > 1 by N
worker processes (``spawn``ed: the parent may hold a store's threads), each with its own
:class:`ShardProcessor` (backbone included) and an equal share of the pixel budget, at most N + 1
shards in flight; the parent stays the single writer and takes the shards in file order, so the
rows are the same (a copy of an image in another shard may then be described twice, and dropped).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import numpy as np

from ..damage.hook import apply_transform
from ..errors import PipelineError, UsageError
from ..features.extract import Extractor
from ..features.spec import FeatureSpec
from ..io.files import ImageFile
from ..io.records import OK, Record, mark_stored, read_record
from .run import ImageTransform, IndexConfig, IndexRun, StageClock
from .writer import ComputedShard


def _pixels(image: np.ndarray) -> int:
    return int(image.shape[0]) * int(image.shape[1])


class ShardProcessor:
    """Reads, decodes, damages (optional hook) and describes one shard's files in this process.

    Memory is bounded by ``config.pixel_budget``, not by the shard: :meth:`read` keeps decoded images
    only while their pixels fit in the budget (the rest are decoded to be checked, then dropped),
    and :meth:`describe` works through the shard in chunks that fit in it, decoding a dropped image
    again when its chunk comes and releasing every image once its features exist. Typical shards
    (256 photos of a few hundred pixels a side) fit whole and are decoded once.
    """

    def __init__(self, spec: FeatureSpec, config: IndexConfig, *, transform: ImageTransform | None = None,
                 clock: StageClock | None = None):
        self.spec = spec
        self.config = config
        self.transform = transform
        self.clock = clock or StageClock()
        self.extractor = Extractor(spec, device=config.device, weights=config.weights_override,
                                   batch_size=config.batch_size, num_threads=config.torch_threads,
                                   runtime=config.runtime)
        self._pixels: dict[int, int] = {}  # id(record) -> its image's pixels, for records whose image was dropped

    def read(self, files: Sequence[ImageFile], stored: np.ndarray | None = None) -> list[Record]:
        """The records of ``files`` in order: ``ok`` with their image (within the budget), ``stored``
        (ok, id among the sorted ``stored`` ids: not damaged, image dropped) or ``rejected``."""
        recs, held, budget = [], 0, self.config.pixel_budget
        self._pixels.clear()  # a shard at a time: the last shard's records are finished
        for f in files:
            rec = self._load(f, stored)
            if rec.status == OK:
                pixels = _pixels(rec.image)
                if held + pixels > budget and held:  # over the budget: decoded (so checked), not kept
                    self._pixels[id(rec)] = pixels
                    rec.image = None
                else:
                    held += pixels
            recs.append(rec)
        return recs

    def _load(self, f: ImageFile, stored: np.ndarray | None = None) -> Record:
        t = time.perf_counter()
        rec = read_record(f, max_pixels=self.config.max_pixels, max_bytes=self.config.max_bytes)
        mark_stored(rec, stored)
        self.clock.add("decode", time.perf_counter() - t, 1)
        if self.transform is not None and rec.status == OK:
            t = time.perf_counter()
            apply_transform(rec, self.transform)
            self.clock.add("inpaint", time.perf_counter() - t, 1)
        return rec

    def describe(self, todo: Sequence[Record]) -> dict[str, np.ndarray]:
        """The features of ``todo`` (ok records of the last :meth:`read`), chunk by chunk within the budget."""
        if not todo:
            return {b.name: np.zeros((0, b.dim), np.float32) for b in self.spec.blocks}
        parts: list[dict[str, np.ndarray]] = []
        for chunk in self._chunks(todo):
            images = [r.image if r.image is not None else self._reload(r) for r in chunk]
            parts.append(self.features(images))
            del images
            for r in chunk:
                r.image = None  # released as soon as its features exist
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _chunks(self, todo: Sequence[Record]):
        chunk, pixels = [], 0
        for r in todo:
            n = _pixels(r.image) if r.image is not None else self._pixels.get(id(r), 0)
            if chunk and pixels + n > self.config.pixel_budget:
                yield chunk
                chunk, pixels = [], 0
            chunk.append(r)
            pixels += n
        if chunk:
            yield chunk

    def _reload(self, rec: Record) -> np.ndarray:
        again = self._load(ImageFile(rec.path, rec.label))
        self._pixels.pop(id(rec), None)
        if again.status != OK or again.id != rec.id:
            raise PipelineError(f"{rec.path} changed while it was being indexed (read again for its features, it "
                                f"{'failed: ' + again.error if again.status != OK else 'has other content'}); "
                                "rerun the same command: the job resumes")
        return again.image

    def features(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if self.extractor.runtime is not None:
            self.clock.runtimes.add(self.extractor.runtime)
        return self.extractor.blocks(images, timer=self.clock.add)

    def close(self) -> None:
        pass


ProcessorFactory = Callable[..., ShardProcessor]


def _compute(processor: ShardProcessor, index: int, files: Sequence[ImageFile], stored: np.ndarray,
             described: set[int]) -> ComputedShard:
    """One shard: read it, skip the stored ids and those in ``described`` (updated), describe the rest."""
    recs = processor.read(files, stored)
    todo = []
    for r in recs:
        if r.status == OK and r.id not in described:
            described.add(r.id)
            todo.append(r)
    return ComputedShard(index, recs, np.asarray([r.id for r in todo], np.int64), processor.describe(todo))


def _computed(run: IndexRun, config: IndexConfig, factory: ProcessorFactory,
              transform: ImageTransform | None, opened: list) -> Iterator[ComputedShard]:
    """The plan's pending shards, computed in order in this process."""
    described: set[int] = set()  # ids described in this run: a later copy is a duplicate, not described again
    for shard in run.plan.pending:
        if not opened:  # load the backbone only when there is work left
            opened.append(factory(run.spec, config, transform=transform, clock=run.clock))
        yield _compute(opened[0], shard.index, run.plan.files_of(shard), run.plan.stored, described)


_WORKER: dict = {}  # in a worker process: its processor and the stored ids


def _exit_with(parent: int) -> None:
    """In a worker: end this process as soon as ``parent`` (the job) is gone, killed included."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_init(spec: FeatureSpec, config: IndexConfig, transform: ImageTransform | None,
                 stored: np.ndarray, parent: int) -> None:
    import cv2

    # a job killed with SIGKILL cannot stop its pool: without this its workers would wait for work forever
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-the-job", daemon=True).start()
    cv2.setNumThreads(1)  # one core per worker: the workers are the parallelism
    _WORKER.update(processor=ShardProcessor(spec, config, transform=transform), stored=stored)


def _worker_shard(index: int, files: list[ImageFile]) -> tuple[ComputedShard, StageClock]:
    processor = _WORKER["processor"]
    processor.clock = StageClock()  # this shard's stage seconds, added to the run's by the parent
    computed = _compute(processor, index, files, _WORKER["stored"], set())
    for r in computed.records:
        r.image = None  # records travel back without pixels
    return computed, processor.clock


def _sendable(transform: ImageTransform | None) -> None:
    """Refuse, before any work, a transform that cannot go to the worker processes (pickled)."""
    import pickle

    try:
        pickle.dumps(transform)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise UsageError(f"the image transform {transform!r} cannot be sent to worker processes ({exc}): define it "
                         "at a module's top level, or index in this process alone (workers=1, --workers 1)") from exc


def _pooled(run: IndexRun, config: IndexConfig, transform: ImageTransform | None,
            workers: int) -> Iterator[ComputedShard]:
    """The plan's pending shards, computed by ``workers`` processes, yielded in file order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending = iter(run.plan.pending)
    share = replace(config, pixel_budget=max(1, config.pixel_budget // workers),
                    torch_threads=config.torch_threads or 1)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init,
                               initargs=(run.spec, share, transform, run.plan.stored, os.getpid()))
    flight: deque = deque()

    def submit() -> None:
        shard = next(pending, None)
        if shard is not None:
            flight.append(pool.submit(_worker_shard, shard.index, run.plan.files_of(shard)))

    try:
        for _ in range(workers + 1):
            submit()
        while flight:
            try:
                computed, clock = flight.popleft().result()
            except BrokenProcessPool as exc:
                raise PipelineError(f"an index worker process died ({exc}); rerun the same command: the job "
                                    "resumes") from exc
            submit()
            run.clock.add_all(clock)
            yield computed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failed write waits for the shards running, no more


def run_index_local(spec: FeatureSpec, config: IndexConfig, *, store=None, transform: ImageTransform | None = None,
                    processor_factory: ProcessorFactory | None = None):
    """Index ``config.images_dir`` on this machine (``config.processes`` processes: a
    ``processor_factory``'s run in this one); see :func:`cbir_dist.index.run_index`."""
    run = IndexRun(spec, config, store=store)
    opened: list[ShardProcessor] = []
    try:
        run.processes = 1 if processor_factory is not None else config.processes(len(run.plan.pending))
        if run.processes > 1:
            _sendable(transform)
            run.write(_pooled(run, config, transform, run.processes))
        else:
            run.write(_computed(run, config, processor_factory or ShardProcessor, transform, opened))
    except BaseException:
        run.abort()
        raise
    finally:
        for p in opened:
            p.close()
    return run.close()
