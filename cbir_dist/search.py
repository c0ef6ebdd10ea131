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
from pathlib import Path
from typing import Sequence

import numpy as np

from .fuse import FeatureSpec
from .imageio import DEFAULT_MAX_PIXELS, ImageFile, list_images
from .ingest import OK, Record, read_record

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
    memory_budget_bytes: int = 1 << 30
    backend: str = "local"
    progress: bool = True

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.fringe is not None and self.masks_dir is not None:
            raise ValueError("give either --fringe HZ or --masks DIR, not both")
        if self.fringe is not None and self.fringe <= 0:
            raise ValueError(f"--fringe must be a positive frequency in Hz (fringes per image), got {self.fringe}")


def query_mask(image: np.ndarray, path: str, config: QueryConfig, queries_root: str | None = None) -> np.ndarray | None:
    """The known-pixel mask for one query: a fringe pattern, a file from the masks folder, or None (intact)."""
    from .masks import fringe_mask, load_mask

    h, w = image.shape[:2]
    if config.fringe is not None:
        return fringe_mask(h, w, config.fringe, config.missing_fraction, angle=config.angle, phase=config.phase)
    if config.masks_dir is not None:
        rel = Path(path).relative_to(queries_root) if queries_root else Path(Path(path).name)
        for candidate in (Path(config.masks_dir) / rel, Path(config.masks_dir) / rel.with_suffix(".png"),
                          Path(config.masks_dir) / Path(rel.name).with_suffix(".png"), Path(config.masks_dir) / rel.name):
            if candidate.exists():
                return load_mask(candidate, shape=(h, w))
        raise FileNotFoundError(f"no mask for {path} in {config.masks_dir} (looked for {rel} and {rel.name} as .png)")
    return None


def restore(image: np.ndarray, known: np.ndarray | None, inpainter) -> np.ndarray:
    """Damage ``image`` with ``known`` (zero the missing pixels) and reconstruct it with ``inpainter``."""
    if known is None:
        return image
    from .masks import apply_mask

    return inpainter(apply_mask(image, known), known)


class QueryTransform:
    """The damage-and-reconstruct step as a picklable ``(image, id) -> image`` hook for Ray tasks.

    ``paths`` maps content ids to query paths; it is needed only to find per-file masks (``--masks``).
    """

    def __init__(self, config: QueryConfig, root: str | None = None, paths: dict[int, str] | None = None):
        self.config, self.root, self.paths = config, root, paths or {}
        self._inpainter = None

    def __call__(self, image: np.ndarray, id_: int) -> np.ndarray:
        from .inpaint import get_inpainter

        if self._inpainter is None:
            self._inpainter = get_inpainter(self.config.inpainter)
        path = self.paths.get(int(id_), "")
        return restore(image, query_mask(image, path, self.config, self.root), self._inpainter)


def damage_transform(config: QueryConfig, files: Sequence[ImageFile], root: str | None = None):
    """The damage-and-reconstruct hook for a run over ``files``, or None when nothing is damaged.

    With ``--masks`` the hook finds each image's mask by path, so content ids are mapped to paths first.
    """
    if config.fringe is None and config.masks_dir is None:
        return None
    paths = None
    if config.masks_dir is not None:
        from .imageio import content_id

        paths = {}
        for f in files:
            try:
                paths[content_id(Path(f.path).read_bytes())] = f.path
            except OSError:
                pass  # unreadable: the read stage rejects it with its reason
    return QueryTransform(config, root, paths)


def load_queries(files: Sequence[ImageFile], max_pixels: int) -> list[Record]:
    return [read_record(f, max_pixels=max_pixels) for f in files]


def search_vectors(store, vectors: np.ndarray, query_ids: Sequence[int], k: int, exclude_self: bool):
    """Top-k for each vector; with ``exclude_self`` the row whose id equals the query's is dropped."""
    res = store.search(vectors, k + 1 if exclude_self else k)
    ids, dist, paths, labels = res.ids, res.distances, res.paths, res.labels
    if not exclude_self:
        return ids, dist, paths, labels
    out = [np.empty((len(ids), k), dtype=a.dtype) for a in (ids, dist, paths, labels)]
    for q, qid in enumerate(query_ids):
        keep = np.flatnonzero(ids[q] != qid)[:k]
        for o, a in zip(out, (ids, dist, paths, labels)):
            o[q] = a[q, keep]
    return tuple(out)


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
        from .store import VectorStore

        self.config = config
        self.store = store or VectorStore(config.db, config.collection, token=config.token,
                                          memory_budget_bytes=config.memory_budget_bytes)
        self.spec = FeatureSpec.from_json(self.store.spec_json())
        self._extractor = None
        self.store.flush_and_index()

    @property
    def extractor(self):
        """The in-process feature extractor (loaded on first use; the Ray path loads it in actors instead)."""
        if self._extractor is None:
            from .extract import Extractor

            self._extractor = Extractor(self.spec, device=self.config.device, weights=self.config.weights_override,
                                        batch_size=self.config.batch_size)
        return self._extractor

    def run(self, records: Sequence[Record], config: QueryConfig | None = None, *, root: str | None = None,
            progress: bool = True) -> dict:
        """Damage, reconstruct, describe and search each record; returns the result columns."""
        from tqdm.auto import tqdm

        from .inpaint import get_inpainter

        config = config or self.config
        inpainter = get_inpainter(config.inpainter)
        cols = _new_columns()
        for start in tqdm(range(0, len(records), config.batch_size), desc="query", unit="batch", disable=not progress):
            good, images = [], []
            for r in records[start : start + config.batch_size]:
                if r.status != OK:
                    _add_error(cols, r, r.error)
                    continue
                try:
                    images.append(restore(r.image, query_mask(r.image, r.path, config, root), inpainter))
                    good.append(r)
                except (FileNotFoundError, ValueError) as exc:
                    _add_error(cols, r, str(exc))
            if good:
                self._search_into(cols, good, self.extractor(images), config)
        return cols

    def _search_into(self, cols: dict, good: Sequence[Record], vectors: np.ndarray, config: QueryConfig) -> None:
        ids, dist, paths, labels = search_vectors(self.store, vectors, [r.id for r in good], config.k,
                                                  config.exclude_self)
        for q, r in enumerate(good):
            for rank in range(ids.shape[1]):
                if ids[q, rank] < 0:
                    break
                _add_row(cols, r, rank + 1, int(ids[q, rank]), paths[q, rank], labels[q, rank],
                         float(dist[q, rank]), "")

    def run_ray(self, files: Sequence[ImageFile], config: QueryConfig | None = None, *,
                root: str | None = None) -> dict:
        """Like :meth:`run`, with decoding, damage, reconstruction and features on the Ray pipeline."""
        from .indexer import IndexConfig
        from .pipeline import describe_files_ray

        config = config or self.config
        icfg = IndexConfig(root or ".", batch_size=config.batch_size, max_pixels=config.max_pixels,
                           weights_override=config.weights_override, device=config.device, backend="ray",
                           progress=config.progress)
        recs, feats = describe_files_ray(self.spec, files, icfg, transform=damage_transform(config, files, root))
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
        raise ValueError(f"no query images found in {queries}")
    searcher = Searcher(config, store=store)
    if config.backend == "ray":
        cols = searcher.run_ray(files, root=root)
    else:
        cols = searcher.run(load_queries(files, config.max_pixels), root=root, progress=progress)
    if out:
        write_results(cols, out)
    return cols


RESULT_TYPES = {"query_id": "int64", "rank": "int32", "id": "int64", "distance": "float32"}


def write_results(cols: dict, out: str) -> None:
    """The result table as Parquet, columns :data:`RESULT_COLUMNS` (written atomically)."""
    import pyarrow as pa

    from .indexer import write_parquet

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
