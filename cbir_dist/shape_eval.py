"""The Pande et al. evaluation: shape and texture retrieval through the store, KNN classification, affine invariance.

``cbir-dist evaluate DATASET --profile shape|texture --out DIR`` runs :func:`run_shape_evaluate`.

Protocol
--------
1. The data set is indexed with the profile's FeatureSpec (:func:`cbir_dist.profiles.profile_spec`)
   into the collection ``shape`` (or ``texture``) of the milvus-lite store ``OUT/eval.db``; the
   standardisation is fitted on the collection and stored with it.
2. Every file queries the collection: its vector is made with the collection's stored spec and
   searched with :func:`cbir_dist.search.search_vectors`. Byte-identical files share one row
   (content ids), so a class may hold fewer rows than files; every file is still a query and its
   "self" is that shared row.
3. Scores, in % (means over queries):

   * P@1/5/10 and mAP@``map_k`` (AP over the top ``map_k``, normalised by min(R, map_k)) under the
     configured protocol: ``exclude-self`` drops the query's own row from its ranking,
     ``include-self`` keeps it;
   * the bull's-eye score of MPEG-7 CE-Shape-1 (Latecki, Lakämper and Eckhardt, CVPR 2000): rows of
     the query's class among the top ``2n`` of the ranking *including* the query, over the class
     size ``n`` in the collection; the window ``2n`` uses the median class size (40 on MPEG-7). It
     is computed the same way whatever the protocol;
   * KNN classification: majority vote of the ``k`` nearest *other* rows, ties broken by the smaller
     summed distance, then by the nearest neighbour (:func:`cbir_dist.knn.knn_predict`); scored one
     class against the rest as Pande et al. do — precision, recall (sensitivity), specificity and
     accuracy ``(TP + TN) / n`` per class, macro-averaged — plus the overall fraction correct.

4. Shape only: the affine repository of :mod:`cbir_dist.affine` (every image plus a rotated, a
   translated, a scaled and a combined copy, drawn deterministically from the seed) is written to
   ``OUT/affine`` and indexed into ``shape_affine``. It is scored two ways:

   * ``affine`` queries against the ``affine`` collection: every repository image queries the
     repository (the protocol's self-exclusion drops only the query itself; its sibling copies stay);
   * each variant against the ``original`` collection, with that collection's spec: under
     exclude-self the variant's source shape is removed from its ranking, so the task is the
     unmodified leave-one-out task with only the query transformed — the invariance test.

5. Ablation, numpy only (not through the store) and labelled so: the same protocol on features
   computed in the same run, standardised exactly as the store's spec does (z-scores fitted on the
   collection). Shape: Fourier coefficients 10/20/30, extreme points off/on, contour smoothing σ
   0/1/2/4, and the two paper/profile settings without standardisation. Texture: each block alone
   and both together.

Outputs in ``OUT``: ``results.json`` (``config``, ``versions``, ``records``, ``per_class``,
``ablation``, ``timings``), ``table_<profile>.md``, ``table_<profile>_per_class.md``, PNG plots, a
retrieval grid, and a self-contained ``report.html``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

EVAL_PROFILES = ("shape", "texture")
PROTOCOLS = ("exclude-self", "include-self")
AFFINE_VARIANTS = ("rotation", "translation", "scaling", "combined")
ABLATION_N_COEFFS = (10, 20, 30)
ABLATION_SIGMAS = (0.0, 1.0, 2.0, 4.0)
GRID_TOP = 8
QUERY_CHECK = 4  # queries whose vectors are recomputed through the query path and compared
AFFINE_MARKER = ".complete.json"


@dataclass(frozen=True)
class ShapeEvalConfig:
    """A shape or texture evaluation run; ``cbir-dist evaluate --profile shape|texture`` fills it.

    ``n_coeffs``, ``sigma`` and ``extreme_points`` override the shape profile's Fourier descriptor
    settings (``None`` keeps the profile's). ``variants`` are the affine transforms scored (shape
    only; the repository always holds all four). ``backend`` indexes locally or on Ray.
    """

    dataset: str
    out: str
    profile: str = "shape"
    seed: int = 0
    protocol: str = "exclude-self"
    knn_k: tuple[int, ...] = (1, 3, 5)
    affine: bool = True
    variants: tuple[str, ...] = AFFINE_VARIANTS
    ablation: bool = True
    backend: str = "local"
    n_coeffs: int | None = None
    sigma: float | None = None
    extreme_points: bool | None = None
    map_k: int = 100
    grid_queries: int = 4
    progress: bool = True

    def __post_init__(self):
        if self.profile not in EVAL_PROFILES:
            raise ValueError(f"profile must be one of {EVAL_PROFILES}, got {self.profile!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.knn_k or any(isinstance(k, bool) or int(k) != k or k < 1 for k in self.knn_k):
            raise ValueError(f"knn_k must be positive integers, e.g. (1, 3, 5); got {self.knn_k!r}")
        bad = [v for v in self.variants if v not in AFFINE_VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"variants must be a non-empty subset of {AFFINE_VARIANTS}, got {self.variants!r}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.map_k < 10:
            raise ValueError(f"map_k must be >= 10 (P@10 is reported), got {self.map_k}")
        if self.profile != "shape" and any(v is not None for v in (self.n_coeffs, self.sigma, self.extreme_points)):
            raise ValueError("n_coeffs, sigma and extreme_points apply to the shape profile only")

    @property
    def exclude_self(self) -> bool:
        return self.protocol == "exclude-self"


def profile_spec_for(cfg: ShapeEvalConfig):
    """The FeatureSpec indexed: the profile's, with the shape overrides of ``cfg`` merged into its params."""
    from .profiles import PROFILES, profile_spec

    if cfg.profile != "shape":
        return profile_spec(cfg.profile)
    params = dict(PROFILES["shape"]["params"]["fourier_shape"])
    for key in ("n_coeffs", "sigma", "extreme_points"):
        if getattr(cfg, key) is not None:
            params[key] = getattr(cfg, key)
    return profile_spec("shape", params={"fourier_shape": params})


# --- scoring (pure numpy) ---------------------------------------------------------------------------


@dataclass
class Scored:
    """Per-query scores of one query set against one database (arrays of shape (Q,))."""

    p_at_1: np.ndarray
    p_at_5: np.ndarray
    p_at_10: np.ndarray
    ap: np.ndarray
    bullseye: np.ndarray | None
    predictions: dict  # k -> (Q,) predicted labels
    query_labels: np.ndarray
    ranked_paths: np.ndarray  # (Q, K') under the protocol, for figures
    ranked_labels: np.ndarray


def score_ranking(
    ids: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    paths: np.ndarray,
    self_ids: Sequence[int],
    query_labels: Sequence[str],
    class_sizes: Mapping[str, int],
    *,
    self_in_db: Sequence[bool],
    exclude_self: bool,
    knn_k: Sequence[int],
    map_k: int,
    window: int | None,
) -> Scored:
    """Score ranked neighbours (nearest first, the query's own row possibly among them).

    Parameters
    ----------
    ids, dist, labels, paths : ndarray, shape (Q, K)
        Database ids, Euclidean distances, labels and paths of each query's top K, ascending.
    self_ids : (Q,) int
        The row that is the query itself (its content id; for an affine variant, its source's id).
    query_labels : (Q,) str
    class_sizes : label -> rows of that class in the database
    self_in_db : (Q,) bool
        Whether ``self_ids[q]`` is a database row (it then counts in the class size).
    exclude_self : bool
        The protocol of P@k and mAP; KNN always excludes self, the bull's-eye always includes it.
    window : int or None
        The bull's-eye window (``2 ×`` class size); ``None`` skips it (queries not in the database).
    """
    from .knn import knn_predict
    from .metrics import average_precision, bullseye_score, drop_self, precision_at_k

    ids, dist = np.asarray(ids), np.asarray(dist, dtype=np.float64)
    labels, paths = np.asarray(labels, dtype=object), np.asarray(paths, dtype=object)
    qlab = np.asarray(query_labels, dtype=object)
    self_ids = np.asarray(self_ids, dtype=np.int64)
    in_db = np.asarray(self_in_db, dtype=bool)
    if ids.ndim != 2 or not (ids.shape == dist.shape == labels.shape == paths.shape):
        raise ValueError(f"ids, dist, labels and paths must be (Q, K) arrays of one shape, got {ids.shape}, "
                         f"{dist.shape}, {labels.shape}, {paths.shape}")
    if not (len(qlab) == len(self_ids) == len(in_db) == ids.shape[0]):
        raise ValueError("self_ids, query_labels and self_in_db need one entry per query (row of ids)")
    sizes = np.asarray([class_sizes.get(lb, 0) for lb in qlab], dtype=np.int64)
    ex_ids, ex_lab, ex_dist, ex_paths = drop_self(self_ids, ids, labels, dist, paths)
    if exclude_self:
        r_lab, r_paths, n_rel = ex_lab, ex_paths, sizes - in_db
    else:
        r_lab, r_paths, n_rel = labels, paths, sizes
    avail = r_lab.shape[1]
    p = {k: precision_at_k(r_lab, qlab, min(k, avail)) for k in (1, 5, 10)}
    ap = average_precision(r_lab[:, :map_k], qlab, np.maximum(n_rel, 0))
    be = None
    if window is not None:
        if labels.shape[1] < window:
            raise ValueError(f"the bull's-eye needs the top {window} results, only {labels.shape[1]} were retrieved")
        be = bullseye_score(labels, qlab, np.maximum(sizes, 1), window=window)
    preds = {}
    for k in knn_k:
        if k > ex_lab.shape[1]:
            raise ValueError(f"knn k={k} needs {k} neighbours besides the query; only {ex_lab.shape[1]} retrieved")
        preds[int(k)] = knn_predict(ex_lab, ex_dist, int(k))
    return Scored(p[1], p[5], p[10], ap, be, preds, qlab, r_paths, r_lab)


def summarise(scored: Scored, class_labels: Sequence[str]) -> tuple[dict, dict]:
    """Mean retrieval figures (%) and, per KNN k, the classification report's macro and overall figures (%)."""
    from .knn import classification_report

    retrieval = {
        "p_at_1": 100 * float(np.mean(scored.p_at_1)),
        "p_at_5": 100 * float(np.mean(scored.p_at_5)),
        "p_at_10": 100 * float(np.mean(scored.p_at_10)),
        "map": 100 * float(np.nanmean(scored.ap)) if np.isfinite(scored.ap).any() else float("nan"),
        "bullseye": None if scored.bullseye is None else 100 * float(np.mean(scored.bullseye)),
        "n_queries": int(len(scored.query_labels)),
    }
    labels = sorted(set(class_labels) | set(scored.query_labels.tolist())
                    | {v for p in scored.predictions.values() for v in p.tolist()})
    knn = {}
    for k, pred in scored.predictions.items():
        rep = classification_report(scored.query_labels, pred, labels=labels)
        knn[k] = {
            "precision": 100 * rep["macro"]["precision"],
            "recall": 100 * rep["macro"]["recall"],
            "specificity": 100 * rep["macro"]["specificity"],
            "accuracy": 100 * rep["macro"]["accuracy"],
            "knn_accuracy": 100 * rep["accuracy"],
            "_report": rep,
        }
    return retrieval, knn


def per_class_table(scored: Scored, report: dict) -> dict:
    """Per class: queries, P@1, bull's-eye, and the KNN one-vs-rest figures (all in %)."""
    out = {}
    for lb in report["labels"]:
        m = scored.query_labels == lb
        if not m.any():
            continue
        pc = report["per_class"][lb]
        out[lb] = {
            "n_queries": int(m.sum()),
            "p_at_1": 100 * float(scored.p_at_1[m].mean()),
            "bullseye": None if scored.bullseye is None else 100 * float(scored.bullseye[m].mean()),
            "precision": 100 * pc["precision"], "recall": 100 * pc["recall"],
            "specificity": 100 * pc["specificity"], "accuracy": 100 * pc["accuracy"],
        }
    return out


def rank_numpy(xq: np.ndarray, xdb: np.ndarray, top: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of the ``top`` nearest database rows per query, ascending.

    Exact brute force in chunks of ``chunk`` queries; ties are broken by the database index.
    """
    xq, xdb = np.asarray(xq, np.float64), np.asarray(xdb, np.float64)
    top = min(int(top), len(xdb))
    sq = (xdb**2).sum(1)
    idx = np.empty((len(xq), top), np.int64)
    dist = np.empty((len(xq), top))
    for s in range(0, len(xq), chunk):
        q = xq[s : s + chunk]
        d2 = np.maximum((q**2).sum(1)[:, None] + sq[None] - 2.0 * q @ xdb.T, 0.0)
        if top < len(xdb):
            part = np.argpartition(d2, top - 1, axis=1)[:, :top]
        else:
            part = np.tile(np.arange(len(xdb)), (len(q), 1))
        pd = np.take_along_axis(d2, part, axis=1)
        o = np.lexsort((part, pd), axis=1)
        idx[s : s + chunk] = np.take_along_axis(part, o, axis=1)
        dist[s : s + chunk] = np.sqrt(np.take_along_axis(pd, o, axis=1))
    return idx, dist


def bullseye_window(class_sizes: Mapping[str, int]) -> int:
    """``2 ×`` the median class size (40 for MPEG-7's 20 shapes per class)."""
    return 2 * int(round(float(np.median(list(class_sizes.values())))))


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class QuerySet:
    """Files that query a collection, with their raw per-block features."""

    paths: list
    labels: list
    ids: np.ndarray  # content id of each file (duplicates share one)
    feats: dict  # block name -> (Q, dim) float32 raw features


@dataclass
class Indexed:
    """A data set indexed into one collection."""

    collection: str
    queries: QuerySet
    class_sizes: dict  # label -> rows in the collection
    db_ids: set
    n_files: int
    n_rejected: int
    n_duplicates: int
    seconds: float


def _read_parquet(path: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def _index(cfg: ShapeEvalConfig, spec, images_dir: str, db: str, collection: str, run_dir: Path) -> Indexed:
    """Index ``images_dir`` (fit, fuse, upsert) and collect every file's raw features from the run's shards."""
    from .indexer import IndexConfig, run_index
    from .ingest import DUPLICATE, OK

    t = time.perf_counter()
    icfg = IndexConfig(images_dir, db=db, collection=collection, run_dir=str(run_dir), save_features=True,
                       overwrite=True, backend=cfg.backend, progress=cfg.progress)
    if cfg.backend == "ray":
        from .pipeline import run_index_ray

        summary = run_index_ray(spec, icfg)
    else:
        summary = run_index(spec, icfg)
    log.info("%s: %s", collection, summary.line())
    manifest = _read_parquet(run_dir / "manifest.parquet")
    rows = [dict(zip(manifest, vals)) for vals in zip(*manifest.values())]
    stored = [r for r in rows if r["status"] == OK]
    queries = [r for r in rows if r["status"] in (OK, DUPLICATE)]
    if len(stored) < 2:
        raise ValueError(f"{images_dir}: fewer than 2 valid images were indexed ({summary.line()})")
    by_id: dict[int, dict] = {}
    for part in sorted((run_dir / "shards").glob("*.features.parquet")):
        t_part = _read_parquet(part)
        for j, i in enumerate(t_part["id"]):
            by_id.setdefault(int(i), {b.name: t_part[f"feat_{b.name}"][j] for b in spec.blocks})
    missing = [r for r in queries if int(r["id"]) not in by_id]
    if missing:  # an indexer that keeps no per-block features: describe those files here
        from .extract import handcrafted_features
        from .imageio import read_image

        log.info("%s: describing %d files without stored features", collection, len(missing))
        for r in missing:
            f = handcrafted_features([read_image(r["path"])], spec.blocks)
            by_id[int(r["id"])] = {name: v[0] for name, v in f.items()}
    feats = {b.name: np.asarray([by_id[int(r["id"])][b.name] for r in queries], np.float32) for b in spec.blocks}
    sizes: dict[str, int] = {}
    for r in stored:
        sizes[r["label"]] = sizes.get(r["label"], 0) + 1
    qs = QuerySet([r["path"] for r in queries], [r["label"] for r in queries],
                  np.asarray([int(r["id"]) for r in queries], np.int64), feats)
    return Indexed(collection, qs, sizes, {int(r["id"]) for r in stored}, len(rows),
                   sum(r["status"] not in (OK, DUPLICATE) for r in rows), sum(r["status"] == DUPLICATE for r in rows),
                   round(time.perf_counter() - t, 2))


def _searcher(db: str, collection: str):
    from .search import QueryConfig, Searcher

    return Searcher(QueryConfig(db=db, collection=collection))


def _check_query_path(searcher, qs: QuerySet, vectors: np.ndarray, n: int = QUERY_CHECK) -> float:
    """Recompute the first ``n`` query vectors through the query path (decode, describe, fuse) and compare."""
    from .errors import SpecMismatchError
    from .imageio import read_image

    n = min(n, len(qs.paths))
    direct = searcher.extractor([read_image(p) for p in qs.paths[:n]])
    diff = float(np.max(np.abs(direct - vectors[:n]))) if n else 0.0
    if not np.isfinite(diff) or diff > 1e-4:
        raise SpecMismatchError(
            f"query vectors differ from the indexed ones by {diff:g} for the same files: the index and query "
            "paths describe images differently"
        )
    return diff


def _search(searcher, vectors: np.ndarray, self_ids: np.ndarray, top: int):
    from .search import search_vectors

    return search_vectors(searcher.store, vectors, list(self_ids), top, False)


def _eval_queries(cfg, searcher, vectors, qs_labels, self_ids, self_in_db, class_sizes, *, window):
    n_db = sum(class_sizes.values())
    top = min(n_db, max(cfg.map_k + 1, window or 0, max(cfg.knn_k) + 1))
    ids, dist, paths, labels = _search(searcher, vectors, self_ids, top)
    return score_ranking(ids, dist, labels, paths, self_ids, qs_labels, class_sizes, self_in_db=self_in_db,
                         exclude_self=cfg.exclude_self, knn_k=cfg.knn_k, map_k=cfg.map_k, window=window)


def _records(base: dict, scored: Scored, class_labels) -> tuple[list[dict], dict]:
    retrieval, knn = summarise(scored, class_labels)
    recs = []
    for k, figs in knn.items():
        recs.append({**base, **retrieval, "knn_k": k, **{key: v for key, v in figs.items() if key != "_report"}})
    return recs, knn


def _affine_key(cfg: ShapeEvalConfig) -> dict:
    """What the affine repository depends on: the data set's files (paths, sizes, mtimes) and the seed."""
    import hashlib
    import os

    from .imageio import list_images

    files = list_images(cfg.dataset)
    listing = "\n".join(f"{f.path}\t{os.stat(f.path).st_size}\t{os.stat(f.path).st_mtime_ns}" for f in files)
    return {"dataset": str(Path(cfg.dataset).resolve()), "seed": cfg.seed, "files": len(files),
            "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _affine_repository(cfg: ShapeEvalConfig, out: Path) -> tuple[Path, float]:
    """Write ``OUT/affine``, or reuse it when a previous run completed it for the same files and seed."""
    from .affine import write_affine_repository

    t = time.perf_counter()
    dst = out / "affine"
    key = _affine_key(cfg)
    marker = dst / AFFINE_MARKER
    try:
        if json.loads(marker.read_text()) == key:
            log.info("reusing the affine repository in %s", dst)
            return dst, 0.0
    except (OSError, ValueError):
        pass
    if dst.exists():  # file names carry the drawn parameters: files of another seed must not linger
        import shutil

        shutil.rmtree(dst)
    write_affine_repository(cfg.dataset, dst, seed=cfg.seed)
    marker.write_text(json.dumps(key))
    return dst, round(time.perf_counter() - t, 2)


def _affine_table(dst: Path) -> dict[str, tuple[str, str]]:
    """Repository file (relative path) -> (source file relative to the data set, variant)."""
    with open(dst / "affine_params.csv", newline="") as fh:
        return {row["file"]: (row["source"], row["variant"]) for row in csv.DictReader(fh)}


def run_shape_evaluate(cfg: ShapeEvalConfig) -> dict:
    """Run the evaluation of the module docstring; write its outputs to ``cfg.out`` and return the results.

    The returned dict is what ``results.json`` holds plus ``"summary"``: a few lines with the
    headline figures (printed by the CLI).
    """
    from .evaluate import _versions
    from .imageio import list_images

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not list_images(cfg.dataset):
        raise ValueError(f"no images found under {cfg.dataset} (expected <class>/<image> files)")
    db = str(out / "eval.db")
    spec = profile_spec_for(cfg)
    timings: dict[str, float] = {}
    records: list[dict] = []
    per_class: dict = {}
    figures: dict = {}

    # 1. the data set, indexed and queried
    orig = _index(cfg, spec, cfg.dataset, db, cfg.profile, out / "runs" / cfg.profile)
    timings["index"] = orig.seconds
    t = time.perf_counter()
    searcher = _searcher(db, cfg.profile)
    stored_spec = searcher.spec
    try:
        qs = orig.queries
        vectors = stored_spec.fuse(qs.feats)
        check = _check_query_path(searcher, qs, vectors)
        window = bullseye_window(orig.class_sizes)
        in_db = np.isin(qs.ids, list(orig.db_ids))
        scored = _eval_queries(cfg, searcher, vectors, qs.labels, qs.ids, in_db, orig.class_sizes, window=window)
        base = {"profile": cfg.profile, "variant": "original", "queries": "all", "database": "original",
                "protocol": cfg.protocol, "n_database": len(orig.db_ids), "bullseye_window": window}
        recs, knn = _records(base, scored, list(orig.class_sizes))
        records += recs
        k0 = int(cfg.knn_k[0])
        per_class = per_class_table(scored, knn[k0]["_report"])
        figures["grid"] = _grid_entries(scored, qs, cfg)
        timings["query"] = round(time.perf_counter() - t, 2)

        # 2. the affine repository (shape)
        affine_info = None
        if cfg.profile == "shape" and cfg.affine:
            affine_info = _evaluate_affine(cfg, spec, db, out, orig, searcher, timings, records, figures)
    finally:
        searcher.store.close()

    # 3. ablation (numpy)
    ablation = []
    if cfg.ablation:
        t = time.perf_counter()
        ablation = (_shape_ablation(cfg, spec, orig) if cfg.profile == "shape" else _block_ablation(cfg, spec, orig))
        timings["ablation"] = round(time.perf_counter() - t, 2)

    timings["total"] = round(time.perf_counter() - t_start, 2)
    results = {
        "config": {**asdict(cfg), "spec": json.loads(stored_spec.to_json()), "n_files": orig.n_files,
                   "n_database": len(orig.db_ids), "n_duplicates": orig.n_duplicates, "n_rejected": orig.n_rejected,
                   "classes": orig.class_sizes, "db": db, "collection": cfg.profile,
                   "affine": affine_info},
        "versions": _versions(),
        "records": records,
        "per_class": {"knn_k": int(cfg.knn_k[0]), "classes": per_class},
        "ablation": ablation,
        "timings": timings,
        "query_path_check": {"queries": min(QUERY_CHECK, len(orig.queries.paths)), "max_abs_diff": check},
    }
    results["summary"] = _summary(results)
    write_shape_report(results, out, figures)
    log.info("shape evaluation done in %.1f s", timings["total"])
    return results


def _evaluate_affine(cfg, spec, db, out, orig: Indexed, searcher, timings, records, figures) -> dict:
    """Index the affine repository and score it against itself and its variants against the originals."""
    dst, t_write = _affine_repository(cfg, out)
    timings["affine_write"] = t_write
    aff = _index(cfg, spec, str(dst), db, f"{cfg.profile}_affine", out / "runs" / f"{cfg.profile}_affine")
    timings["affine_index"] = aff.seconds
    t = time.perf_counter()
    table = _affine_table(dst)
    qs = aff.queries
    rel = [Path(p).relative_to(dst).as_posix() for p in qs.paths]
    variant = np.asarray([table[r][1] for r in rel], dtype=object)
    source_rel = [table[r][0] for r in rel]
    orig_id = {Path(p).relative_to(cfg.dataset).as_posix(): int(i)
               for p, i in zip(orig.queries.paths, orig.queries.ids)}

    # a. the repository against itself
    asearch = _searcher(db, aff.collection)
    try:
        keep = np.isin(variant, ("original",) + tuple(cfg.variants))
        vec = asearch.spec.fuse({k: v[keep] for k, v in qs.feats.items()})
        window = None  # the bull's-eye is MPEG-7's protocol on the unmodified set (and 2n = 200 here is costly)
        ids = qs.ids[keep]
        scored = _eval_queries(cfg, asearch, vec, list(np.asarray(qs.labels, dtype=object)[keep]), ids,
                               np.isin(ids, list(aff.db_ids)), aff.class_sizes, window=window)
    finally:
        asearch.store.close()
    base = {"profile": cfg.profile, "variant": "affine", "queries": "all", "database": "affine",
            "protocol": cfg.protocol, "n_database": len(aff.db_ids), "bullseye_window": window}
    records += _records(base, scored, list(aff.class_sizes))[0]

    # b. each variant against the unmodified collection, its source as "self"
    is_var = np.isin(variant, tuple(cfg.variants))
    src_ids = np.asarray([orig_id.get(s, -1) for s in source_rel], np.int64)
    vec = searcher.spec.fuse({k: v[is_var] for k, v in qs.feats.items()})
    labels = np.asarray(qs.labels, dtype=object)[is_var]
    sids = src_ids[is_var]
    n_db = len(orig.db_ids)
    top = min(n_db, max(cfg.map_k + 1, max(cfg.knn_k) + 1))
    ids, dist, paths, rlabels = _search(searcher, vec, sids, top)
    in_db = np.isin(sids, list(orig.db_ids))
    for name in ("all",) + tuple(cfg.variants):
        m = np.ones(len(sids), bool) if name == "all" else variant[is_var] == name
        sc = score_ranking(ids[m], dist[m], rlabels[m], paths[m], sids[m], labels[m], orig.class_sizes,
                           self_in_db=in_db[m], exclude_self=cfg.exclude_self, knn_k=cfg.knn_k, map_k=cfg.map_k,
                           window=None)
        base = {"profile": cfg.profile, "variant": "affine", "queries": name if name != "all" else "all variants",
                "database": "original", "protocol": cfg.protocol, "n_database": n_db, "bullseye_window": None}
        records += _records(base, sc, list(orig.class_sizes))[0]
    timings["affine_query"] = round(time.perf_counter() - t, 2)
    # one source and its variants, for the figure
    first = source_rel[0]
    order = ("original",) + AFFINE_VARIANTS
    figures["affine"] = sorted(((variant[i], qs.paths[i]) for i in range(len(rel)) if source_rel[i] == first),
                               key=lambda item: order.index(item[0]))
    return {"dir": str(dst), "files": aff.n_files, "database": len(aff.db_ids), "seed": cfg.seed,
            "variants": list(cfg.variants), "write_seconds": t_write}


def _grid_entries(scored: Scored, qs: QuerySet, cfg: ShapeEvalConfig) -> list[dict]:
    """A few queries (one per class drawn with the seed) and their top results under the protocol."""
    rng = np.random.default_rng(cfg.seed)
    labels = np.asarray(qs.labels, dtype=object)
    classes = sorted(set(qs.labels))
    chosen = rng.choice(len(classes), size=min(cfg.grid_queries, len(classes)), replace=False)
    out = []
    for c in sorted(chosen):
        rows = np.flatnonzero(labels == classes[c])
        q = int(rows[rng.integers(len(rows))])
        out.append({"query": qs.paths[q], "label": qs.labels[q], "paths": list(scored.ranked_paths[q, :GRID_TOP]),
                    "labels": list(scored.ranked_labels[q, :GRID_TOP])})
    return out


# --- ablation (numpy only) --------------------------------------------------------------------------


def _numpy_scores(cfg: ShapeEvalConfig, x_db: np.ndarray, db_ids, db_labels, db_paths, x_q, q_ids, q_labels,
                  class_sizes, window) -> dict:
    """The store protocol on an in-memory database: brute-force ranking, then :func:`score_ranking`."""
    top = min(len(x_db), max(cfg.map_k + 1, window or 0, max(cfg.knn_k) + 1))
    idx, dist = rank_numpy(x_q, x_db, top)
    db_ids = np.asarray(db_ids)
    db_labels, db_paths = np.asarray(db_labels, dtype=object), np.asarray(db_paths, dtype=object)
    sc = score_ranking(db_ids[idx], dist, db_labels[idx], db_paths[idx], q_ids, q_labels, class_sizes,
                       self_in_db=np.ones(len(q_ids), bool), exclude_self=cfg.exclude_self, knn_k=cfg.knn_k,
                       map_k=cfg.map_k, window=window)
    retrieval, knn = summarise(sc, list(class_sizes))
    k0 = int(cfg.knn_k[0])
    return {**retrieval, "knn_k": k0, "knn_accuracy": knn[k0]["knn_accuracy"]}


def _unique_rows(qs: QuerySet) -> np.ndarray:
    """Index of the first query of every content id (the database rows, in query order)."""
    _, first = np.unique(qs.ids, return_index=True)
    return np.sort(first)


def _shape_ablation(cfg: ShapeEvalConfig, spec, orig: Indexed) -> list[dict]:
    """Fourier coefficients x extreme points x smoothing σ, plus unstandardised rows; numpy retrieval."""
    from .descriptors.fourier_shape import contour_descriptor, shape_contour
    from .imageio import read_image
    from .profiles import build_spec

    qs = orig.queries
    params = dict(spec.block("fourier_shape").params)
    n_points = int(params.get("n_points", 128))
    n_max = max(max(ABLATION_N_COEFFS), int(params.get("n_coeffs", 10)))
    rows = _unique_rows(qs)
    contours, ok = [], []
    for r in rows:
        try:
            c = shape_contour(read_image(qs.paths[r]), threshold=params.get("threshold", "otsu"),
                              foreground=params.get("foreground", "auto"))
        except ValueError as exc:
            log.warning("ablation: skipping %s (%s)", qs.paths[r], exc)
            continue
        contours.append(c)
        ok.append(r)
    rows = np.asarray(ok)
    db_ids, db_labels = qs.ids[rows], [qs.labels[r] for r in rows]
    db_paths = [qs.paths[r] for r in rows]
    keep_q = np.isin(qs.ids, db_ids)  # files whose contour was traced
    q_ids, q_labels = qs.ids[keep_q], [lb for lb, k in zip(qs.labels, keep_q) if k]
    order = np.argsort(db_ids)
    q_pos = order[np.searchsorted(db_ids, q_ids, sorter=order)]  # each query's database row
    sizes: dict[str, int] = {}
    for lb in db_labels:
        sizes[lb] = sizes.get(lb, 0) + 1
    window = bullseye_window(sizes)
    sigmas = sorted(set(ABLATION_SIGMAS) | {float(params.get("sigma", 1.0))})
    full = {s: np.stack([contour_descriptor(c, n_coeffs=n_max, sigma=s, n_points=n_points, extreme_points=True)
                         for c in contours]).astype(np.float32) for s in sigmas}
    profile_key = (int(params.get("n_coeffs", 10)), bool(params.get("extreme_points", False)),
                   float(params.get("sigma", 1.0)))
    paper_key = (10, False, 1.0)
    out = []
    configs = [(n, e, s, True) for n in ABLATION_N_COEFFS for e in (False, True) for s in ABLATION_SIGMAS]
    for key in (paper_key, profile_key):
        if (*key, True) not in configs:
            configs.append((*key, True))
        configs.append((*key, False))
    for n, e, s, standardized in configs:
        x = np.concatenate([full[s][:, :n], full[s][:, n_max:]], axis=1) if e else full[s][:, :n]
        if standardized:
            block_params = {"n_coeffs": n, "extreme_points": e, "sigma": s}
            sp = build_spec(backbone=None, descriptors=("fourier_shape",), mode="standardized",
                            params={"fourier_shape": block_params})
            x = sp.fit({"fourier_shape": x}).fuse({"fourier_shape": x})
        figs = _numpy_scores(cfg, x, db_ids, db_labels, db_paths, x[q_pos], q_ids, q_labels, sizes, window)
        name = f"{n} FD{' + extreme pts' if e else ''}, σ={s:g}" + ("" if standardized else ", not standardised")
        out.append({"name": name, "n_coeffs": n, "extreme_points": e, "sigma": s, "standardized": standardized,
                    "dim": int(x.shape[1]), "paper": standardized and (n, e, s) == paper_key,
                    "profile": standardized and (n, e, s) == profile_key,
                    "n_queries": int(len(q_ids)), "n_database": int(len(db_ids)), "bullseye_window": window, **figs})
    return out


def _block_ablation(cfg: ShapeEvalConfig, spec, orig: Indexed) -> list[dict]:
    """Each block of the spec alone and all together, scaled as the spec says; numpy retrieval."""
    from dataclasses import replace

    from .fuse import FeatureSpec

    qs = orig.queries
    rows = _unique_rows(qs)
    db_ids = qs.ids[rows]
    db_labels, db_paths = [qs.labels[r] for r in rows], [qs.paths[r] for r in rows]
    sizes: dict[str, int] = {}
    for lb in db_labels:
        sizes[lb] = sizes.get(lb, 0) + 1
    window = bullseye_window(sizes)
    order = np.argsort(db_ids)
    q_pos = order[np.searchsorted(db_ids, qs.ids, sorter=order)]
    subsets = [(b.name,) for b in spec.blocks] + ([tuple(spec.names)] if len(spec.blocks) > 1 else [])
    out = []
    for names in subsets:
        sub = FeatureSpec(tuple(replace(b, mean=None, std=None) for b in spec.blocks if b.name in names),
                          mode=spec.mode)
        feats = {n: qs.feats[n][rows] for n in names}
        x = sub.fit(feats).fuse(feats) if sub.needs_fit else sub.fuse(feats)
        figs = _numpy_scores(cfg, x, db_ids, db_labels, db_paths, x[q_pos], qs.ids, qs.labels, sizes, window)
        out.append({"name": " + ".join(names), "blocks": list(names), "dim": int(x.shape[1]),
                    "profile": list(names) == spec.names, "n_queries": len(qs.ids), "n_database": len(db_ids),
                    "bullseye_window": window, **figs})
    return out


# --- report -----------------------------------------------------------------------------------------


def _f(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _spec_line(spec: dict) -> str:
    parts = []
    for b in spec["blocks"]:
        p = ", ".join(f"{k}={v}" for k, v in sorted(b["params"].items()))
        parts.append(f"`{b['name']}` ({b['dim']}-d{', ' + p if p else ''}; {b['norm']}, weight {b['weight']:g})")
    return "; ".join(parts)


def _protocol_text(protocol: str) -> str:
    return ("**exclude-self**: the query's own row is removed from its ranking" if protocol == "exclude-self"
            else "**include-self**: the query's own row stays in its ranking (P@1 is then trivially 100)")


def shape_table(results: dict) -> str:
    """The main markdown table: retrieval, KNN classification, affine comparison and ablation."""
    cfg, recs = results["config"], results["records"]
    prof = cfg["profile"]
    k0 = results["per_class"]["knn_k"]
    base = next(r for r in recs if r["variant"] == "original" and r["knn_k"] == k0)
    dup = f", {cfg['n_duplicates']} byte-identical duplicate files share a row" if cfg["n_duplicates"] else ""
    lines = [
        f"# {prof.capitalize()} retrieval and KNN classification (Pande et al.) — profile `{prof}`",
        "",
        f"Data set `{cfg['dataset']}`: {cfg['n_files']} files, {cfg['n_database']} rows in collection "
        f"`{cfg['collection']}` of `{cfg['db']}`{dup}, {cfg['n_rejected']} rejected, {len(cfg['classes'])} classes. "
        f"Spec: {_spec_line(cfg['spec'])}.",
        "",
        f"Protocol of P@k and mAP@{cfg['map_k']}: {_protocol_text(cfg['protocol'])}. Bull's-eye (MPEG-7): "
        f"same-class rows in the top {base['bullseye_window']} (2 × class size) of the ranking that includes the "
        "query, over the class size. KNN: majority vote of the k nearest *other* rows (ties: smaller summed "
        "distance). Retrieval through the Milvus store. Values in %.",
        "",
        "## Retrieval",
        "",
        "| variant | queries | database | n queries | P@1 | P@5 | P@10 | mAP | bull's-eye | ΔP@1 vs original |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        if r["knn_k"] != k0:
            continue
        delta = r["p_at_1"] - base["p_at_1"]
        lines.append(f"| {r['variant']} | {r['queries']} | {r['database']} ({r['n_database']}) | {r['n_queries']} | "
                     f"{_f(r['p_at_1'])} | {_f(r['p_at_5'])} | {_f(r['p_at_10'])} | {_f(r['map'])} | "
                     f"{_f(r['bullseye'])} | {'' if r is base else f'{delta:+.1f}'} |")
    if cfg.get("affine"):
        lines += ["", "`affine` → `affine`: every repository image (originals and variants) queries the whole "
                  "repository; its sibling copies stay in the database. variants → `original`: each transformed "
                  "copy queries the unmodified collection"
                  + (" with its source shape removed, the same task as the original leave-one-out row."
                     if cfg["protocol"] == "exclude-self" else " (its source shape stays in the database).")]
    lines += ["", "## KNN classification (one class against the rest, macro-averaged over classes)", "",
              "| variant | queries | database | k | accuracy (overall) | precision | recall (sensitivity) | "
              "specificity | accuracy (one-vs-rest) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        if r["knn_k"] != k0 and r["queries"] not in ("all", "all variants"):
            continue  # each single affine variant: the first k only (all k are in results.json)
        lines.append(f"| {r['variant']} | {r['queries']} | {r['database']} | {r['knn_k']} | {_f(r['knn_accuracy'])} | "
                     f"{_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['accuracy'])} |")
    ab = results.get("ablation") or []
    if ab:
        row0 = ab[0]
        lines += ["", "## Ablation — numpy retrieval over the descriptors (not through the store)", "",
                  f"Same protocol and scaling as the store ({row0['n_queries']} queries, {row0['n_database']} rows; "
                  f"z-scores fitted on the data set unless marked), computed in the same run. "
                  f"KNN accuracy with k = {row0['knn_k']}. **bold** = the profile's setting"
                  + ("; † = the paper's 10 Fourier descriptors." if prof == "shape" else "."), "",
                  "| descriptor | dim | P@1 | P@5 | P@10 | mAP | bull's-eye | KNN accuracy |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ab:
            name = f"**{r['name']}**" if r.get("profile") else r["name"]
            name += " †" if r.get("paper") else ""
            lines.append(f"| {name} | {r['dim']} | {_f(r['p_at_1'])} | {_f(r['p_at_5'])} | {_f(r['p_at_10'])} | "
                         f"{_f(r['map'])} | {_f(r['bullseye'])} | {_f(r['knn_accuracy'])} |")
    t = results.get("timings", {})
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:g}" for k, v in t.items()) + "."]
    return "\n".join(lines) + "\n"


def per_class_md(results: dict) -> str:
    pc = results["per_class"]
    prof = results["config"]["profile"]
    lines = [f"# Per-class figures — profile `{prof}`, unmodified data set", "",
             f"P@1 under the {results['config']['protocol']} protocol; KNN (k = {pc['knn_k']}) precision, recall "
             "(sensitivity), specificity and accuracy one class against the rest (Pande et al.). Values in %.", "",
             "| class | queries | P@1 | bull's-eye | precision | recall | specificity | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lb, r in pc["classes"].items():
        lines.append(f"| {lb} | {r['n_queries']} | {_f(r['p_at_1'])} | {_f(r['bullseye'])} | {_f(r['precision'])} | "
                     f"{_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['accuracy'])} |")
    return "\n".join(lines) + "\n"


def _summary(results: dict) -> str:
    cfg, recs = results["config"], results["records"]
    k0 = results["per_class"]["knn_k"]
    o = next(r for r in recs if r["variant"] == "original" and r["knn_k"] == k0)
    lines = [
        f"{cfg['profile']} on {cfg['dataset']}: {o['n_queries']} queries, {len(cfg['classes'])} classes "
        f"({cfg['protocol']}): P@1 {_f(o['p_at_1'])}  P@5 {_f(o['p_at_5'])}  P@10 {_f(o['p_at_10'])}  "
        f"mAP@{cfg['map_k']} {_f(o['map'])}  bull's-eye {_f(o['bullseye'])} (top {o['bullseye_window']})",
        f"KNN k={k0}: accuracy {_f(o['knn_accuracy'])}; macro precision {_f(o['precision'])}, recall "
        f"{_f(o['recall'])}, specificity {_f(o['specificity'])}, accuracy (one-vs-rest) {_f(o['accuracy'])}",
    ]
    rep = next((r for r in recs if r["database"] == "affine" and r["knn_k"] == k0), None)
    var = next((r for r in recs if r["queries"] == "all variants" and r["knn_k"] == k0), None)
    if rep and var:
        lines.append(f"affine repository ({rep['n_queries']} images): P@1 {_f(rep['p_at_1'])} "
                     f"({rep['p_at_1'] - o['p_at_1']:+.1f}); variants -> originals: P@1 {_f(var['p_at_1'])} "
                     f"({var['p_at_1'] - o['p_at_1']:+.1f} vs the unmodified set)")
    ab = results.get("ablation") or []
    if ab:
        best = max(ab, key=lambda r: (r["p_at_1"], r["bullseye"] or 0))
        lines.append(f"ablation (numpy): best P@1 {_f(best['p_at_1'])} with {best['name']} "
                     f"(bull's-eye {_f(best['bullseye'])})")
    lines.append(f"wrote {cfg['out']}/results.json, table_{cfg['profile']}.md, report.html "
                 f"({results['timings']['total']:.0f} s)")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class(results: dict, path: Path) -> None:
    """Horizontal bars per class, hardest first: KNN precision and recall, and the bull's-eye."""
    plt = _plt()
    pc = results["per_class"]["classes"]
    names = sorted(pc, key=lambda n: (pc[n]["recall"], pc[n]["precision"], n))
    keys = ("precision", "recall") + (("bullseye",) if any(r["bullseye"] is not None for r in pc.values()) else ())
    fig, ax = plt.subplots(figsize=(9, 0.08 * len(names) * len(keys) + 1.5))
    y = np.arange(len(names))
    h = 0.8 / len(keys)
    for i, key in enumerate(keys):
        label = {"recall": "recall (sensitivity)", "bullseye": "bull's-eye"}.get(key, key)
        ax.barh(y + i * h, [pc[n][key] or 0 for n in names], height=h, label=label)
    ax.set_yticks(y + 0.4 - h / 2)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(len(names) - 0.2, -0.6)
    ax.set_xlabel(f"% (KNN k = {results['per_class']['knn_k']}, one class vs the rest; sorted by recall)")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(keys), frameon=False)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_ablation(results: dict, path: Path) -> None:
    plt = _plt()
    ab = results["ablation"]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(ab) + 1.5))
    y = np.arange(len(ab))
    ax.barh(y - 0.2, [r["p_at_1"] for r in ab], height=0.4, label="P@1")
    ax.barh(y + 0.2, [r["bullseye"] or 0 for r in ab], height=0.4, label="bull's-eye")
    ax.set_yticks(y)
    ax.set_yticklabels([("▶ " if r.get("profile") else "") + r["name"] for r in ab], fontsize=7)
    ax.invert_yaxis()
    lo = min(min(r["p_at_1"], r["bullseye"] or 100) for r in ab)
    ax.set_xlim(max(0, lo - 10), 100)
    ax.set_xlabel("% (numpy retrieval over the descriptors; ▶ = the profile's setting)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_grid(entries: list[dict], title: str, path: Path) -> None:
    """Each row: a query, then its top results (green frame = same class, red = other)."""
    from .imageio import read_image
    from .report import draw_hits_row

    plt = _plt()
    k = max(len(e["paths"]) for e in entries)
    fig, axes = plt.subplots(len(entries), k + 1, figsize=(1.2 * (k + 1), 1.35 * len(entries) + 0.4), squeeze=False)
    for r, e in enumerate(entries):
        draw_hits_row(axes[r], read_image(e["query"]), f"query: {e['label']}", e["paths"], e["labels"], e["label"],
                      k=k, hit_caption=lambda rank, label, ok: f"{rank} {label}")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_affine_examples(items: list, path: Path) -> None:
    from .imageio import read_image
    from .report import _thumb

    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(1.6 * len(items), 1.9), squeeze=False)
    for ax, (name, p) in zip(axes[0], items):
        ax.imshow(_thumb(read_image(p), 128))
        ax.set_title(str(name), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_shape_report(results: dict, out: Path, figures: dict) -> None:
    """results.json, the markdown tables, the PNGs and report.html in ``out``."""
    from .report import _json_default, write_html

    out = Path(out)
    prof = results["config"]["profile"]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default), encoding="utf-8")
    table, pcls = shape_table(results), per_class_md(results)
    (out / f"table_{prof}.md").write_text(table, encoding="utf-8")
    (out / f"table_{prof}_per_class.md").write_text(pcls, encoding="utf-8")
    images = []
    plot_per_class(results, out / f"per_class_{prof}.png")
    images.append(("Per-class KNN precision and recall", out / f"per_class_{prof}.png"))
    if results.get("ablation"):
        plot_ablation(results, out / f"ablation_{prof}.png")
        images.append(("Ablation (numpy retrieval)", out / f"ablation_{prof}.png"))
    if figures.get("grid"):
        plot_grid(figures["grid"], f"{prof}: queries and their top {GRID_TOP} ({results['config']['protocol']})",
                  out / f"retrieval_grid_{prof}.png")
        images.append(("Retrieval examples", out / f"retrieval_grid_{prof}.png"))
    if figures.get("affine"):
        plot_affine_examples(figures["affine"], out / "affine_examples.png")
        images.append(("Affine repository: one shape and its variants", out / "affine_examples.png"))
    summary = "## Summary\n\n" + "\n\n".join(f"`{line}`" for line in results["summary"].splitlines())
    write_html(out, [("summary", summary), ("table", table), ("per_class", pcls)], images,
               f"cbir_dist {prof} evaluation — {results['config']['dataset']}")
