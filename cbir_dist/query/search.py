"""The query job: query images (optionally damaged, then reconstructed) → top-k neighbours from the collection.

Queries are image files, folders and glob patterns in any mix (:mod:`.inputs`); the local backend
reads, describes and searches them one batch at a time, so memory does not grow with their number.
They are always described with the collection's own FeatureSpec, read from the store, so the
vectors compared were made the same way. Output rows (one per query and rank):
``query, query_id, query_label, rank, id, path, label, distance, error, estimated_missing`` — a query
whose file is bad gets one row with ``rank`` 0 and the reason in ``error``; ``estimated_missing`` is
the missing fraction of the mask found in the query with ``detect_mask`` (see :mod:`.results`).

With ``detect_mask`` (``--detect-mask``) each query's missing region is found in the query itself
(:mod:`cbir_dist.damage.detect`; after the ``fringe``/``masks_dir`` damage when one is given) and the
query is reconstructed through it; a query in which nothing is found missing is searched as it is
(``estimated_missing`` 0.0). On the Ray backend the workers find the masks they reconstruct
through, and this process finds each searched query's mask again (the same network) for the
column and the page.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..damage.hook import DamageConfig, Damaged, DamageTransform, damage_record, damage_transform
from ..errors import InputError, UsageError
from ..features.spec import FeatureSpec
from ..io.files import DEFAULT_MAX_BYTES, ImageFile
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.progress import progress as progress_bar
from ..io.records import OK, Record, read_record
from ..retrieval.search import search_vectors
from ..store.milvus import MAX_TOP_K
from .inputs import QuerySet, resolve_queries
from .results import RESULT_COLUMNS, check_out_path, write_results

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class QueryConfig:
    """A query run; the CLI and jobs/query.py fill it."""

    db: str = "cbir.db"
    collection: str = "images"
    token: str | None = None
    k: int = 10
    fringe: float | None = None
    missing_fraction: float = 0.25
    angle: float = 0.0
    phase: float = 0.0
    masks_dir: str | None = None
    inpainter: str = "none"
    #: find each query's missing region in the query itself (after the fringe/masks damage, if any)
    detect_mask: bool = False
    exclude_self: bool = False
    batch_size: int = 32
    weights_override: str | None = None
    device: str | None = None
    runtime: str = "auto"  # what runs the backbone (features.backbones.load_backbone); not part of the spec
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    follow_symlinks: bool = False  # query folders: also read files that symlinks point to outside them
    memory_budget_bytes: int = 1 << 30
    backend: str = "local"
    progress: bool = True

    def __post_init__(self):
        from ..features.onnx_runtime import check_runtime

        if self.backend not in ("local", "ray"):
            raise UsageError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        check_runtime(self.runtime)
        if self.k < 1:
            raise UsageError(f"k must be >= 1, got {self.k}")
        if self.k + self.exclude_self > MAX_TOP_K:  # the search asks for one more, to drop the query's own row
            raise UsageError(f"-k {self.k} is too many: the search asks for one neighbour more, to drop each "
                             f"image's own row, and the store returns at most {MAX_TOP_K}; give -k {MAX_TOP_K - 1} "
                             "or less")
        self.damage()  # validates the damage options

    def damage(self, root: str | None = None) -> DamageConfig:
        """The damage-and-reconstruct settings of the queries (paths relative to ``root`` for ``--masks``)."""
        return DamageConfig(fringe=self.fringe, masks_dir=self.masks_dir, missing_fraction=self.missing_fraction,
                            angle=self.angle, phase=self.phase, inpainter=self.inpainter, root=root,
                            detect_mask=self.detect_mask)


def load_queries(files: Sequence[ImageFile], max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Record]:
    return [read_record(f, max_pixels=max_pixels, max_bytes=max_bytes) for f in files]


def _new_columns() -> dict[str, list]:
    return {c: [] for c in RESULT_COLUMNS}


def _add_row(cols: dict, rec: Record, rank: int, hit_id: int, path: str, label: str, distance: float,
             error: str, missing: float | None = None) -> None:
    for c, v in zip(RESULT_COLUMNS, (rec.path, rec.id, rec.label, rank, hit_id, path, label, distance, error,
                                     missing)):
        cols[c].append(v)


def _add_error(cols: dict, rec: Record, reason: str) -> None:
    """A query that could not be run: one row with rank 0 and the reason (no estimated fraction)."""
    _add_row(cols, rec, 0, -1, "", "", float("nan"), reason)


def _estimated(config: QueryConfig, result: Damaged) -> float | None:
    """The ``estimated_missing`` of a query: its mask's missing fraction with ``detect_mask``, else None."""
    return result.missing_fraction if config.detect_mask else None


def _damage(config: QueryConfig, paths: Sequence[str], root: str | None,
            roots: Mapping[str, str | None] | None) -> DamageTransform | None:
    """The damage step of the queries ``paths`` (None when they are intact): ``--masks`` finds each
    query's mask under the folder it came from (``roots[path]``, else ``root``)."""
    by_path = {p: (roots or {}).get(p, root) for p in paths} if config.masks_dir is not None else {}
    if len(set(by_path.values())) == 1:  # one folder: no table to ship to the Ray workers
        root, by_path = next(iter(by_path.values())), {}
    return damage_transform(config.damage(root), by_path)


def _loaded(damage: DamageTransform | None) -> DamageTransform | None:
    """``damage`` with its inpainter built in this process (one that cannot be built fails the job first)."""
    return damage.load() if damage is not None else None


#: ``observe(record, damaged)``: called for every query that reaches the search, with the record as read
#: and its :class:`~cbir_dist.damage.hook.Damaged` (the damaged image, the reconstruction it was
#: described from, the mask it was reconstructed through; both images the record's own when intact).
Observer = Callable[[Record, Damaged], None]


class Searcher:
    """The collection's spec, a feature extractor built from it, and the store: reused across query passes."""

    def __init__(self, config: QueryConfig, *, store=None):
        from ..store import VectorStore

        self.config = config
        if store is None:
            from ..store import lite

            lite.require_existing(config.db)  # a query reads: a mistyped --db creates nothing
        self.store = store or VectorStore(config.db, config.collection, token=config.token,
                                          memory_budget_bytes=config.memory_budget_bytes)
        self._owns_store = store is None
        try:
            self.spec = FeatureSpec.from_json(self.store.spec_json())
            self._extractor = None
            self.store.flush_and_index()
            self.rows = self.store.count()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the store when this searcher opened it (releasing a milvus-lite folder's lock)."""
        if self._owns_store:
            self._owns_store = False
            self.store.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def extractor(self):
        """The in-process feature extractor (loaded on first use; the Ray path loads it in actors instead)."""
        if self._extractor is None:
            from ..features.extract import Extractor

            self._extractor = Extractor(self.spec, device=self.config.device, weights=self.config.weights_override,
                                        batch_size=self.config.batch_size, runtime=self.config.runtime)
        return self._extractor

    def run(self, records: Sequence[Record], config: QueryConfig | None = None, *, root: str | None = None,
            roots: Mapping[str, str | None] | None = None, progress: bool = True,
            observe: Observer | None = None) -> dict:
        """Damage, reconstruct, describe and search each (already read) record; returns the result columns.

        ``root`` (or, per path, ``roots``) is the folder a query's path is relative to, for ``--masks``.
        The records keep their images as read (a record whose damage step fails is rejected).
        """
        config = config or self.config
        damage = _loaded(_damage(config, [r.path for r in records], root, roots))
        cols = _new_columns()
        with progress_bar(len(records), progress, "query", "img") as bar:
            for start in range(0, len(records), config.batch_size):
                batch = records[start : start + config.batch_size]
                self._run_batch(cols, batch, config, damage, observe)
                bar.update(len(batch))
        return cols

    def run_files(self, files: Sequence[ImageFile], config: QueryConfig | None = None, *, root: str | None = None,
                  roots: Mapping[str, str | None] | None = None, progress: bool = True,
                  observe: Observer | None = None) -> dict:
        """Like :meth:`run` for files: each batch of ``batch_size`` files is read, decoded, described and
        searched before the next is read, so memory is bounded by the batch size, not the query count."""
        config = config or self.config
        damage = _loaded(_damage(config, [f.path for f in files], root, roots))
        cols = _new_columns()
        with progress_bar(len(files), progress, "query", "img") as bar:
            for start in range(0, len(files), config.batch_size):
                records = load_queries(files[start : start + config.batch_size], config.max_pixels, config.max_bytes)
                self._run_batch(cols, records, config, damage, observe)
                bar.update(len(records))
                del records  # the batch's decoded images go before the next batch is read
        return cols

    def _run_batch(self, cols: dict, records: Sequence[Record], config: QueryConfig, damage: DamageTransform | None,
                   observe: Observer | None) -> None:
        errors: dict[int, str] = {}
        missing: dict[int, float | None] = {}
        good, images = [], []
        for i, r in enumerate(records):
            result = damage_record(r, damage) if r.status == OK else None  # the one per-file rule
            if result is None:  # a bad file, or its damage step failed: this query's error row
                errors[i] = r.error
                continue
            if observe is not None:
                observe(r, result)
            images.append(result.reconstructed)
            missing[i] = _estimated(config, result)
            good.append(i)
        vectors = self.extractor(images) if good else None
        self._add_results(cols, records, errors, good, vectors, config, missing)

    def _add_results(self, cols: dict, records: Sequence[Record], errors: Mapping[int, str], good: Sequence[int],
                     vectors: np.ndarray | None, config: QueryConfig,
                     missing: Mapping[int, float | None] | None = None) -> None:
        """Search the vectors of ``records[good]`` and add every record's rows, in the records' order
        (``missing[i]``: record i's ``estimated_missing``)."""
        missing = missing or {}
        hits: dict[int, tuple] = {}
        if good:
            ids, dist, paths, labels = search_vectors(self.store, vectors, [records[i].id for i in good], config.k,
                                                      config.exclude_self)
            hits = {i: (ids[q], dist[q], paths[q], labels[q]) for q, i in enumerate(good)}
        # read back: every ok query gets k hits, or as many as the collection holds (less its own row), or
        # an error row saying how many came back
        expected = min(config.k, self.rows - (1 if config.exclude_self else 0))
        for i, r in enumerate(records):
            if i in errors:
                _add_error(cols, r, errors[i])
                continue
            if i not in hits:
                continue
            ids_q, dist_q, paths_q, labels_q = hits[i]
            found = [rank for rank in range(len(ids_q)) if ids_q[rank] >= 0]
            if len(found) < expected:
                _add_error(cols, r, f"the store returned {len(found)} of the {expected} neighbours asked for "
                                    f"(collection {self.store.collection!r} holds {self.rows} rows)")
                continue
            for rank in found:
                _add_row(cols, r, rank + 1, int(ids_q[rank]), paths_q[rank], labels_q[rank], float(dist_q[rank]), "",
                         missing.get(i))

    def run_ray(self, files: Sequence[ImageFile], config: QueryConfig | None = None, *,
                root: str | None = None, roots: Mapping[str, str | None] | None = None,
                observe: Observer | None = None) -> dict:
        """Like :meth:`run`, with decoding, damage, reconstruction and features on the Ray pipeline.

        With ``observe`` or ``detect_mask`` the searched queries are then damaged again in this
        process (:func:`observe_files`): for the page, and for the masks' ``estimated_missing``."""
        from ..distributed.graph import GraphConfig, describe_files

        config = config or self.config
        gcfg = GraphConfig(batch_size=config.batch_size, max_pixels=config.max_pixels, max_bytes=config.max_bytes,
                           weights_override=config.weights_override, device=config.device, progress=config.progress,
                           runtime=config.runtime)
        transform = _damage(config, [f.path for f in files], root, roots)
        if transform is not None:
            transform.load_estimator()  # missing weights fail the job here, not on every worker
        recs, feats = describe_files(self.spec, files, gcfg, transform=transform)
        errors = {i: r.error for i, r in enumerate(recs) if r.status != OK}
        good = [i for i, r in enumerate(recs) if r.status == OK]
        missing: dict[int, float | None] = {}
        if good and (observe is not None or config.detect_mask):
            by_path: dict[str, float | None] = {}

            def seen(r: Record, result: Damaged) -> None:
                by_path[r.path] = _estimated(config, result)
                if observe is not None:
                    observe(r, result)

            observe_files(files, config, seen, root=root, roots=roots, paths={recs[i].path for i in good},
                          reconstruct=observe is not None)
            missing = {i: by_path.get(recs[i].path) for i in good}
        cols = _new_columns()
        self._add_results(cols, recs, errors, good, self.spec.fuse(feats) if good else None, config, missing)
        return cols


def observe_files(files: Sequence[ImageFile], config: QueryConfig, observe: Observer, *, root: str | None = None,
                  roots: Mapping[str, str | None] | None = None, paths: set[str] | None = None,
                  reconstruct: bool = True) -> None:
    """Read, damage and reconstruct ``files`` (only ``paths`` when given) one at a time and pass each to
    ``observe``: what the Ray path described, made again in this process (the damage step is
    deterministic; a mask the estimator finds, up to the runtime that ran it) for a page that shows
    the queries. Without ``reconstruct`` only the masks are made (``Damaged.reconstructed`` is then
    the damaged image): enough for ``estimated_missing``, and no inpainter is loaded."""
    files = [f for f in files if paths is None or f.path in paths]
    damage = _damage(config, [f.path for f in files], root, roots)
    damage = _loaded(damage) if reconstruct else (damage.load_estimator() if damage is not None else None)
    for f in files:
        r = read_record(f, max_pixels=config.max_pixels, max_bytes=config.max_bytes)
        if r.status != OK:
            continue
        result = damage_record(r, damage) if reconstruct else _masked(r, damage)
        if result is not None:  # a failed query's error row came from the search; the page shows that
            observe(r, result)


def _masked(record: Record, damage: DamageTransform | None) -> Damaged | None:
    """The mask and the damaged image of one record without reconstructing it (None when that fails)."""
    if damage is None:
        return Damaged(record.image, record.image)
    try:
        damaged, known = damage.zero_fill(record.image, record.path)
    except Exception:  # noqa: BLE001 - the search already recorded what the workers made of this file
        return None
    return Damaged(damaged, damaged, known)


def run_query(queries, config: QueryConfig, *, store=None, out: str | None = None, progress: bool = True,
              observe: Observer | None = None) -> dict:
    """Run every query named by ``queries``; return the result columns, written to ``out`` if given.

    ``queries`` is a folder, an image file or a glob pattern, a list of them in any mix (see
    :mod:`.inputs`), a :class:`~.inputs.QuerySet`, or a list of :class:`~cbir_dist.io.files.ImageFile`.
    The local backend reads and describes the queries one batch at a time. ``out`` ends in
    ``.parquet``, ``.csv`` or ``.jsonl``. ``observe`` sees every query that reaches the search, with
    its :class:`~cbir_dist.damage.hook.Damaged` (damaged and reconstructed images, the mask; for :mod:`.page`).
    """
    if out:
        check_out_path(out)
    qs = _query_set(queries, follow_symlinks=config.follow_symlinks)
    searcher = Searcher(config, store=store)
    try:
        if config.backend == "ray":
            cols = searcher.run_ray(qs.files, roots=qs.roots, observe=observe)
        else:
            cols = searcher.run_files(qs.files, roots=qs.roots, progress=progress, observe=observe)
    finally:
        searcher.close()
    if out:
        write_results(cols, out)
    return cols


def _query_set(queries, *, follow_symlinks: bool = False) -> QuerySet:
    if isinstance(queries, QuerySet):
        qs = queries
    elif isinstance(queries, (str, os.PathLike)) or (
        isinstance(queries, Sequence) and all(isinstance(q, (str, os.PathLike)) for q in queries)
    ):
        qs = resolve_queries(queries, follow_symlinks=follow_symlinks)
    else:
        qs = QuerySet()
        for f in queries:
            qs.add(f, None)
    if not qs.files:
        raise InputError(f"no query images found in {queries}")
    return qs
