"""The Pande et al. evaluation: shape and texture retrieval through the store, KNN classification, affine invariance.

``cbir-dist evaluate DATASET --profile shape|texture --out DIR`` runs :func:`run_shape_evaluate`.

Protocol
--------
1. The data set is indexed with the profile's FeatureSpec (:func:`cbir_dist.profiles.profile_spec`)
   into the collection ``shape`` (or ``texture``) of the milvus-lite store ``OUT/eval.db``, or of
   the Milvus server ``db`` (names prefixed by ``collection_prefix``); the collection is dropped and
   rebuilt on every run, and the standardisation is fitted on it and stored with it.
2. Every file queries the collection: its vector is made with the collection's stored spec and
   searched with :func:`cbir_dist.retrieval.search.search_vectors`. Byte-identical files share one row
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
     summed distance, then by the nearest neighbour (:func:`cbir_dist.retrieval.knn.knn_predict`);
     scored one class against the rest as Pande et al. do — precision, recall (sensitivity),
     specificity and accuracy ``(TP + TN) / n`` per class, macro-averaged — plus the overall
     fraction correct.

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
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from ..io.records import block_column
from ..io.text import os_path
from ..io.tables import read_json, read_parquet, write_json
from .ablation import block_ablation, shape_ablation
from .affine import VARIANTS as AFFINE_VARIANTS
from .common import check_collection_prefix, public_config, versions
from .report.shapes import GRID_TOP, summary_text, write_shape_report
from .scoring import (
    PROTOCOLS,
    Scored,
    bullseye_window,
    per_class_table,
    score_ranking,
    summarise,
)

log = logging.getLogger(__name__)

EVAL_PROFILES = ("shape", "texture")
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
    db: str | None = None  # milvus-lite path or Milvus server URI; None = OUT/eval.db
    token: str | None = field(default=None, repr=False, compare=False)  # never written to results.json
    collection_prefix: str = ""  # prepended to every collection name, so several runs can share one server

    def __post_init__(self):
        check_collection_prefix(self.collection_prefix)
        if self.profile not in EVAL_PROFILES:
            raise UsageError(f"profile must be one of {EVAL_PROFILES}, got {self.profile!r}")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.knn_k or any(isinstance(k, bool) or int(k) != k or k < 1 for k in self.knn_k):
            raise UsageError(f"knn_k must be positive integers, e.g. (1, 3, 5); got {self.knn_k!r}")
        bad = [v for v in self.variants if v not in AFFINE_VARIANTS]
        if bad or not self.variants:
            raise UsageError(f"variants must be a non-empty subset of {AFFINE_VARIANTS}, got {self.variants!r}")
        if self.backend not in ("local", "ray"):
            raise UsageError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.map_k < 10:
            raise UsageError(f"map_k must be >= 10 (P@10 is reported), got {self.map_k}")
        if self.profile != "shape" and any(v is not None for v in (self.n_coeffs, self.sigma, self.extreme_points)):
            raise UsageError("n_coeffs, sigma and extreme_points apply to the shape profile only")
        if self.n_coeffs is not None and self.n_coeffs < 1:
            raise UsageError(f"--n-coeffs must be >= 1, got {self.n_coeffs!r}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise UsageError(f"--sigma must be a number of pixels >= 0 (0: no smoothing), got {self.sigma}")

    @property
    def exclude_self(self) -> bool:
        return self.protocol == "exclude-self"

    def resolved_db(self) -> str:
        return self.db or str(Path(self.out) / "eval.db")

    def collection(self, name: str) -> str:
        return f"{self.collection_prefix}{name}"


def profile_spec_for(cfg: ShapeEvalConfig):
    """The FeatureSpec indexed: the profile's, with the shape overrides of ``cfg`` merged into its params."""
    from ..features.profiles import PROFILES, profile_spec

    if cfg.profile != "shape":
        return profile_spec(cfg.profile)
    params = dict(PROFILES["shape"]["params"]["fourier_shape"])
    for key in ("n_coeffs", "sigma", "extreme_points"):
        if getattr(cfg, key) is not None:
            params[key] = getattr(cfg, key)
    return profile_spec("shape", params={"fourier_shape": params})


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


def _index(cfg: ShapeEvalConfig, spec, images_dir: str, db: str, collection: str, run_dir: Path) -> Indexed:
    """Index ``images_dir`` (fit, fuse, upsert) and collect every file's raw features from the run's shards."""
    from ..index import IndexConfig, run_index
    from ..io.records import DUPLICATE, OK

    t = time.perf_counter()
    icfg = IndexConfig(images_dir, db=db, collection=collection, token=cfg.token, run_dir=str(run_dir),
                       save_features=True, overwrite=True, backend=cfg.backend, progress=cfg.progress)
    summary = run_index(spec, icfg)
    log.info("%s: %s", collection, summary.line())
    manifest = read_parquet(run_dir / "manifest.parquet")
    rows = [dict(zip(manifest, vals)) for vals in zip(*manifest.values())]
    stored = [r for r in rows if r["status"] == OK]
    queries = [r for r in rows if r["status"] in (OK, DUPLICATE)]
    if len(stored) < 2:
        raise UsageError(f"{images_dir}: fewer than 2 valid images were indexed ({summary.line()})")
    by_id: dict[int, dict] = {}
    for part in sorted((run_dir / "shards").glob("*.features.parquet")):
        t_part = read_parquet(part)
        for j, i in enumerate(t_part["id"]):
            by_id.setdefault(int(i), {b.name: t_part[block_column(b.name)][j] for b in spec.blocks})
    missing = [r for r in queries if int(r["id"]) not in by_id]
    if missing:  # an indexer that keeps no per-block features: describe those files here
        from ..features.extract import handcrafted_features
        from ..io.images import read_image

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


def _searcher(db: str, collection: str, token: str | None = None):
    from ..query.search import QueryConfig, Searcher

    return Searcher(QueryConfig(db=db, collection=collection, token=token))


def _check_query_path(searcher, qs: QuerySet, vectors: np.ndarray, n: int = QUERY_CHECK) -> float:
    """Recompute the first ``n`` query vectors through the query path (decode, describe, fuse) and compare."""
    from ..errors import SpecMismatchError
    from ..io.images import read_image

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
    from ..retrieval.search import search_vectors

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

    from ..io.files import list_images

    files = list_images(cfg.dataset)
    stats = [os.stat(os_path(f.path)) for f in files]
    listing = "\n".join(f"{f.path}\t{st.st_size}\t{st.st_mtime_ns}" for f, st in zip(files, stats))
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
        if read_json(marker) == key:
            log.info("reusing the affine repository in %s", dst)
            return dst, 0.0
    except (OSError, ValueError):
        pass
    if dst.exists():  # file names carry the drawn parameters: files of another seed must not linger
        import shutil

        shutil.rmtree(dst)
    write_affine_repository(cfg.dataset, dst, seed=cfg.seed)
    write_json(marker, key)
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
    from ..io.cpu import MachineCpu, cores_available
    from ..io.files import list_images

    t_start, cpu = time.perf_counter(), MachineCpu().start()  # this machine's busy cores, every process on it
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.dataset)
    if not files:
        raise InputError(f"no images found under {cfg.dataset} (expected <class>/<image> files)")
    if max(cfg.knn_k) >= len(files):
        raise UsageError(f"--knn-k {max(cfg.knn_k)} needs as many neighbours besides each query, but {cfg.dataset} "
                         f"holds {len(files)} images; give --knn-k {len(files) - 1} or less")
    db = cfg.resolved_db()
    spec = profile_spec_for(cfg)
    timings: dict[str, float] = {}
    records: list[dict] = []
    per_class: dict = {}
    figures: dict = {}

    # 1. the data set, indexed and queried
    orig = _index(cfg, spec, cfg.dataset, db, cfg.collection(cfg.profile), out / "runs" / cfg.profile)
    timings["index"] = orig.seconds
    t = time.perf_counter()
    searcher = _searcher(db, orig.collection, cfg.token)
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
        ablation = (shape_ablation(cfg, spec, orig) if cfg.profile == "shape" else block_ablation(cfg, spec, orig))
        timings["ablation"] = round(time.perf_counter() - t, 2)

    timings["total"] = round(time.perf_counter() - t_start, 2)
    cpu.stop()
    results = {
        "config": {**public_config(asdict(cfg)), "spec": json.loads(stored_spec.to_json()), "n_files": orig.n_files,
                   "n_database": len(orig.db_ids), "n_duplicates": orig.n_duplicates, "n_rejected": orig.n_rejected,
                   "classes": orig.class_sizes, "db": db, "collection": orig.collection,
                   "affine": affine_info},
        "versions": versions(),
        "records": records,
        "per_class": {"knn_k": int(cfg.knn_k[0]), "classes": per_class},
        "ablation": ablation,
        "timings": timings,
        "cores_busy": None if cpu.cores_busy is None else round(cpu.cores_busy, 2),
        "cores_available": cores_available(),
        "query_path_check": {"queries": min(QUERY_CHECK, len(orig.queries.paths)), "max_abs_diff": check},
    }
    results["summary"] = summary_text(results)
    write_shape_report(results, out, figures)
    log.info("shape evaluation done in %.1f s", timings["total"])
    return results


def _evaluate_affine(cfg, spec, db, out, orig: Indexed, searcher, timings, records, figures) -> dict:
    """Index the affine repository and score it against itself and its variants against the originals."""
    dst, t_write = _affine_repository(cfg, out)
    timings["affine_write"] = t_write
    aff = _index(cfg, spec, str(dst), db, cfg.collection(f"{cfg.profile}_affine"),
                 out / "runs" / f"{cfg.profile}_affine")
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
    asearch = _searcher(db, aff.collection, cfg.token)
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
