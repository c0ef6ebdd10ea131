"""Descriptor ablations of the shape and texture evaluation, scored by numpy retrieval (not through the store).

Same protocol and scaling as the store: z-scores fitted on the data set (the package's one
standardiser, through the feature spec), computed in the same run. Shape: Fourier coefficients
10/20/30, extreme points off/on, contour smoothing σ 0/1/2/4, and the paper's and the profile's
settings without standardisation. Texture: each block alone and both together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .scoring import bullseye_window, rank_numpy, score_ranking, summarise

if TYPE_CHECKING:
    from .shapes import Indexed, QuerySet, ShapeEvalConfig

log = logging.getLogger(__name__)

ABLATION_N_COEFFS = (10, 20, 30)
ABLATION_SIGMAS = (0.0, 1.0, 2.0, 4.0)


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


def shape_ablation(cfg: ShapeEvalConfig, spec, orig: Indexed) -> list[dict]:
    """Fourier coefficients x extreme points x smoothing σ, plus unstandardised rows; numpy retrieval."""
    from ..features.descriptors.fourier_shape import contour_descriptor, shape_contour
    from ..features.profiles import build_spec
    from ..io.images import read_image

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


def block_ablation(cfg: ShapeEvalConfig, spec, orig: Indexed) -> list[dict]:
    """Each block of the spec alone and all together, scaled as the spec says; numpy retrieval."""
    from dataclasses import replace

    from ..features.spec import FeatureSpec

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
