"""The run contract of the index job, below both backends: config, the target, shards and their markers.

Both backends share the driver side, :class:`IndexRun`: it lists the files, cuts them into shards,
and finishes the shards in order (mark duplicates, skip ids already stored, fuse, write, flush,
write the shard's manifest and marker). They differ only in who computes the features: the local
backend (:mod:`.local`) in this process, the Ray backend (:mod:`.cluster`) from the Ray Data graph.
Both feed :func:`run_shards_in_order`, the one shard loop.

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
    markers published in groups (group commit: every :data:`COMMIT_SHARDS` shards, :data:`COMMIT_ROWS`
    rows or :data:`COMMIT_SECONDS` s), so a kill loses at most one group's work, redone on the rerun.
    A rerun skips shards whose marker matches the same files (paths, sizes, mtimes) and the same target.
``shards/NNNNN.features.parquet``
    per-block features of a shard (``--save-features``, and always for fitted specs).
``fit.json``, ``commit.json``
    fitted specs only: the fitted statistics, then the commit marker (see :mod:`.fitted`).
``manifest.parquet``, ``errors.parquet``, ``stats.json``
    written at the end (:mod:`.summary`): every file, every file not indexed with its reason, timings.

Ids are content hashes: a shard redone after a kill never duplicates rows, nor do concurrent jobs
writing into one server collection (ids already stored are skipped; every write is an ``upsert``,
idempotent by id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import IncompleteRunError, InputError, PipelineError, RunDirBusyError, UsageError
from ..features.spec import FeatureSpec
from ..io import records as C
from ..io.files import DEFAULT_MAX_BYTES, ImageFile, iter_images
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.records import OK, Record, manifest_columns, mark_duplicates
from ..io.text import os_path
from ..io.tables import atomic_path, read_json, read_parquet, rows, write_json, write_parquet
from . import summary as S
from .faults import fault
from .summary import STAGES, IndexSummary, StageClock  # noqa: F401 - re-exported: the run's public types
from .target import Target, spec_digest

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
WRITTEN, FEATURES = "written", "features"  # marker phases
DEFAULT_PIXEL_BUDGET = 64_000_000  # decoded pixels the local backend holds at once (see .local)
COMMIT_SHARDS = 64  # group commit: flush and publish markers after this many shards,
COMMIT_ROWS = 32768  # ... this many rows written,
COMMIT_SECONDS = 60.0  # ... or this long since the last commit, whichever comes first (a server flush
# costs ~2 s whatever its size: at most one per minute keeps it a few % of the run)

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
    to pin them on tagged nodes). ``max_bytes`` rejects larger files before they are read;
    ``follow_symlinks`` lets symlinks that leave the input folder in.
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
    deep_actors: int | None = None
    deep_resources: Mapping[str, float] | None = None
    window_files: int = 8192  # ray backend: pending files per Ray Dataset (the driver's memory bound)
    #: local backend: decoded pixels held at once (64 M = 192 MB of RGB), whatever the shard size
    pixel_budget: int = DEFAULT_PIXEL_BUDGET

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
        if self.deep_actors is not None and self.deep_actors < 1:
            raise UsageError(f"deep_actors must be >= 1, got {self.deep_actors}")
        if self.pixel_budget < 1:
            raise UsageError(f"pixel_budget must be >= 1, got {self.pixel_budget}")
        if self.window_files < 1:
            raise UsageError(f"window_files must be >= 1, got {self.window_files}")

    def resolved_run_dir(self, target_uri: str) -> Path:
        """``run_dir``, or ``runs/index-<collection>-<8 hex of the store URI>`` (one per target)."""
        if self.run_dir:
            return Path(self.run_dir)
        return Path("runs") / f"index-{self.collection}-{hashlib.sha256(target_uri.encode()).hexdigest()[:8]}"


def _key_digest(files: Sequence[ImageFile]) -> str:
    """What a shard marker vouches for: its files' paths, sizes and mtimes (16 hex of a SHA-256)."""
    key = []
    for f in files:
        try:
            st = os.stat(os_path(f.path))
            key.append([f.path, st.st_size, st.st_mtime])
        except OSError:
            key.append([f.path, -1, 0.0])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


_LISTING_COLUMNS = (C.PATH, C.LABEL, C.REASON)


def _write_listing(path: Path, entries, shard_size: int) -> list[tuple[int, str]]:
    """Stream ``entries`` (ImageFile) into ``path``, one row group per shard; returns each shard's
    (file count, key digest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in _LISTING_COLUMNS])
    shards: list[tuple[int, str]] = []
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        chunk: list[ImageFile] = []

        def flush_chunk():
            writer.write_table(pa.table({C.PATH: [f.path for f in chunk], C.LABEL: [f.label for f in chunk],
                                         C.REASON: [f.reason for f in chunk]}, schema=schema),
                               row_group_size=shard_size)
            shards.append((len(chunk), _key_digest(chunk)))
            chunk.clear()

        for f in entries:
            chunk.append(f)
            if len(chunk) == shard_size:
                flush_chunk()
        if chunk:
            flush_chunk()
    return shards


def _features_columns(records: Sequence[Record], feats: dict[str, np.ndarray]) -> dict:
    cols = {C.ID: [r.id for r in records], C.PATH: [r.path for r in records], C.LABEL: [r.label for r in records]}
    for name, arr in feats.items():
        cols[C.block_column(name)] = [row.tolist() for row in arr]
    return cols


@dataclass
class Shard:
    """A slice of the sorted file list: rows ``index * shard_size`` … of the run's listing (its files
    are read from ``listing.parquet`` when the shard is worked on: :meth:`IndexRun.files_of`)."""

    index: int
    count: int
    key: str  # digest of the files' paths, sizes and mtimes
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


class IndexRun:
    """One index run seen from the driver (the only process that talks to the store).

    Lists the files and plans the shards (``shards``; ``done`` ones are skipped), then takes the
    shards **in order** through :meth:`load_done` or :meth:`finish`, and :meth:`close` commits
    (fitted specs), builds the index, reads the rows back and writes the run's tables. Finishing in
    file order makes the choice of which path of a duplicated file is the original independent of
    the backend. Memory holds the listing, one id per planned image and the shards in flight, never
    every record.

    Raises :class:`~cbir_dist.errors.InputError` when there is nothing to index, and
    :class:`~cbir_dist.errors.SpecMismatchError` when the collection was built with another spec.
    """

    def __init__(self, spec: FeatureSpec, config: IndexConfig, *, store=None, progress: bool | None = None):
        self.t_start = time.perf_counter()
        self.config = config
        entries = iter_images(config.images_dir, follow_symlinks=config.follow_symlinks)  # InputError: no folder
        first = next(entries, None)
        if first is None:
            raise InputError(f"no image files found under {config.images_dir}")
        self._entries = (f for part in ([first], entries) for f in part)
        self._owns_store = store is None
        if store is None:
            from ..store import VectorStore

            store = VectorStore(config.db, config.collection, token=config.token)
        self.store = store
        #: with --overwrite: the collection to replace (``store`` is then the one built beside it)
        self.final_store = None
        self._lock = None
        try:
            self._plan(spec, progress)
        except BaseException:
            self.abort()
            raise

    def _plan(self, spec: FeatureSpec, progress: bool | None) -> None:
        config = self.config
        self.run_dir = config.resolved_run_dir(self.store.target_uri)
        self._lock = RunDirLock(self.run_dir)  # RunDirBusyError when another job holds it
        shard_dir = self.run_dir / "shards"
        if config.overwrite:
            # build the new collection beside the old one; it replaces the old one only when this job
            # succeeds (close), so a job that fails or writes nothing leaves the old collection whole
            self.final_store, self.store = self.store, self.store.staging()
            self.store.drop()  # what a killed --overwrite left
            if shard_dir.exists():
                shutil.rmtree(shard_dir)
            for name in ("fit.json", "commit.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        store = self.store
        shard_dir.mkdir(parents=True, exist_ok=True)
        existed = store.exists()
        if existed:
            stored = FeatureSpec.from_json(store.spec_json())
            if stored.recipe() != spec.recipe() and store.count() == 0:
                # an empty collection (a first run that failed before writing, another tool's) holds nothing
                # that the new spec could contradict: rebuild it with the requested spec
                log.info("collection %r is empty and was built with another feature spec: recreating it with "
                         "the requested one", config.collection)
                store.drop()
                existed = False
            else:
                stored.check_compatible(spec, job="index")
                self.spec = stored  # the stored spec wins: it may hold fitted statistics
        #: the identity of the collection this run created ("" when it did not): a run that fails or
        #: writes nothing drops it again, and only it (concurrent jobs may race to create it)
        self.created = ""
        if not existed:
            self.spec = spec
            if not spec.needs_fit and store.create(spec.dim, spec.to_json(), index_type=config.index_type):
                self.created = store.identity()
        #: specs standardised on the whole collection commit in phases (see .fitted)
        self.fitted = any(b.norm.startswith("zscore") for b in self.spec.blocks)
        # markers of written rows vouch for this very collection: one made anew (or swapped in by
        # another job's --overwrite) has another identity, and they stop vouching
        self.target = Target(store.target_uri, config.collection, spec_digest(self.spec),
                             store.identity() if store.exists() else "")
        phase = FEATURES if self.fitted else WRITTEN
        self.listing = self.run_dir / "listing.parquet"
        planned = _write_listing(self.listing, self._entries, config.shard_size)
        del self._entries
        self._listing_file = None
        self.shards: list[Shard] = []
        foreign = 0
        for i, (count, key) in enumerate(planned):
            s = Shard(i, count, key, shard_dir / f"{i:05d}", False)
            if s.marker.exists():
                try:
                    marker = read_json(s.marker)
                except (OSError, ValueError):
                    marker = {}
                if not self.target.vouched_by(marker.get("target"), identity=not self.fitted):
                    foreign += 1
                else:
                    s.done = (marker.get("key") == s.key and marker.get("phase") == phase and s.manifest.exists()
                              and (existed or self.fitted))
            self.shards.append(s)
        if foreign:
            log.warning("ignoring %d shard marker(s) in %s: they vouch for another target (store, collection or "
                        "features) than %s", foreign, shard_dir, self.target)
        n_files = sum(s.count for s in self.shards)
        self.summary = IndexSummary(files=n_files, run_dir=str(self.run_dir))
        self.clock = StageClock()
        self.seen: dict[int, str] = {}
        self.planned: dict[int, np.ndarray] = {}  # shard index -> ids planned as ok (one row each)
        self.worker_peak_rss_mb = 0.0
        self.nodes: dict[str, set] = {}  # stage -> Ray node ids that ran it (ray backend)
        self.node_items: dict[str, dict] = {}  # stage -> node id -> rows it ran (ray backend)
        self.node_seconds: dict[str, dict] = {}  # stage -> node id -> seconds it spent (ray backend)
        show = config.progress if progress is None else progress
        self.bar = S.progress(n_files, show, "index")
        self._unpublished: list[tuple[Shard, dict]] = []  # written, not yet flushed: markers wait
        self._group_rows, self._group_t = 0, time.monotonic()
        n_done = sum(s.done for s in self.shards)
        if n_done:
            log.info("resuming: %d of %d shards already done in %s", n_done, len(self.shards), shard_dir)

    @property
    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not s.done]

    def files_of(self, shard: Shard) -> list[ImageFile]:
        """The shard's files, read from the run's listing (one row group)."""
        import pyarrow.parquet as pq

        if self._listing_file is None:
            self._listing_file = pq.ParquetFile(self.listing)
        t = self._listing_file.read_row_group(shard.index).to_pydict()
        return [ImageFile(p, lb, why) for p, lb, why in zip(t[C.PATH], t[C.LABEL], t[C.REASON])]

    def _tally(self, shard: Shard, records: Sequence[Record]) -> None:
        ok, dup, rej = S.count_statuses(records)
        self.summary.duplicates += dup
        self.summary.rejected += rej
        self.summary.planned += ok
        self.planned[shard.index] = np.asarray([r.id for r in records if r.status == OK], np.int64)
        self.bar.update(shard.count)

    def load_done(self, shard: Shard) -> None:
        """Take a finished shard's manifest as it is (its rows, or features, are saved already)."""
        recs = [Record.from_row(row) for row in rows(read_parquet(shard.manifest))]
        for r in recs:
            if r.status == OK:
                self.seen.setdefault(r.id, r.path)
        self._tally(shard, recs)

    def finish(self, shard: Shard, records: list[Record], compute: ComputeFeatures) -> None:
        """Write one shard: mark duplicates, skip stored ids, compute and fuse features, write, flush, mark done.

        ``records`` are the shard's files in order, read (status ``ok`` or ``rejected``).
        """
        mark_duplicates(records, self.seen)
        ok = [r for r in records if r.status == OK]
        todo, checked = ok, False
        if ok and not self.fitted and not self.config.save_features:
            present = self.store.existing_ids([r.id for r in ok])
            todo, checked = [r for r in ok if r.id not in present], True
            self.summary.already_present += len(ok) - len(todo)
        if todo:
            feats = compute(todo)
            if self.config.save_features or self.fitted:
                write_parquet(shard.features, _features_columns(todo, feats))
            if not self.fitted:
                t = time.perf_counter()
                # upsert even for ids just checked absent: another job writing into the same server
                # collection may store them in between, and a plain insert would double those rows
                n = self.store.upsert([r.id for r in todo], [r.path for r in todo], [r.label for r in todo],
                                      self.spec.fuse(feats))
                self.summary.rows_written += n
                self._group_rows += n
                self.clock.add("write", time.perf_counter() - t, len(todo))
        for r in records:
            r.image = None
        write_parquet(shard.manifest, manifest_columns(records), C.MANIFEST_SCHEMA)
        self._unpublished.append((shard, {"key": shard.key, "target": self.target.as_dict(),
                                          "phase": FEATURES if self.fitted else WRITTEN, "rows": len(todo)}))
        self._tally(shard, records)
        self.commit()

    def commit(self, *, force: bool = False) -> None:
        """Group commit: flush the rows written since the last commit, then publish their shards' markers.

        Runs after each shard but acts only every :data:`COMMIT_SHARDS` shards, :data:`COMMIT_ROWS`
        rows or :data:`COMMIT_SECONDS` seconds (always with ``force``): one flush per group instead of
        per shard, while a marker still never vouches for a row that is not flushed.
        """
        if not self._unpublished:
            return
        due = (len(self._unpublished) >= COMMIT_SHARDS or self._group_rows >= COMMIT_ROWS
               or time.monotonic() - self._group_t >= COMMIT_SECONDS)
        if not (force or due):
            return
        if self._group_rows:
            t = time.perf_counter()
            self.store.flush()
            self.clock.add("write", time.perf_counter() - t, 0)
        fault("shard-written")
        for shard, marker in self._unpublished:
            write_json(shard.marker, {**marker, "time": time.time()})
        self._unpublished.clear()
        self._group_rows, self._group_t = 0, time.monotonic()

    def close(self) -> IndexSummary:
        """Commit (fitted specs), build the index, read every planned row back, write the run's tables.

        Raises :class:`~cbir_dist.errors.IncompleteRunError` when the store lacks rows the run
        planned (they are listed in ``errors.parquet``; a rerun writes them).
        """
        s = self.summary
        try:
            self.commit(force=True)
            if self.fitted:
                from .fitted import commit

                t = time.perf_counter()
                n = commit(self)
                s.rows_written += n
                self.clock.add("write", time.perf_counter() - t, n)
            fault("committed")
            t = time.perf_counter()
            self.store.flush_and_index()
            self.clock.add("write", time.perf_counter() - t, 0)
            missing = S.read_back(self)
            s.missing = sum(len(v) for v in missing.values())
            s.indexed = s.planned - s.missing
            if missing:
                self._withdraw(missing)
            s.stage_seconds = {k: round(v, 3) for k, v in self.clock.seconds.items()}
            s.advice = self._lite_advice()
            S.write_tables(self, missing)
            S.write_stats(self, time.perf_counter() - self.t_start)
            self.store.record_run(S.run_record(self))
            if self.final_store is not None and s.rows_written and not s.missing:
                self.final_store.replace_with(self.store)  # --overwrite: the new collection takes the name
                self.final_store.flush_and_index()  # loaded and searchable under its name
                self.created = ""
        finally:
            self.abort(failed=s.rows_written == 0 or (self.final_store is not None and bool(self.created)))
        if s.missing:
            raise IncompleteRunError(
                f"{s.missing} of {s.planned} images planned as ok have no row in collection "
                f"{self.config.collection!r} at {self.target.uri} after the write; they are listed in "
                f"{self.run_dir / 'errors.parquet'} (status missing): rerun the same command to write them")
        return s

    def _lite_advice(self) -> str | None:
        """Advice to move to a server, once: in the run that takes a lite collection past the size."""
        if not getattr(self.store, "is_local", False):
            return None
        from ..store.lite import advice

        rows = self.store.count()
        return advice(rows - self.summary.rows_written, rows)

    def _withdraw(self, missing: Mapping[int, np.ndarray]) -> None:
        """Withdraw the markers that vouched for rows the store does not have, so a rerun redoes them."""
        for index in missing:
            self.shards[index].marker.unlink(missing_ok=True)
            if self.fitted:  # the rows come from the commit phase: redo it (the features stay valid)
                (self.run_dir / "commit.json").unlink(missing_ok=True)
        log.error("%d shard(s) lacked rows in the store; their markers are withdrawn", len(missing))

    def abort(self, *, failed: bool = True) -> None:
        """Release the progress bar and, when this run opened it, the store (its lock, for milvus-lite).

        ``failed``: the job failed, or wrote nothing. A collection that this run created and that is
        still empty is dropped then, so that a failed first run leaves no collection behind.
        """
        if failed:
            self._drop_if_created_empty()
        bar = getattr(self, "bar", None)
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None
        if bar is not None:
            bar.close()
        if getattr(self, "_listing_file", None) is not None:
            self._listing_file.close()
            self._listing_file = None
        if self.final_store is not None:  # --overwrite: the staging store is always this run's own
            self.store.close()
        if self._owns_store:
            self._owns_store = False
            (self.final_store or self.store).close()

    def _drop_if_created_empty(self) -> None:
        created, self.created = getattr(self, "created", ""), ""
        if not created or self.store is None:
            return
        try:
            # only the very collection this run created (not one another job made under the name);
            # with --overwrite the one built beside the old one goes whatever it holds, else only empty
            if (self.store.exists() and self.store.identity() == created
                    and (self.final_store is not None or self.store.count() == 0)):
                self.store.drop()
                log.info("dropped collection %r: this run created it and %s", self.store.collection,
                         "did not finish" if self.final_store is not None else "wrote no row")
        except Exception as exc:  # noqa: BLE001 - best effort: the job's own error is the one to report
            log.warning("could not drop the empty collection %r this run created: %s", self.config.collection, exc)


class RunDirLock:
    """One job at a time in a run directory: an exclusive ``flock`` on ``RUN_DIR/.lock``, held for the
    job's life and released by the kernel when the process dies, however it dies (no stale locks).
    The file names its holder (pid, host, start time, command) for the error a second job gets."""

    def __init__(self, run_dir: Path):
        import fcntl
        import socket
        import sys

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                   f"{holder.get('started', '?')}: {holder.get('command', '?')}") if holder else "another process"
            raise RunDirBusyError(f"run directory {run_dir} is in use by {who}; wait for that job to end, or "
                                  "give this one its own --run-dir") from None
        argv = ["--token=***" if a.startswith("--token=") else a for a in sys.argv]
        for i, a in enumerate(argv[:-1]):
            if a == "--token":  # the hidden, discouraged option: never into a file
                argv[i + 1] = "***"
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def run_shards_in_order(run: IndexRun, results: Iterable[ShardResult], shards: Sequence[Shard] | None = None) -> None:
    """Finish the shards of ``run`` (``shards``, a run of consecutive ones; default all) in index order,
    loading done ones, from ``results`` of the pending ones.

    ``results`` yields ``(shard index, records, compute)`` for each pending shard, in any order (it is
    only advanced when the next shard in order is not yet held); results that come early are held
    until the shards before them are finished. This is the one shard loop of both backends.
    """
    held: dict[int, tuple[list[Record], ComputeFeatures]] = {}
    it = iter(results)
    for shard in run.shards if shards is None else shards:
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
