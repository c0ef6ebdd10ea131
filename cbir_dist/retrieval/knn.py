"""K-nearest-neighbour classification from retrieval results and one-vs-rest classification reports.

Pure numpy. The neighbours come from any search (the vector store, or a brute-force distance
matrix): this module only votes on them and scores the votes. Features are standardised by the one
standardiser of the package, :class:`cbir_dist.features.spec.Standardizer`.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

# --------------------------------------------------------------------------------------------------
# voting


def knn_predict(neighbour_labels, neighbour_distances, k: int) -> np.ndarray:
    """Majority vote of the ``k`` nearest neighbours of each query.

    Parameters
    ----------
    neighbour_labels : array_like, shape (Q, K)
        Class label of each retrieved neighbour (ints or strings); the query itself must already be
        excluded when doing leave-one-out.
    neighbour_distances : array_like of float, shape (Q, K)
        Their distances to the query (smaller = nearer). Rows need not be sorted: each row is sorted
        by distance first (stably, so equal distances keep their given order).
    k : int, 1 <= k <= K

    Returns
    -------
    ndarray, shape (Q,)
        Predicted label per query, same dtype as ``neighbour_labels``.

    Notes
    -----
    Among the ``k`` nearest, the label with the most votes wins. A tie between labels is broken by
    the smaller summed distance of each label's voters, then by the label of the nearest single
    neighbour among the tied labels (which, after the stable sort, is also the first given).
    """
    labels = np.asarray(neighbour_labels)
    dist = np.asarray(neighbour_distances, dtype=np.float64)
    if labels.ndim != 2 or dist.shape != labels.shape:
        raise ValueError(
            f"neighbour_labels and neighbour_distances must be (Q, K) arrays of the same shape, got "
            f"{labels.shape} and {dist.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= labels.shape[1]:
        raise UsageError(f"k must be an integer in [1, {labels.shape[1]}] (the neighbours given), got {k!r}")
    if not np.isfinite(dist).all():
        raise ValueError("neighbour_distances contains NaN or infinity")
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    lab = np.take_along_axis(labels, order, axis=1)
    dk = np.take_along_axis(dist, order, axis=1)
    out = np.empty(labels.shape[0], dtype=labels.dtype)
    for q in range(labels.shape[0]):
        best_key, best = None, None
        seen = {}
        for rank, (lb, d) in enumerate(zip(lab[q].tolist(), dk[q].tolist())):
            votes, total, first = seen.get(lb, (0, 0.0, rank))
            seen[lb] = (votes + 1, total + d, first)
        for lb, (votes, total, first) in seen.items():
            key = (-votes, total, first)
            if best_key is None or key < best_key:
                best_key, best = key, lb
        out[q] = best
    return out


# --------------------------------------------------------------------------------------------------
# scoring


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def classification_report(y_true, y_pred, labels=None) -> dict:
    """One-vs-rest precision, recall, specificity and accuracy per class, their macro means, overall accuracy.

    For class ``c`` with ``TP`` (true c, predicted c), ``FP`` (predicted c, true other), ``FN`` (true c,
    predicted other) and ``TN`` (neither):

    * precision = TP / (TP + FP)             (0 when c is never predicted)
    * recall (sensitivity) = TP / (TP + FN)  (0 when c never occurs)
    * specificity = TN / (TN + FP)
    * accuracy = (TP + TN) / n               (one-vs-rest)

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
    labels : sequence, optional
        Classes to report, in this order; default: the sorted union of ``y_true`` and ``y_pred``.

    Returns
    -------
    dict
        ``{"labels": [...], "confusion": ndarray (C, C) rows = true, cols = predicted,
        "per_class": {label: {"precision", "recall", "specificity", "accuracy", "support"}},
        "macro": {"precision", "recall", "specificity", "accuracy"}, "accuracy": float, "n": int}``.
        ``"accuracy"`` is the overall fraction of correct predictions (not the macro one-vs-rest mean).
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yp.shape != yt.shape:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got {yt.shape} and {yp.shape}")
    if yt.size == 0:
        raise ValueError("y_true is empty: nothing to score")
    if labels is None:
        labels = sorted(set(yt.tolist()) | set(yp.tolist()))
    labels = list(labels)
    index = {lb: i for i, lb in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels contains duplicates")
    missing = (set(yt.tolist()) | set(yp.tolist())) - set(index)
    if missing:
        raise ValueError(f"labels lacks classes present in y_true/y_pred: {sorted(map(str, missing))}")
    n = yt.size
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, ([index[v] for v in yt.tolist()], [index[v] for v in yp.tolist()]), 1)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    per_class = {}
    for i, lb in enumerate(labels):
        per_class[lb] = {
            "precision": _safe_div(tp[i], tp[i] + fp[i]),
            "recall": _safe_div(tp[i], tp[i] + fn[i]),
            "specificity": _safe_div(tn[i], tn[i] + fp[i]),
            "accuracy": _safe_div(tp[i] + tn[i], n),
            "support": int(tp[i] + fn[i]),
        }
    keys = ("precision", "recall", "specificity", "accuracy")
    macro = {key: float(np.mean([per_class[lb][key] for lb in labels])) for key in keys}
    return {
        "labels": labels,
        "confusion": cm,
        "per_class": per_class,
        "macro": macro,
        "accuracy": _safe_div(tp.sum(), n),
        "n": int(n),
    }
