"""What an index run will do, decided before any image is read: its target, its listing and shards.

:class:`RunPlan` opens the target (the collection, or with ``--overwrite`` the one built beside it;
the stored spec is checked, or the collection created), takes the run directory's lock, streams the
listing into ``listing.parquet`` and cuts it into :class:`Shard` s, trusting the markers that vouch
for these very files and this very collection (:class:`~.target.Target`). It also lists the ids the
collection already stores (:attr:`RunPlan.stored`, when a backend first asks), which reach the
backends before any compute, so an image whose row is stored is read (its id is its content) but
never described again.

The plan writes nothing into the store but the collection it creates; the rows go through the
writer (:mod:`.writer`). The run directory's files are documented in :mod:`.run`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, RunDirBusyError
from ..features.spec import FeatureSpec
from ..io import records as C
from ..io.files import ImageFile, iter_images
from ..io.tables import atomic_path, read_json
from ..io.text import os_path
from .target import Target, spec_digest

log = logging.getLogger(__name__)

WRITTEN, FEATURES = "written", "features"  # marker phases
_LISTING_COLUMNS = (C.PATH, C.LABEL, C.REASON)
NO_IDS = np.zeros(0, np.int64)


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


@dataclass
class Shard:
    """A slice of the sorted file list: rows ``index * shard_size`` … of the run's listing (its files
    are read from ``listing.parquet`` when the shard is worked on: :meth:`RunPlan.files_of`)."""

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


class RunPlan:
    """The target, the listing and the shards of one index run (see the module docstring).

    Attributes the writer and the backends read: ``store`` (where rows go: the collection, or with
    ``--overwrite`` the one built beside it), ``final_store`` (with ``--overwrite``: the collection to
    replace), ``spec`` (the stored spec wins over the requested one: it may hold fitted statistics),
    ``fitted`` (the spec is standardised on the whole collection: rows follow in :mod:`.fitted`),
    ``target``, ``run_dir``, ``shards``, ``stored`` (sorted ids already in the collection, listed when a
    backend first asks) and ``created`` (the identity of the collection this run created, "" when it did not).

    Raises :class:`~cbir_dist.errors.InputError` when there is nothing to index,
    :class:`~cbir_dist.errors.SpecMismatchError` when the collection was built with another spec and
    :class:`~cbir_dist.errors.RunDirBusyError` when another job holds the run directory.
    """

    def __init__(self, spec: FeatureSpec, config, *, store=None):
        self.config = config
        entries = iter_images(config.images_dir, follow_symlinks=config.follow_symlinks)  # InputError: no folder
        first = next(entries, None)
        if first is None:
            raise InputError(f"no image files found under {config.images_dir}")
        self._owns_store = store is None
        if store is None:
            from ..store import VectorStore

            store = VectorStore(config.db, config.collection, token=config.token)
        self.store = store
        self.final_store = None
        self.created = ""
        self._lock = None
        self._listing_file = None
        try:
            self._open_target(spec)
            self._plan_shards(f for part in ([first], entries) for f in part)
        except BaseException:
            self.drop_if_created(whatever_it_holds=self.final_store is not None)  # a failed plan leaves none
            self.close()
            raise

    def _open_target(self, spec: FeatureSpec) -> None:
        config = self.config
        self.run_dir = config.resolved_run_dir(self.store.target_uri)
        self._lock = RunDirLock(self.run_dir)  # RunDirBusyError when another job holds it
        shard_dir = self.run_dir / "shards"
        if config.overwrite:
            # build the new collection beside the old one; it replaces the old one only when this job
            # succeeds, so a job that fails or writes nothing leaves the old collection whole
            self.final_store, self.store = self.store, self.store.staging()
            self.store.drop()  # what a killed --overwrite left
            if shard_dir.exists():
                shutil.rmtree(shard_dir)
            for name in ("fit.json", "commit.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        store = self.store
        shard_dir.mkdir(parents=True, exist_ok=True)
        self.existed = store.exists()
        if self.existed:
            stored = FeatureSpec.from_json(store.spec_json())
            if stored.recipe() != spec.recipe() and store.count() == 0:
                # an empty collection (a first run that failed before writing, another tool's) holds nothing
                # that the new spec could contradict: rebuild it with the requested spec
                log.info("collection %r is empty and was built with another feature spec: recreating it with "
                         "the requested one", config.collection)
                store.drop()
                self.existed = False
            else:
                stored.check_compatible(spec, job="index")
                self.spec = stored  # the stored spec wins: it may hold fitted statistics
        if not self.existed:
            self.spec = spec
            if not spec.needs_fit and store.create(spec.dim, spec.to_json(), index_type=config.index_type):
                self.created = store.identity()
        self.fitted = any(b.norm.startswith("zscore") for b in self.spec.blocks)
        # markers of written rows vouch for this very collection: one made anew (or swapped in by
        # another job's --overwrite) has another identity, and they stop vouching
        self.target = Target(store.target_uri, config.collection, spec_digest(self.spec),
                             store.identity() if store.exists() else "")
        self._describe_all = self.fitted or config.save_features or not self.existed

    def _plan_shards(self, entries) -> None:
        shard_dir = self.run_dir / "shards"
        phase = FEATURES if self.fitted else WRITTEN
        self.listing = self.run_dir / "listing.parquet"
        planned = _write_listing(self.listing, entries, self.config.shard_size)
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
                              and (self.existed or self.fitted))
            self.shards.append(s)
        if foreign:
            log.warning("ignoring %d shard marker(s) in %s: they vouch for another target (store, collection or "
                        "features) than %s", foreign, shard_dir, self.target)
        n_done = sum(s.done for s in self.shards)
        if n_done:
            log.info("resuming: %d of %d shards already done in %s", n_done, len(self.shards), shard_dir)

    @cached_property
    def stored(self) -> np.ndarray:
        """The sorted ids already in the collection (empty when every image is described anyway: a new
        collection, fitted specs, ``--save-features``). Listed from the store on first use, which the
        backends make only when a shard is pending, before its first compute."""
        return NO_IDS if self._describe_all else self.store.stored_ids()

    @property
    def files(self) -> int:
        return sum(s.count for s in self.shards)

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

    def drop_if_created(self, *, whatever_it_holds: bool) -> None:
        """Drop the collection this run created (only that very one, by identity: concurrent jobs may
        race to create it) when it is empty, or ``whatever_it_holds`` (an ``--overwrite`` build that
        did not finish). Best effort: the job's own error is the one to report."""
        created, self.created = self.created, ""
        if not created:
            return
        try:
            if (self.store.exists() and self.store.identity() == created
                    and (whatever_it_holds or self.store.count() == 0)):
                self.store.drop()
                log.info("dropped collection %r: this run created it and %s", self.store.collection,
                         "did not finish" if whatever_it_holds else "wrote no row")
        except Exception as exc:  # noqa: BLE001 - best effort: the job's own error is the one to report
            log.warning("could not drop the empty collection %r this run created: %s", self.config.collection, exc)

    def close(self) -> None:
        """Release the lock, the listing and, when this plan opened it, the store."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._listing_file is not None:
            self._listing_file.close()
            self._listing_file = None
        if self.final_store is not None:  # --overwrite: the staging store is always this run's own
            self.store.close()
        if self._owns_store:
            self._owns_store = False
            (self.final_store or self.store).close()


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
