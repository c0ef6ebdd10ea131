"""The single writer of the index job: computed shards in, rows, shard manifests and markers out.

Backends compute; the writer writes. A backend hands over each pending shard as a value,
:class:`ComputedShard` — its records in file order and the features of the ones it described — in
any order; :func:`write_in_order` holds the early ones and gives the writer the shards in file
order, so which path of a duplicated file is the original never depends on the backend. For each
shard :class:`ShardWriter` marks duplicates, upserts the rows of the images that were not stored
already, writes the shard's manifest, and publishes its marker only after its rows were flushed
(group commit: every :data:`COMMIT_SHARDS` shards, :data:`COMMIT_ROWS` rows or
:data:`COMMIT_SECONDS` seconds, so a kill loses at most one group, redone on the rerun). What it
did is a value, :class:`Written`, from which the run's summary is made.

Every write is an ``upsert``, idempotent by content id: a shard redone after a kill, or several jobs
writing into one server collection at once, never double a row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..errors import PipelineError
from ..features.spec import FeatureSpec
from ..io import records as C
from ..io.records import DUPLICATE, OK, REJECTED, STORED, Record, manifest_columns, mark_duplicates
from ..io.tables import read_parquet, rows, write_json, write_parquet
from .faults import fault
from .plan import FEATURES, WRITTEN, Shard
from .summary import StageClock
from .target import Target

COMMIT_SHARDS = 64  # group commit: flush and publish markers after this many shards,
COMMIT_ROWS = 32768  # ... this many rows written,
COMMIT_SECONDS = 60.0  # ... or this long since the last commit, whichever comes first (a server flush
# costs ~2 s whatever its size: at most one per minute keeps it a few % of the run)


@dataclass
class ComputedShard:
    """One shard as a backend hands it to the writer.

    ``records``: the shard's files in file order, each ``ok``, ``stored`` (ok, its row is in the
    collection already: not described) or ``rejected``. ``ids``: the ids the backend described, one per
    row of every ``features`` block (block name → ``(len(ids), dim)`` float32); every ok record that is
    the first of its id in the run must be among them (duplicates and stored ones need not).
    """

    index: int
    records: list[Record]
    ids: np.ndarray
    features: dict[str, np.ndarray]


@dataclass
class Written:
    """What the writer did over the run: the counts of the summary, and the ids to read back."""

    planned: int = 0  # ok images: one row each, written now or before
    duplicates: int = 0
    rejected: int = 0
    already_present: int = 0  # ok images whose row was stored already (not described, not written)
    rows_written: int = 0
    #: shard index → the ids it planned as ok (the end of the run looks each one up in the store)
    planned_ids: dict[int, np.ndarray] = field(default_factory=dict)


def _features_columns(records: Sequence[Record], feats: dict[str, np.ndarray]) -> dict:
    cols = {C.ID: [r.id for r in records], C.PATH: [r.path for r in records], C.LABEL: [r.label for r in records]}
    for name, arr in feats.items():
        cols[C.block_column(name)] = [row.tolist() for row in arr]
    return cols


def _rows_for(computed: ComputedShard, todo: Sequence[Record]) -> dict[str, np.ndarray]:
    """The features of ``todo``, in its order, picked from the shard's described rows by id."""
    where = {int(i): j for j, i in enumerate(np.asarray(computed.ids, np.int64).tolist())}
    lost = [r.path for r in todo if r.id not in where]
    if lost:
        raise PipelineError(f"shard {computed.index} came back without the features of {len(lost)} image(s) to "
                            f"write (first: {lost[0]}); this is a bug in the backend")
    pick = [where[r.id] for r in todo]
    if pick == list(range(len(computed.ids))):
        return computed.features
    return {name: arr[pick] for name, arr in computed.features.items()}


class ShardWriter:
    """Writes shards in the order it is given them (see the module docstring); the only code that
    writes rows, manifests or markers of shards.

    ``fitted``: the spec is standardised on the whole collection, so a shard's features are saved
    (``shards/NNNNN.features.parquet``, phase ``features``) and its rows written later by
    :mod:`.fitted`; ``save_features`` saves them besides writing the rows. ``clock`` takes the write
    seconds; ``bar`` advances by each shard's file count.
    """

    def __init__(self, store, spec: FeatureSpec, target: Target, *, fitted: bool, save_features: bool,
                 clock: StageClock, bar):
        self.store, self.spec, self.target = store, spec, target
        self.fitted, self.save_features = fitted, save_features
        self.clock, self.bar = clock, bar
        self.written = Written()
        self._seen: dict[int, str] = {}  # id -> first path: the original of later duplicates
        self._unpublished: list[tuple[Shard, dict]] = []  # written, not yet flushed: markers wait
        self._group_rows, self._group_t = 0, time.monotonic()

    def _tally(self, shard: Shard, records: Sequence[Record]) -> None:
        w = self.written
        ok = [r.id for r in records if r.status == OK]
        w.planned += len(ok)
        w.duplicates += sum(r.status == DUPLICATE for r in records)
        w.rejected += sum(r.status == REJECTED for r in records)
        w.planned_ids[shard.index] = np.asarray(ok, np.int64)
        self.bar.update(shard.count)

    def load_done(self, shard: Shard) -> None:
        """Take a finished shard's manifest as it is (its rows, or features, are saved already)."""
        recs = [Record.from_row(row) for row in rows(read_parquet(shard.manifest))]
        for r in recs:
            if r.status == OK:
                self._seen.setdefault(r.id, r.path)
        self._tally(shard, recs)

    def write(self, shard: Shard, computed: ComputedShard) -> None:
        """Write one shard: mark duplicates, upsert the rows not stored already (or save the features),
        write its manifest, and queue its marker for the next commit."""
        records = computed.records
        stored = set()
        for r in records:
            if r.status == STORED:  # the manifest says ok: its row is in the collection
                r.status = OK
                stored.add(r.id)
        mark_duplicates(records, self._seen)
        todo = [r for r in records if r.status == OK and r.id not in stored]
        self.written.already_present += sum(r.status == OK for r in records) - len(todo)
        if todo:
            feats = _rows_for(computed, todo)
            if self.save_features or self.fitted:
                write_parquet(shard.features, _features_columns(todo, feats))
            if not self.fitted:
                t = time.perf_counter()
                n = self.store.upsert([r.id for r in todo], [r.path for r in todo], [r.label for r in todo],
                                      self.spec.fuse(feats))
                self.written.rows_written += n
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

        Acts only every :data:`COMMIT_SHARDS` shards, :data:`COMMIT_ROWS` rows or :data:`COMMIT_SECONDS`
        seconds (always with ``force``): one flush per group instead of per shard, while a marker still
        never vouches for a row that is not flushed.
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


def write_in_order(writer: ShardWriter, shards: Sequence[Shard], computed: Iterable[ComputedShard]) -> None:
    """Give ``writer`` the ``shards`` (a run of consecutive ones) in index order: done ones from their
    manifests, pending ones from ``computed``, which yields each pending shard once, in any order.

    ``computed`` is only advanced when the next shard in order is not yet held; shards that come early
    are held until the ones before them are written. The one shard loop of every backend.
    """
    held: dict[int, ComputedShard] = {}
    it = iter(computed)
    for shard in shards:
        if shard.done:
            writer.load_done(shard)
            continue
        while shard.index not in held:
            try:
                c = next(it)
            except StopIteration:
                raise PipelineError(f"the feature stream ended before shard {shard.index} was complete") from None
            held[c.index] = c
        writer.write(shard, held.pop(shard.index))
