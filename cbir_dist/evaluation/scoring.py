"""Scoring a ranking under the papers' protocols: P@k, mAP, the bull's-eye, KNN votes; brute-force ranking.

Pure numpy on ranked neighbours (from the store or from :func:`rank_numpy`), shared by the shape
and texture evaluation and its ablation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import UsageError

PROTOCOLS = ("exclude-self", "include-self")


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
    from ..retrieval.knn import knn_predict
    from ..retrieval.search import exclude_self as drop_self
    from .metrics import average_precision, bullseye_score, precision_at_k

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
            raise UsageError(f"knn k={k} needs {k} neighbours besides the query; only {ex_lab.shape[1]} retrieved: "
                             f"give --knn-k {ex_lab.shape[1]} or less")
        preds[int(k)] = knn_predict(ex_lab, ex_dist, int(k))
    return Scored(p[1], p[5], p[10], ap, be, preds, qlab, r_paths, r_lab)


def summarise(scored: Scored, class_labels: Sequence[str]) -> tuple[dict, dict]:
    """Mean retrieval figures (%) and, per KNN k, the classification report's macro and overall figures (%)."""
    from ..retrieval.knn import classification_report

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
