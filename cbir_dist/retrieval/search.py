"""Searching query vectors in a store, with the one exclude-self rule of the package.

Pure numpy on the results of any store with ``search(vectors, k)`` (the
:class:`~cbir_dist.store.VectorStore`): the query and evaluation jobs both search through here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
