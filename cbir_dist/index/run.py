"""The run contract of the index job, below both backends: config, shards, the driver side, stats.

Both backends share the driver side, :class:`IndexRun`: it lists the files, cuts them into shards,
and finishes the shards in order (mark duplicates, skip ids already stored, fuse, upsert, write the
shard's manifest and marker). They differ only in who computes the features: the local backend
(:mod:`.local`) in this process, the Ray backend (:mod:`.cluster`) from the Ray Data graph. Both
feed :func:`run_shards_in_order`.

The run directory holds what makes a rerun safe and a failure visible:

``shards/NNNNN.parquet`` then ``shards/NNNNN.done``
    the manifest rows of one shard (path, label, size, mtime, id, status, error), and its completion
    marker, written only after the shard's vectors were upserted and flushed. A rerun skips shards
    whose marker matches the same files (same paths, sizes, mtimes).
``shards/NNNNN.features.parquet``
    per-block features of a shard (with ``--save-features``, and always for specs that must be
    fitted on the whole collection before fusing, e.g. the standardised shape/texture profiles).
``manifest.parquet``, ``errors.parquet``, ``stats.json``
    written at the end: every file, every rejected file with its reason, timings per stage.

Ids are content hashes and writes are upserts, so a shard redone after a kill never duplicates rows.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PipelineError, UsageError
from ..features.spec import FeatureSpec
from ..io import records as C
from ..io.files import ImageFile, list_images
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.records import (
    DUPLICATE,
    OK,
    REJECTED,
    Record,
    manifest_columns,
    mark_duplicates,
)
from ..io.tables import read_json, read_parquet, rows, write_json, write_parquet

log = logging.getLogger(__name__)

STAGES = ("decode", "inpaint", "deep", "descriptors", "write")
BACKENDS = ("local", "ray")

#: ``transform(image, path) -> image``: the optional damage-and-reconstruct hook applied to every
#: decoded image before its features are computed (both backends; must be picklable for Ray).
ImageTransform = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class IndexConfig:
    """Everything an index run needs besides the spec; the CLI and jobs/index.py fill it.

    ``torch_threads`` sets torch's intra-op threads for the backbone in both backends (default: the
    local backend leaves torch alone; a Ray CPU actor uses as many threads as CPUs it holds). Equal
    thread counts make the two backends' vectors bit-identical on one machine.
    ``deep_actors`` caps the Ray backbone actor pool (default: one per GPU, else 2/3 of the CPUs),
    ``deep_resources`` adds custom Ray resources each backbone actor needs (e.g. ``{"gpu_node": 1}``
    to pin them on tagged nodes).
    """

    images_dir: str
    db: str = "cbir.db"
    collection: str = "images"
    token: str | None = None
    run_dir: str | None = None
    shard_size: int = 256
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    index_type: str = "FLAT"
    weights_override: str | None = None
    device: str | None = None
    save_features: bool = False
    overwrite: bool = False
    backend: str = "local"
    progress: bool = True
    torch_threads: int | None = None
    deep_actors: int | None = None
    deep_resources: Mapping[str, float] | None = None

    def __post_init__(self):
        if self.shard_size < 1 or self.batch_size < 1:
            raise UsageError("shard_size and batch_size must be >= 1")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise UsageError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.deep_actors is not None and self.deep_actors < 1:
            raise UsageError(f"deep_actors must be >= 1, got {self.deep_actors}")

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path("runs") / f"index-{self.collection}"


@dataclass
class IndexSummary:
    files: int = 0
    indexed: int = 0
    duplicates: int = 0
    rejected: int = 0
    already_present: int = 0
    rows_written: int = 0
    run_dir: str = ""
    stage_seconds: dict = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"indexed {self.indexed}, duplicates {self.duplicates}, rejected {self.rejected} "
            f"(see {Path(self.run_dir) / 'errors.parquet'})"
        )


@dataclass
class StageClock:
    """Seconds and item counts per stage (``STAGES``), summed over batches and workers."""

    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    counts: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def add(self, stage: str, seconds: float, count: int) -> None:
        self.seconds[stage] += float(seconds)
        self.counts[stage] += int(count)

    def per_second(self) -> dict:
        return {k: (round(self.counts[k] / s, 2) if s > 0 and self.counts[k] else None)
                for k, s in self.seconds.items()}


# --- shards -----------------------------------------------------------------------------------------


def _shard_key(files: Sequence[ImageFile]) -> list:
    key = []
    for f in files:
        try:
            st = os.stat(f.path)
            key.append([f.path, st.st_size, st.st_mtime])
        except OSError:
            key.append([f.path, -1, 0.0])
    return key


def _features_columns(records: Sequence[Record], feats: dict[str, np.ndarray]) -> dict:
    cols = {C.ID: [r.id for r in records], C.PATH: [r.path for r in records], C.LABEL: [r.label for r in records]}
    for name, arr in feats.items():
        cols[C.block_column(name)] = [row.tolist() for row in arr]
    return cols


@dataclass
class Shard:
    """A slice of the sorted file list: ``files[index * shard_size : (index + 1) * shard_size]``."""

    index: int
    files: list[ImageFile]
    key: list
    base: Path
    done: bool

    @property
    def manifest(self) -> Path:
        return self.base.with_suffix(".parquet")

    @property
    def marker(self) -> Path:
        return self.base.with_suffix(".done")

    @property
    def features(self) -> Path:
        return self.base.with_suffix(".features.parquet")


#: ``compute(todo) -> {block name: (len(todo), dim) float32}``: the features of the records to write.
ComputeFeatures = Callable[[Sequence[Record]], dict[str, np.ndarray]]

#: What a backend hands the driver for each pending shard: ``(shard index, records, compute)``.
ShardResult = tuple[int, list[Record], ComputeFeatures]


# --- the driver side, shared by both backends -------------------------------------------------------


class IndexRun:
    """One index run seen from the driver (the only process that talks to the store).

    Lists the files and plans the shards (``shards``; ``done`` ones are skipped), then takes the
    shards **in order** through :meth:`load_done` or :meth:`finish`, and :meth:`close` writes the
    collection's index and the run directory's tables. Finishing in file order makes the choice of
    which path of a duplicated file is the original independent of the backend.

    Raises :class:`~cbir_dist.errors.InputError` when there is nothing to index, and
    :class:`~cbir_dist.errors.SpecMismatchError` when the collection was built with another spec.
    """

    def __init__(self, spec: FeatureSpec, config: IndexConfig, *, store=None, progress: bool | None = None):
        from ..errors import InputError

        self.t_start = time.perf_counter()
        self.config = config
        self.files = list_images(config.images_dir)
        if not self.files:
            raise InputError(f"no image files found under {config.images_dir}")
        self.run_dir = config.resolved_run_dir()
        shard_dir = self.run_dir / "shards"
        if config.overwrite and shard_dir.exists():
            shutil.rmtree(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        self._owns_store = store is None
        if store is None:
            from ..store import VectorStore

            store = VectorStore(config.db, config.collection, token=config.token)
        self.store = store

        try:
            self.spec = self._resolve_spec(spec)
        except BaseException:
            if self._owns_store:
                store.close()
            raise
        self.fit_first = self.spec.needs_fit

        size = config.shard_size
        self.shards: list[Shard] = []
        for i in range(0, len(self.files), size):
            files = self.files[i : i + size]
            key = _shard_key(files)
            s = Shard(i // size, files, key, shard_dir / f"{i // size:05d}", False)
            markers_valid = self._markers_valid or (self.fit_first and not config.overwrite)
            if markers_valid and s.marker.exists() and s.manifest.exists():
                try:
                    s.done = read_json(s.marker).get("key") == key
                except (OSError, ValueError):
                    s.done = False
            self.shards.append(s)
        self.summary = IndexSummary(files=len(self.files), run_dir=str(self.run_dir))
        self.clock = StageClock()
        self.records: list[Record] = []
        self.seen: dict[int, str] = {}
        self.worker_peak_rss_mb = 0.0
        self.nodes: dict[str, set] = {}  # stage -> Ray node ids that ran it (ray backend)
        show = config.progress if progress is None else progress
        self.bar = _progress(len(self.files), show, "index")
        n_done = sum(s.done for s in self.shards)
        if n_done:
            log.info("resuming: %d of %d shards already done in %s", n_done, len(self.shards), shard_dir)

    def _resolve_spec(self, spec: FeatureSpec) -> FeatureSpec:
        """The collection's stored spec wins (it may hold fitted statistics); a different request is an error."""
        store, config = self.store, self.config
        existed = store.exists()
        # Shard markers vouch for rows in the collection: a new (or rebuilt) collection voids them.
        self._markers_valid = existed and not config.overwrite
        if existed and not config.overwrite:
            stored = FeatureSpec.from_json(store.spec_json())
            stored.check_compatible(spec)
            return stored
        if not spec.needs_fit:
            store.create(spec.dim, spec.to_json(), index_type=config.index_type, overwrite=config.overwrite)
        return spec

    @property
    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not s.done]

    def load_done(self, shard: Shard) -> None:
        """Take a finished shard's manifest as it is (its rows are in the collection already)."""
        recs = [Record.from_row(row) for row in rows(read_parquet(shard.manifest))]
        for r in recs:
            if r.status == OK:
                self.seen.setdefault(r.id, r.path)
        self.records.extend(recs)
        self.bar.update(len(shard.files))

    def finish(self, shard: Shard, records: list[Record], compute: ComputeFeatures) -> None:
        """Write one shard: mark duplicates, skip stored ids, compute and fuse features, upsert, flush, mark done.

        ``records`` are the shard's files in order, read (status ``ok`` or ``rejected``).
        """
        mark_duplicates(records, self.seen)
        ok = [r for r in records if r.status == OK]
        todo = ok
        if ok and not self.fit_first and not self.config.save_features:
            present = self.store.existing_ids([r.id for r in ok])
            todo = [r for r in ok if r.id not in present]
            self.summary.already_present += len(ok) - len(todo)
        if todo:
            feats = compute(todo)
            if self.config.save_features or self.fit_first:
                write_parquet(shard.features, _features_columns(todo, feats))
            if not self.fit_first:
                t = time.perf_counter()
                self.summary.rows_written += self.store.upsert(
                    [r.id for r in todo], [r.path for r in todo], [r.label for r in todo], self.spec.fuse(feats)
                )
                self.store.flush()
                self.clock.add("write", time.perf_counter() - t, len(todo))
        for r in records:
            r.image = None
        write_parquet(shard.manifest, manifest_columns(records))
        write_json(shard.marker, {"key": shard.key, "rows": len(todo), "time": time.time()})
        self.records.extend(records)
        self.bar.update(len(shard.files))

    def close(self) -> IndexSummary:
        """Fit pass (fitted specs), build the index, write manifest/errors/stats; returns the summary."""
        try:
            if self.fit_first:
                t = time.perf_counter()
                self.spec, n = _fit_and_write(self.spec, self.config, self.store, [s.features for s in self.shards])
                self.summary.rows_written += n
                self.clock.add("write", time.perf_counter() - t, n)
            t = time.perf_counter()
            self.store.flush_and_index()
            self.clock.add("write", time.perf_counter() - t, 0)
            s = self.summary
            s.indexed = sum(r.status == OK for r in self.records)
            s.duplicates = sum(r.status == DUPLICATE for r in self.records)
            s.rejected = sum(r.status == REJECTED for r in self.records)
            self.store.record_run(_run_record(self))
        finally:
            self.abort()
        s.stage_seconds = {k: round(v, 3) for k, v in self.clock.seconds.items()}
        _finish_run(self, time.perf_counter() - self.t_start)
        return s

    def abort(self) -> None:
        """Release the progress bar and, when this run opened it, the store (its lock, for milvus-lite)."""
        self.bar.close()
        if self._owns_store:
            self._owns_store = False
            self.store.close()


def run_shards_in_order(run: IndexRun, results: Iterable[ShardResult]) -> None:
    """Finish every shard of ``run`` in index order, loading done ones, from ``results`` of the pending ones.

    ``results`` yields ``(shard index, records, compute)`` for each pending shard, in any order (it is
    only advanced when the next shard in order is not yet held); results that come early are held
    until the shards before them are finished. This is the one shard loop of both backends.
    """
    held: dict[int, tuple[list[Record], ComputeFeatures]] = {}
    it = iter(results)
    for shard in run.shards:
        if shard.done:
            run.load_done(shard)
            continue
        while shard.index not in held:
            try:
                i, recs, compute = next(it)
            except StopIteration:
                raise PipelineError(f"the feature stream ended before shard {shard.index} was complete") from None
            held[i] = (recs, compute)
        recs, compute = held.pop(shard.index)
        run.finish(shard, recs, compute)


# --- end of run -------------------------------------------------------------------------------------


def _fit_and_write(spec: FeatureSpec, config: IndexConfig, store, parts: Sequence[Path]):
    """Second pass for specs with fitted statistics: fit on every shard's features, then fuse and upsert."""
    tables = [read_parquet(p) for p in parts if p.exists()]
    if not tables:
        raise UsageError("no valid images to fit the feature statistics on")
    n_rows = sum(len(t[C.ID]) for t in tables)
    uniq = {}
    for t in tables:
        for j, i in enumerate(t[C.ID]):
            uniq.setdefault(i, (t, j))
    order = list(uniq.values())
    feats = {b.name: np.asarray([t[C.block_column(b.name)][j] for t, j in order], np.float32) for b in spec.blocks}
    if store.exists():
        stored = FeatureSpec.from_json(store.spec_json())
        fitted = stored if not stored.needs_fit else spec.fit(feats)
    else:
        fitted = spec.fit(feats)
        store.create(fitted.dim, fitted.to_json(), index_type=config.index_type, overwrite=config.overwrite)
    log.info("fitted feature statistics on %d images (%d rows in shards)", len(order), n_rows)
    vectors = fitted.fuse(feats)
    n = store.upsert([t[C.ID][j] for t, j in order], [t[C.PATH][j] for t, j in order],
                     [t[C.LABEL][j] for t, j in order], vectors)
    return fitted, n


def _run_record(run: IndexRun) -> dict:
    """What the collection remembers of this run (``cbir-dist info`` lists them)."""
    import platform

    s = run.summary
    return {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(Path(run.run_dir).resolve()),
            "images_dir": str(Path(run.config.images_dir).resolve()), "host": platform.node(),
            "backend": run.config.backend, "files": s.files, "indexed": s.indexed, "duplicates": s.duplicates,
            "rejected": s.rejected, "rows_written": s.rows_written}


def _finish_run(run: IndexRun, seconds: float) -> None:
    records, summary, config = run.records, run.summary, run.config
    write_parquet(run.run_dir / "manifest.parquet", manifest_columns(records))
    bad = [r for r in records if r.status != OK]
    write_parquet(
        run.run_dir / "errors.parquet",
        {C.PATH: [r.path for r in bad], C.STATUS: [r.status for r in bad], C.REASON: [r.error for r in bad]},
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_new = sum(not s.done for s in run.shards)
    stats = {
        "files": summary.files,
        "indexed": summary.indexed,
        "duplicates": summary.duplicates,
        "rejected": summary.rejected,
        "already_present": summary.already_present,
        "rows_written": summary.rows_written,
        "shards": len(run.shards),
        "shards_processed": n_new,
        "seconds": round(seconds, 3),
        "images_per_s": round(summary.files / seconds, 3) if seconds > 0 else None,
        "stage_seconds": summary.stage_seconds,
        "stage_items": dict(run.clock.counts),
        "stage_images_per_s": run.clock.per_second(),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_worker_rss_mb": round(run.worker_peak_rss_mb, 1) if run.worker_peak_rss_mb else None,
        "backend": config.backend,
        "stage_nodes": {k: sorted(v) for k, v in run.nodes.items()},
        "collection": config.collection,
        "db": config.db,
        "spec_dim": run.spec.dim,
    }
    write_json(run.run_dir / "stats.json", stats)


class _NullBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
