"""The index job's run, below both backends: its config, its three steps, and its run directory.

One index job, from the driver, is three steps, each its own module:

1. **plan** (:mod:`.plan`, :class:`~.plan.RunPlan`): open the target (check the stored spec, or
   create the collection), list the files into shards, trust the markers that vouch for them, and
   take the ids already stored;
2. **compute** (a backend: :mod:`.local` in this process, :mod:`.cluster` on the Ray Data graph):
   read each pending shard, skip what is stored, describe the rest, and hand the shard over as a
   value (:class:`~.writer.ComputedShard`);
3. **write** (:mod:`.writer`, the single writer): mark duplicates, upsert, group-commit, write the
   manifests and, last, the markers; then :class:`IndexRun` closes the run: the fitted specs'
   commit (:mod:`.fitted`), the index build, the read-back, the run's tables and the summary
   (:mod:`.summary`), made from the values the writer returns.

Run state is bound to its target. Every marker records the store URI (normalised, without
credentials), the collection and the digest of the feature spec's recipe; a marker written for
another target is ignored (one log line says how many), so a rerun against another ``--db`` redoes
its shards instead of trusting them. The default run directory depends on the target too
(``runs/index-<collection>-<8 hex of the URI>``). The run directory holds:

``listing.parquet``
    the sorted file listing, one row group per shard, streamed while the folder is walked: the
    driver holds one shard's files at a time, never the whole listing (memory stays flat in the
    collection's size).
``shards/NNNNN.parquet`` then ``shards/NNNNN.done``
    the manifest rows of one shard (path, label, size, mtime, id, status, error), and its marker,
    written (fsynced, then renamed into place) only after the shard's rows were written and flushed
    (phase ``written``) — or, for specs fitted on the whole collection, after its features were
    saved (phase ``features``; the rows follow in :mod:`.fitted`'s commit). Rows are flushed and
    markers published in groups (group commit, :mod:`.writer`), so a kill loses at most one
    group's work, redone on the rerun. A rerun skips shards whose marker matches the same files
    (paths, sizes, mtimes) and the same target.
``shards/NNNNN.features.parquet``
    per-block features of a shard (``--save-features``, and always for fitted specs).
``fit.json``, ``commit.json``
    fitted specs only: the fitted statistics, then the commit marker (see :mod:`.fitted`).
``manifest.parquet``, ``errors.parquet``, ``stats.json``
    written at the end (:mod:`.summary`): every file, every file not indexed with its reason, timings.

Ids are content hashes: a shard redone after a kill never duplicates rows, nor do concurrent jobs
writing into one server collection (ids stored when the run began are not described again; every
write is an ``upsert``, idempotent by id).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import IncompleteRunError, UsageError
from ..features.onnx_runtime import check_runtime
from ..features.spec import FeatureSpec
from ..io.cpu import MachineCpu, cores_available
from ..io.files import DEFAULT_MAX_BYTES
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.progress import progress as progress_bar
from . import summary as S
from .faults import fault
from .plan import RunPlan, Shard
from .summary import STAGES, IndexSummary, StageClock, WorkerStats  # noqa: F401 - the run's public types
from .writer import ComputedShard, ShardWriter, write_in_order

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
DEFAULT_PIXEL_BUDGET = 64_000_000  # decoded pixels the local backend holds at once (see .local)

#: ``transform(image, path) -> image``: the optional damage-and-reconstruct hook applied to every
#: decoded image before its features are computed (both backends; must be picklable for Ray).
ImageTransform = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class IndexConfig:
    """Everything an index run needs besides the spec; the CLI and jobs/index.py fill it.

    ``torch_threads`` sets torch's intra-op threads for the backbone in both backends (default: one
    process leaves torch alone; each local worker process, and each Ray process without GPUs, uses
    one thread; a GPU actor leaves torch alone), and
    ONNX Runtime's. Equal thread counts make the two backends' vectors bit-identical on one machine.
    ``runtime`` (``auto``, ``torch``, ``onnx``) picks what runs the backbone (see
    :func:`cbir_dist.features.backbones.load_backbone`); what ran is recorded in ``stats.json`` and
    the collection's run history, and is no part of the spec (either runtime queries the collection).
    ``deep_actors`` caps the Ray backbone actor pool (default: one per GPU; without GPUs, the tasks
    that run the whole pipeline at once: one per CPU),
    ``deep_resources`` adds custom Ray resources each backbone actor needs (e.g. ``{"gpu_node": 1}``
    to pin them on tagged nodes). ``max_bytes`` rejects larger files before they are read;
    ``follow_symlinks`` lets symlinks that leave the input folder in. ``workers``: the local
    backend's processes (default: the cores this process may use); see :meth:`processes`.
    ``damage``: what the run's damage-and-reconstruct hook does, as recorded in ``stats.json`` and the
    collection's run history (:meth:`cbir_dist.damage.hook.DamageConfig.describe`: mask source,
    inpainter, and whether the masks were estimated, ``detect_mask``, with the estimator's identity);
    None: the images were indexed as read. :func:`~cbir_dist.index.run_index` fills it from a
    :class:`~cbir_dist.damage.hook.DamageTransform` when it is not given.
    """

    images_dir: str
    db: str = "cbir.db"
    collection: str = "images"
    token: str | None = None
    run_dir: str | None = None
    shard_size: int = 256
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    follow_symlinks: bool = False
    index_type: str = "FLAT"
    weights_override: str | None = None
    device: str | None = None
    save_features: bool = False
    overwrite: bool = False
    backend: str = "local"
    progress: bool = True
    torch_threads: int | None = None
    runtime: str = "auto"
    deep_actors: int | None = None
    deep_resources: Mapping[str, float] | None = None
    window_files: int = 8192  # ray backend: pending files per Ray Dataset (the driver's memory bound)
    #: local backend: decoded pixels held at once (64 M = 192 MB of RGB), whatever the shard size
    pixel_budget: int = DEFAULT_PIXEL_BUDGET
    #: local backend: worker processes computing shards (1: this process alone; None: the cores this
    #: process may use); see :meth:`processes` and .local
    workers: int | None = None
    #: the damage step as recorded (stats.json, run history); None: images indexed as read
    damage: Mapping[str, object] | None = None

    def __post_init__(self):
        if self.shard_size < 1 or self.batch_size < 1:
            raise UsageError("shard_size and batch_size must be >= 1")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_bytes < 1:
            raise UsageError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise UsageError(f"torch_threads must be >= 1, got {self.torch_threads}")
        check_runtime(self.runtime)
        if self.deep_actors is not None and self.deep_actors < 1:
            raise UsageError(f"deep_actors must be >= 1, got {self.deep_actors}")
        if self.pixel_budget < 1:
            raise UsageError(f"pixel_budget must be >= 1, got {self.pixel_budget}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers}")
        if self.window_files < 1:
            raise UsageError(f"window_files must be >= 1, got {self.window_files}")

    def processes(self, pending: int) -> int:
        """The processes the local backend computes ``pending`` shards with: ``workers`` (default: the
        cores this process may use, :func:`~cbir_dist.io.cpu.cores_available`), never more than the
        shards pending, and at least 1 (this process alone: no pool)."""
        return max(1, min(self.workers or cores_available(), pending))

    def resolved_run_dir(self, target_uri: str) -> Path:
        """``run_dir``, or ``runs/index-<collection>-<8 hex of the store URI>`` (one per target)."""
        if self.run_dir:
            return Path(self.run_dir)
        return Path("runs") / f"index-{self.collection}-{hashlib.sha256(target_uri.encode()).hexdigest()[:8]}"


class IndexRun:
    """One index run seen from the driver: its plan, its single writer, and its end.

    ``plan`` (:class:`~.plan.RunPlan`) says which shards are pending and which ids are stored;
    a backend computes the pending shards and gives them to :meth:`write` as
    :class:`~.writer.ComputedShard` values, in any order; :meth:`close` commits (fitted specs),
    builds the index, reads every planned row back and writes the run's tables and summary.
    Memory holds one id per planned image and the shards in flight, never every record.

    Raises what :class:`~.plan.RunPlan` raises (nothing to index, a spec mismatch, a busy run dir).
    """

    def __init__(self, spec: FeatureSpec, config: IndexConfig, *, store=None, progress: bool | None = None):
        self.t_start = time.perf_counter()
        self.cpu = MachineCpu().start()  # the whole machine's busy cores over the run (summary, stats.json)
        self.config = config
        self.plan = RunPlan(spec, config, store=store)
        self.spec = self.plan.spec  # the fitted spec once a fitted run commits
        self.clock = StageClock()
        #: processes that computed the shards, when the backend says (the local backend: 1 or its workers)
        self.processes: int | None = None
        show = config.progress if progress is None else progress
        self.bar = progress_bar(self.plan.files, show, "index", "img")
        self.writer = ShardWriter(self.plan.store, self.spec, self.plan.target, fitted=self.plan.fitted,
                                  save_features=config.save_features, clock=self.clock, bar=self.bar)

    def write(self, computed: Iterable[ComputedShard], shards: Sequence[Shard] | None = None) -> None:
        """Write ``shards`` (default: all of the plan's) in order: done ones as they are, pending ones
        from ``computed`` (see :func:`~.writer.write_in_order`)."""
        write_in_order(self.writer, self.plan.shards if shards is None else shards, computed)

    def close(self, workers: WorkerStats | None = None) -> IndexSummary:
        """Commit (fitted specs), build the index, read every planned row back, write the run's tables.

        ``workers``: what a distributed backend's workers measured (stage seconds, nodes, memory).
        Raises :class:`~cbir_dist.errors.IncompleteRunError` when the store lacks rows the run
        planned (they are listed in ``errors.parquet``; a rerun writes them).
        """
        plan, config, w = self.plan, self.config, self.writer.written
        workers = workers or WorkerStats()
        self.clock.add_all(workers)
        rows_written, summary = w.rows_written, None
        try:
            self.writer.commit(force=True)
            if plan.fitted:
                from .fitted import commit

                t = time.perf_counter()
                n, self.spec, created = commit(plan)
                plan.created = plan.created or created
                rows_written += n
                self.clock.add("write", time.perf_counter() - t, n)
            fault("committed")
            t = time.perf_counter()
            plan.store.flush_and_index()
            self.clock.add("write", time.perf_counter() - t, 0)
            missing = S.read_back(plan.store, w.planned_ids)
            n_missing = sum(len(v) for v in missing.values())
            self.cpu.stop()
            summary = IndexSummary(
                files=plan.files, indexed=w.planned - n_missing, duplicates=w.duplicates, rejected=w.rejected,
                missing=n_missing, planned=w.planned, already_present=w.already_present, rows_written=rows_written,
                run_dir=str(plan.run_dir), stage_seconds={k: round(v, 3) for k, v in self.clock.seconds.items()},
                advice=self._lite_advice(rows_written), runtime=self.clock.runtime(), processes=self.processes,
                cores_busy=None if self.cpu.cores_busy is None else round(self.cpu.cores_busy, 2),
                cores=cores_available())
            if missing:
                self._withdraw(missing)
            S.write_tables(plan.run_dir, plan.shards, missing)
            S.write_stats(plan.run_dir / "stats.json", summary, seconds=time.perf_counter() - self.t_start,
                          shards=plan.shards, clock=self.clock, workers=workers, backend=config.backend,
                          collection=config.collection, db=plan.target.uri, spec_dim=self.spec.dim,
                          processes=self.processes or 1, damage=config.damage)
            plan.store.record_run(S.run_record(summary, run_dir=plan.run_dir, images_dir=config.images_dir,
                                               backend=config.backend, damage=config.damage))
            if plan.final_store is not None and rows_written and not n_missing:
                plan.final_store.replace_with(plan.store)  # --overwrite: the new collection takes the name
                plan.final_store.flush_and_index()  # loaded and searchable under its name
                plan.created = ""
        finally:
            self.abort(failed=rows_written == 0 or (plan.final_store is not None and bool(plan.created)))
        if n_missing:
            raise IncompleteRunError(
                f"{n_missing} of {w.planned} images planned as ok have no row in collection "
                f"{config.collection!r} at {plan.target.uri} after the write; they are listed in "
                f"{plan.run_dir / 'errors.parquet'} (status missing): rerun the same command to write them")
        return summary

    def _lite_advice(self, rows_written: int) -> str | None:
        """Advice to move to a server, once: in the run that takes a lite collection past the size."""
        if not getattr(self.plan.store, "is_local", False):
            return None
        from ..store.lite import advice

        rows = self.plan.store.count()
        return advice(rows - rows_written, rows)

    def _withdraw(self, missing: Mapping[int, np.ndarray]) -> None:
        """Withdraw the markers that vouched for rows the store does not have, so a rerun redoes them."""
        for index in missing:
            self.plan.shards[index].marker.unlink(missing_ok=True)
            if self.plan.fitted:  # the rows come from the commit phase: redo it (the features stay valid)
                (self.plan.run_dir / "commit.json").unlink(missing_ok=True)
        log.error("%d shard(s) lacked rows in the store; their markers are withdrawn", len(missing))

    def abort(self, *, failed: bool = True) -> None:
        """Release the progress bar, the run directory and, when this run opened it, the store.

        ``failed``: the job failed, or wrote nothing. A collection that this run created and that is
        still empty (with ``--overwrite``: whatever it holds) is dropped then, so that a failed first
        run leaves no collection behind.
        """
        if failed:
            self.plan.drop_if_created(whatever_it_holds=self.plan.final_store is not None)
        self.bar.close()
        self.plan.close()
