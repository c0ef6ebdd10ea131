"""The query job: query images (optionally damaged, then reconstructed) → top-k neighbours from the collection.

Queries are always described with the collection's own FeatureSpec, read from the store, so the
vectors compared were made the same way. Output rows (one per query and rank):
``query, query_id, query_label, rank, id, path, label, distance, error`` — a query whose file is bad
gets one row with ``rank`` 0 and the reason in ``error``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..damage.hook import DamageConfig, apply_transform, damage_and_reconstruct, damage_transform, known_mask
from ..errors import InputError, UsageError
from ..features.spec import FeatureSpec
from ..io.files import DEFAULT_MAX_BYTES, ImageFile, list_images
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.records import OK, Record, read_record
from ..io.tables import write_parquet

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("query", "query_id", "query_label", "rank", "id", "path", "label", "distance", "error")


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
    exclude_self: bool = False
    batch_size: int = 32
    weights_override: str | None = None
    device: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    memory_budget_bytes: int = 1 << 30
    backend: str = "local"
    progress: bool = True

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise UsageError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.k < 1:
            raise UsageError(f"k must be >= 1, got {self.k}")
        self.damage()  # validates the damage options

    def damage(self, root: str | None = None) -> DamageConfig:
        """The damage-and-reconstruct settings of the queries (paths relative to ``root`` for ``--masks``)."""
        return DamageConfig(fringe=self.fringe, masks_dir=self.masks_dir, missing_fraction=self.missing_fraction,
                            angle=self.angle, phase=self.phase, inpainter=self.inpainter, root=root)


def load_queries(files: Sequence[ImageFile], max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Record]:
    return [read_record(f, max_pixels=max_pixels, max_bytes=max_bytes) for f in files]


def exclude_self(query_ids, result_ids, *arrays, k: int | None = None) -> tuple[np.ndarray, ...]:
    """Remove each query's own id from its ranked results: the one exclude-self rule of the package.

    Every entry of row ``q`` of ``result_ids`` equal to ``query_ids[q]`` is removed from it and from
    the same position of every array in ``arrays``; the remaining entries keep their order. Rows are
    then truncated to a common length: the shortest row (``K - 1`` when every query found itself,
    ``K`` when none did), and at most ``k`` when given.

    Parameters
    ----------
    query_ids : array_like, shape (Q,)
    result_ids : array_like, shape (Q, K)
        Ids of the ranked results.
    *arrays : array_like, shape (Q, K, ...)
        Aligned per-result data (labels, distances, paths, ...).
    k : int, optional
        Keep at most this many results per query.

    Returns
    -------
    tuple of ndarray
        ``(result_ids, *arrays)``, each of shape ``(Q, K', ...)``.
    """
    query_ids = np.asarray(query_ids)
    result_ids = np.asarray(result_ids)
    if result_ids.ndim != 2 or query_ids.shape != result_ids.shape[:1]:
        raise ValueError(
            f"result_ids must be (Q, K) and query_ids (Q,); got {result_ids.shape} and {query_ids.shape}."
        )
    arrays = tuple(np.asarray(a) for a in arrays)
    for i, a in enumerate(arrays):
        if a.shape[:2] != result_ids.shape:
            raise ValueError(f"arrays[{i}] has shape {a.shape}; its first two axes must be {result_ids.shape}.")
    is_self = result_ids == query_ids[:, None]
    k_out = result_ids.shape[1] - int(is_self.sum(axis=1).max(initial=0))
    if k is not None:
        k_out = min(k_out, int(k))
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k_out]  # kept entries first, in order
    out = [np.take_along_axis(result_ids, order, axis=1)]
    for a in arrays:
        idx = order.reshape(order.shape + (1,) * (a.ndim - 2))
        out.append(np.take_along_axis(a, idx, axis=1))
    return tuple(out)


def search_vectors(store, vectors: np.ndarray, query_ids: Sequence[int], k: int, exclude: bool):
    """Top-k ``(ids, distances, paths, labels)`` for each vector; with ``exclude`` the query's own row
    (same content id) is dropped (:func:`exclude_self`) and ``k`` others are returned."""
    res = store.search(vectors, k + 1 if exclude else k)
    arrays = (res.ids, res.distances, res.paths, res.labels)
    if not exclude:
        return arrays
    return exclude_self(query_ids, res.ids, res.distances, res.paths, res.labels, k=k)


def _new_columns() -> dict[str, list]:
    return {c: [] for c in RESULT_COLUMNS}


def _add_row(cols: dict, rec: Record, rank: int, hit_id: int, path: str, label: str, distance: float,
             error: str) -> None:
    for c, v in zip(RESULT_COLUMNS, (rec.path, rec.id, rec.label, rank, hit_id, path, label, distance, error)):
        cols[c].append(v)


def _add_error(cols: dict, rec: Record, reason: str) -> None:
    """A query that could not be run: one row with rank 0 and the reason."""
    _add_row(cols, rec, 0, -1, "", "", float("nan"), reason)


class Searcher:
    """The collection's spec, a feature extractor built from it, and the store: reused across query passes."""

    def __init__(self, config: QueryConfig, *, store=None):
        from ..store import VectorStore

        self.config = config
        self.store = store or VectorStore(config.db, config.collection, token=config.token,
                                          memory_budget_bytes=config.memory_budget_bytes)
        self.spec = FeatureSpec.from_json(self.store.spec_json())
        self._extractor = None
        self.store.flush_and_index()
        self.rows = self.store.count()

    @property
    def extractor(self):
        """The in-process feature extractor (loaded on first use; the Ray path loads it in actors instead)."""
        if self._extractor is None:
            from ..features.extract import Extractor

            self._extractor = Extractor(self.spec, device=self.config.device, weights=self.config.weights_override,
                                        batch_size=self.config.batch_size)
        return self._extractor

    def run(self, records: Sequence[Record], config: QueryConfig | None = None, *, root: str | None = None,
            progress: bool = True) -> dict:
        """Damage, reconstruct, describe and search each record; returns the result columns."""
        from tqdm.auto import tqdm

        from ..damage.inpaint import get_inpainter

        config = config or self.config
        damage = config.damage(root)
        inpainter = get_inpainter(config.inpainter)
        cols = _new_columns()
        for start in tqdm(range(0, len(records), config.batch_size), desc="query", unit="batch", disable=not progress):
            good, images = [], []
            for r in records[start : start + config.batch_size]:
                if r.status != OK:
                    _add_error(cols, r, r.error)
                    continue
                if damage.active:  # the one per-file rule: a failure here is this query's error row
                    apply_transform(r, lambda img, path: damage_and_reconstruct(
                        img, known_mask(img.shape, path, damage), inpainter)[1])
                if r.status != OK:
                    _add_error(cols, r, r.error)
                    continue
                images.append(r.image)
                good.append(r)
            if good:
                self._search_into(cols, good, self.extractor(images), config)
        return cols

    def _search_into(self, cols: dict, good: Sequence[Record], vectors: np.ndarray, config: QueryConfig) -> None:
        ids, dist, paths, labels = search_vectors(self.store, vectors, [r.id for r in good], config.k,
                                                  config.exclude_self)
        # every ok query gets k hits, or as many as the collection holds (less its own row), or an error row
        expected = min(config.k, self.rows - (1 if config.exclude_self else 0))
        for q, r in enumerate(good):
            hits = [rank for rank in range(ids.shape[1]) if ids[q, rank] >= 0]
            if len(hits) < expected:
                _add_error(cols, r, f"the store returned {len(hits)} of the {expected} neighbours asked for "
                                    f"(collection {self.store.collection!r} holds {self.rows} rows)")
                continue
            for rank in hits:
                _add_row(cols, r, rank + 1, int(ids[q, rank]), paths[q, rank], labels[q, rank],
                         float(dist[q, rank]), "")

    def run_ray(self, files: Sequence[ImageFile], config: QueryConfig | None = None, *,
                root: str | None = None) -> dict:
        """Like :meth:`run`, with decoding, damage, reconstruction and features on the Ray pipeline."""
        from ..distributed.graph import GraphConfig, describe_files

        config = config or self.config
        gcfg = GraphConfig(batch_size=config.batch_size, max_pixels=config.max_pixels, max_bytes=config.max_bytes,
                           weights_override=config.weights_override, device=config.device, progress=config.progress)
        recs, feats = describe_files(self.spec, files, gcfg, transform=damage_transform(config.damage(root)))
        cols = _new_columns()
        good = [r for r in recs if r.status == OK]
        for r in recs:
            if r.status != OK:
                _add_error(cols, r, r.error)
        if good:
            self._search_into(cols, good, self.spec.fuse(feats), config)
        return cols


def run_query(queries: str | Sequence[ImageFile], config: QueryConfig, *, store=None, out: str | None = None,
              progress: bool = True) -> dict:
    """Run every query in a folder (or list of files); return the result columns, written to ``out`` if given."""
    root = None
    if isinstance(queries, (str, os.PathLike)):
        root = str(queries)
        files = list_images(queries)
    else:
        files = list(queries)
    if not files:
        raise InputError(f"no query images found in {queries}")
    searcher = Searcher(config, store=store)
    if config.backend == "ray":
        cols = searcher.run_ray(files, root=root)
    else:
        cols = searcher.run(load_queries(files, config.max_pixels, config.max_bytes), root=root, progress=progress)
    if out:
        write_results(cols, out)
    return cols


RESULT_TYPES = {"query_id": "int64", "rank": "int32", "id": "int64", "distance": "float32"}


def write_results(cols: dict, out: str) -> None:
    """The result table as Parquet, columns :data:`RESULT_COLUMNS` (written atomically)."""
    import pyarrow as pa

    types = {c: getattr(pa, RESULT_TYPES.get(c, "string"))() for c in RESULT_COLUMNS}
    write_parquet(out, {c: cols[c] for c in RESULT_COLUMNS}, types)


def precision_table(cols: dict, ks=(1, 5, 10)) -> dict[int, float]:
    """Mean P@k (in %) over the successful queries of a result table (label match = relevant)."""
    by_query: dict[str, list[bool]] = {}
    for q, ql, rank, label, err in zip(cols["query"], cols["query_label"], cols["rank"], cols["label"], cols["error"]):
        if err or rank == 0:
            continue
        by_query.setdefault(q, []).append(label == ql)
    if not by_query:
        return {k: float("nan") for k in ks}
    return {k: 100.0 * float(np.mean([np.mean(hits[:k]) for hits in by_query.values()])) for k in ks}
