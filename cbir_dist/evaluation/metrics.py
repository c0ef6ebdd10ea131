"""Retrieval metrics (P@k, AP/mAP, confusion-based rates, bull's-eye) and image quality (PSNR, SSIM, FSIM).

Retrieval functions take the labels of the ranked neighbours, ``retrieved_labels`` of shape
``(Q, K)`` (row ``q`` = the labels of query ``q``'s results, best first), and the queries' own
labels ``query_labels`` of shape ``(Q,)``; a result is relevant when its label equals the query's.
Under the exclude-self protocol, remove each query's own database entry first with
:func:`cbir_dist.retrieval.search.exclude_self` and count ``n_relevant`` (and ``n_database``) without it.

Image-quality functions compare a reference ``uint8`` image with a test one of the same shape,
``(H, W)`` grey or ``(H, W, 3)`` RGB, on the 0–255 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "RetrievalConfusion",
    "average_precision",
    "bullseye_score",
    "FsimReference",
    "fsim",
    "mean_average_precision",
    "precision_at_k",
    "psnr",
    "relevance",
    "retrieval_confusion",
    "ssim",
]

# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------


def relevance(retrieved_labels, query_labels) -> np.ndarray:
    """Boolean ``(Q, K)`` matrix: result ``j`` of query ``q`` has the query's label."""
    retrieved = np.asarray(retrieved_labels)
    queries = np.asarray(query_labels)
    if retrieved.ndim != 2:
        raise ValueError(f"retrieved_labels must be (Q, K), got shape {retrieved.shape}.")
    if queries.shape != retrieved.shape[:1]:
        raise ValueError(
            f"query_labels must be (Q,) with Q = {retrieved.shape[0]} (rows of retrieved_labels), "
            f"got shape {queries.shape}."
        )
    return retrieved == queries[:, None]


def _check_k(k: int, available: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}.")
    if k > available:
        raise ValueError(f"{name}={k} but only {available} results were retrieved per query; retrieve more.")
    return int(k)


def _per_query(values, q: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(values), (q,)) if np.ndim(values) == 0 else np.asarray(values)
    if arr.shape != (q,):
        raise ValueError(f"{name} must be a scalar or have shape ({q},), got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) or (arr < 0).any():
        raise ValueError(f"{name} must hold non-negative counts.")
    return arr.astype(np.float64)


def precision_at_k(retrieved_labels, query_labels, k: int) -> np.ndarray:
    """Per-query precision of the top ``k`` results: ``P@k = (1/k) Σ_{i≤k} rel_i``.

    Returns
    -------
    ndarray of float64, shape (Q,)
    """
    hits = relevance(retrieved_labels, query_labels)
    k = _check_k(k, hits.shape[1])
    return hits[:, :k].mean(axis=1)


def average_precision(retrieved_labels, query_labels, n_relevant) -> np.ndarray:
    """Per-query average precision over the retrieved list (AP@K).

    ``AP = (1 / min(R, K)) · Σ_{i=1..K} rel_i · P@i`` with ``R = n_relevant`` the number of
    database items relevant to the query and ``K`` the list length. Normalising by ``min(R, K)``
    (not by ``R``) makes a list whose ``K`` results are all relevant score 1 even when
    ``R > K``, and equals the usual AP when the whole ranking is retrieved (``K ≥ R``). Queries
    with ``R = 0`` have no defined AP and get NaN.

    Parameters
    ----------
    retrieved_labels : array_like, shape (Q, K)
    query_labels : array_like, shape (Q,)
    n_relevant : int or array_like, shape (Q,)
        Relevant items in the database per query (the class size, minus one under exclude-self).

    Returns
    -------
    ndarray of float64, shape (Q,), values in [0, 1] (NaN where ``n_relevant`` is 0)
    """
    hits = relevance(retrieved_labels, query_labels)
    q, k = hits.shape
    if k == 0:
        raise ValueError("retrieved_labels has no columns; retrieve at least one result per query.")
    n_rel = _per_query(n_relevant, q, "n_relevant")
    found = hits.sum(axis=1)
    if (found > n_rel).any():
        bad = int(np.argmax(found > n_rel))
        raise ValueError(
            f"Query {bad} retrieved {found[bad]} relevant items but n_relevant is {n_rel[bad]:g}; "
            "n_relevant must count every relevant database item (did you forget drop_self?)."
        )
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    numerator = (precision_at_i * hits).sum(axis=1)
    denominator = np.minimum(n_rel, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def mean_average_precision(retrieved_labels, query_labels, n_relevant) -> float:
    """Mean of :func:`average_precision` over the queries with at least one relevant item.

    Returns NaN when no query has a relevant item.
    """
    ap = average_precision(retrieved_labels, query_labels, n_relevant)
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


@dataclass(frozen=True)
class RetrievalConfusion:
    """Per-query confusion counts and rates of a top-k retrieval, each an array of shape (Q,)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    recall: np.ndarray
    specificity: np.ndarray
    accuracy: np.ndarray
    precision: np.ndarray

    def mean(self) -> dict[str, float]:
        """Each rate averaged over the queries (NaN entries ignored)."""
        out = {}
        for name in ("recall", "specificity", "accuracy", "precision"):
            values = getattr(self, name)
            valid = ~np.isnan(values)
            out[name] = float(values[valid].mean()) if valid.any() else float("nan")
        return out


def retrieval_confusion(retrieved_labels, query_labels, n_relevant, n_database, k: int) -> RetrievalConfusion:
    """Confusion counts of a top-``k`` retrieval, the top ``k`` taken as the predicted-relevant set.

    With ``R`` relevant items among ``N`` database items and ``TP`` relevant results in the top
    ``k``: ``FP = k − TP``, ``FN = R − TP``, ``TN = (N − R) − FP``, and (Pande et al.)

    - recall (sensitivity) ``= TP / (TP + FN)``
    - specificity ``= TN / (TN + FP)``
    - accuracy ``= (TP + TN) / (TP + TN + FP + FN)`` ``= (TP + TN) / N``
    - precision ``= TP / (TP + FP)`` ``= P@k``

    A rate whose denominator is 0 (no relevant or no irrelevant item) is NaN.

    Parameters
    ----------
    retrieved_labels : array_like, shape (Q, K)
    query_labels : array_like, shape (Q,)
    n_relevant : int or array_like, shape (Q,)
        ``R`` per query (the class size, minus one under exclude-self).
    n_database : int or array_like, shape (Q,)
        ``N``, the number of candidates a query is ranked against (minus one under exclude-self).
    k : int
        Size of the predicted-relevant set, ``1 ≤ k ≤ K``.
    """
    hits = relevance(retrieved_labels, query_labels)
    q = hits.shape[0]
    k = _check_k(k, hits.shape[1])
    n_rel = _per_query(n_relevant, q, "n_relevant")
    n_db = _per_query(n_database, q, "n_database")
    if (n_db < k).any() or (n_rel > n_db).any():
        raise ValueError("n_database must be at least k and at least n_relevant for every query.")
    tp = hits[:, :k].sum(axis=1).astype(np.float64)
    if (tp > n_rel).any():
        raise ValueError(
            "A query retrieved more relevant items than n_relevant; check n_relevant and drop_self."
        )
    fp = k - tp
    fn = n_rel - tp
    tn = (n_db - n_rel) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return RetrievalConfusion(
            tp=tp, fp=fp, fn=fn, tn=tn,
            recall=np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            specificity=np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            accuracy=(tp + tn) / n_db,
            precision=tp / k,
        )


def bullseye_score(retrieved_labels, query_labels, class_size, window: int = 40) -> np.ndarray:
    """Per-query bull's-eye score: relevant results in the top ``window`` over the class size.

    The MPEG-7 CE-Shape-1 protocol (Latecki, Lakämper and Eckhardt, "Shape Descriptors for
    Non-rigid Shapes with a Single Closed Contour", CVPR 2000) counts, for each query, the shapes
    of its class among its ``2 × class_size`` nearest neighbours (40 for 20-shape classes) and
    divides by the class size; the query itself is in the database and counts as its own hit, so
    do **not** apply :func:`drop_self` here. The data set's score is the mean over queries.

    Parameters
    ----------
    retrieved_labels : array_like, shape (Q, K), K ≥ window
    query_labels : array_like, shape (Q,)
    class_size : int or array_like, shape (Q,)
        Items of the query's class in the database, the query included.
    window : int, optional
        Number of top results inspected (default 40 = 2 × 20).

    Returns
    -------
    ndarray of float64, shape (Q,), values in [0, 1]
    """
    hits = relevance(retrieved_labels, query_labels)
    window = _check_k(window, hits.shape[1], "window")
    size = _per_query(class_size, hits.shape[0], "class_size")
    if (size == 0).any():
        raise ValueError("class_size must be at least 1 (the query's class includes the query).")
    return hits[:, :window].sum(axis=1) / size


# ----------------------------------------------------------------------------------------------
# Image quality
# ----------------------------------------------------------------------------------------------

MIN_QUALITY_SIDE = 7  # SSIM's 7 x 7 window


def _check_pair(ref, test) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref)
    test = np.asarray(test)
    for name, arr in (("ref", ref), ("test", test)):
        if arr.dtype != np.uint8:
            raise TypeError(
                f"{name} must be a uint8 image (0-255), got dtype {arr.dtype}; convert with "
                "`skimage.util.img_as_ubyte(image)`."
            )
    if ref.shape != test.shape:
        raise ValueError(f"ref and test must have the same shape, got {ref.shape} and {test.shape}.")
    if ref.ndim not in (2, 3) or (ref.ndim == 3 and ref.shape[2] not in (1, 3)):
        raise ValueError(f"Images must be (H, W), (H, W, 1) or (H, W, 3), got {ref.shape}.")
    if min(ref.shape[:2]) < MIN_QUALITY_SIDE:
        raise ValueError(
            f"Images must be at least {MIN_QUALITY_SIDE} x {MIN_QUALITY_SIDE} pixels, got {ref.shape[:2]}."
        )
    if ref.ndim == 3 and ref.shape[2] == 1:
        ref, test = ref[..., 0], test[..., 0]
    return ref, test


def psnr(ref, test) -> float:
    """Peak signal-to-noise ratio in dB: ``10 · log10(255² / MSE)``, MSE over all pixels and channels.

    Equals ``skimage.metrics.peak_signal_noise_ratio(ref, test, data_range=255)``; identical
    images give ``inf``.
    """
    ref, test = _check_pair(ref, test)
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(ref, test) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 13(4), 2004), 7 × 7 uniform window.

    ``skimage.metrics.structural_similarity`` with ``data_range=255``; RGB images are compared
    per channel (``channel_axis=-1``) and averaged. 1 for identical images.
    """
    from skimage.metrics import structural_similarity

    ref, test = _check_pair(ref, test)
    channel_axis = -1 if ref.ndim == 3 else None
    return float(structural_similarity(ref, test, data_range=255, channel_axis=channel_axis))


def fsim(ref, test) -> float:
    """Feature similarity index FSIM (Zhang, Zhang, Mou and Zhang, IEEE TIP 20(8), 2011).

    ``piq.fsim(..., chromatic=False)`` on float tensors in ``[0, 1]``: the luminance-only FSIM
    the paper reports (RGB images are reduced to the Y channel of YIQ), not the colour FSIMc. 1
    for identical images. piq first average-pools by ``round(min(H, W) / 256)``, then uses
    log-Gabor filters of wavelengths 6, 12, 24 and 48 px: it runs on any image of at least 2 × 2
    (1 × 1 gives NaN, and this function refuses sides under 7), but below about 48 px the coarse
    scales are wider than the image and the score is less meaningful.
    """
    import piq
    import torch

    ref, test = _check_pair(ref, test)

    def tensor(a: np.ndarray):
        t = torch.from_numpy(np.array(a, dtype=np.float32)) / 255.0
        return t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[None]

    with torch.inference_mode():
        score = piq.fsim(tensor(ref), tensor(test), data_range=1.0, chromatic=False, reduction="none")
    return float(score[0])


class FsimReference:
    """The reference half of :func:`fsim`, computed once: ``FsimReference(ref).score(test) == fsim(ref, test)``.

    FSIM needs the phase-congruency and gradient maps of both images; the reference's are the same
    for every reconstruction of one query (the evaluation scores each query under every frequency,
    inpainter and repeat), so they are computed here once and reused. The result equals
    ``piq.fsim(..., chromatic=False)`` bit for bit (the same operations of piq 0.8 in the same order,
    ``tests/test_metrics.py``); about half the cost of :func:`fsim` per further test image.
    Picklable (the maps are tensors), so one task can compute them for others.
    """

    _SCALES, _ORIENTATIONS, _MIN_LENGTH, _MULT, _SIGMA_F, _DELTA_THETA, _K = 4, 4, 6, 2, 0.55, 1.2, 2.0

    def __init__(self, ref):
        import torch

        ref = np.asarray(ref)
        _check_pair(ref, ref)
        self.shape = ref.shape
        with torch.inference_mode():
            self.pc, self.grad = self._maps(self._luminance(ref))

    @staticmethod
    def _luminance(a: np.ndarray):
        """piq.fsim's input path: [0, 1] tensor, back to [0, 255], average pooling, the Y of YIQ."""
        import torch
        from piq.functional import rgb2yiq

        t = torch.from_numpy(np.array(a, dtype=np.float32)) / 255.0
        x = t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[None]
        x = x / float(1.0) * 255
        kernel_size = max(1, round(min(x.shape[-2:]) / 256))
        x = torch.nn.functional.avg_pool2d(x, kernel_size)
        return rgb2yiq(x)[:, :1] if x.size(1) == 3 else x

    @classmethod
    def _maps(cls, lum):
        import torch
        from piq.functional import gradient_map, scharr_filter

        pc = _phase_congruency(lum, _filter_terms(tuple(lum.shape[-2:]), lum.dtype, cls), cls._SCALES,
                               cls._ORIENTATIONS, cls._K)
        sch = scharr_filter(device=lum.device, dtype=lum.dtype)
        grad = gradient_map(lum, torch.stack([sch, sch.transpose(-1, -2)]))
        return pc, grad

    def score(self, test) -> float:
        """FSIM of ``test`` (uint8, the reference's shape) against the reference."""
        import torch
        from piq.functional import similarity_map

        test = np.asarray(test)
        if test.dtype != np.uint8 or test.shape != self.shape:
            raise ValueError(f"test must be a uint8 image of shape {self.shape}, got {test.dtype} {test.shape}")
        with torch.inference_mode():
            pc_y, grad_y = self._maps(self._luminance(test))
            pc_x, grad_x = self.pc, self.grad
            t1, t2 = 0.85, 160
            pc_sim = similarity_map(pc_x, pc_y, t1)
            gm_sim = similarity_map(grad_x, grad_y, t2)
            pc_max = torch.where(pc_x > pc_y, pc_x, pc_y)
            score = gm_sim * pc_sim * pc_max
            result = score.sum(dim=[1, 2, 3]) / pc_max.sum(dim=[1, 2, 3])
        return float(result[0])


_FILTER_TERMS: dict = {}


def _filter_terms(size: tuple, dtype, p) -> dict:
    """The image-independent part of piq's phase congruency for one image size, computed once per process.

    piq recomputes these for every image (16 inverse FFTs of the log-Gabor filters and their sums);
    the values are the same, so caching them changes no bit of the result.
    """
    import math

    import torch
    from piq.fsim import _construct_filters

    key = (size, dtype)
    if key not in _FILTER_TERMS:
        if len(_FILTER_TERMS) > 64:
            _FILTER_TERMS.clear()
        h, w = size
        o, sc = p._ORIENTATIONS, p._SCALES
        filters = _construct_filters(torch.zeros(1, 1, h, w, dtype=dtype), sc, o, p._MIN_LENGTH, p._MULT, p._SIGMA_F,
                                     p._DELTA_THETA)
        filters_ifft = torch.fft.ifft2(filters)
        filters_ifft = filters_ifft.real * math.sqrt(h * w)
        em_n = (filters.view(1, o, sc, h, w)[:, :, :1, ...] ** 2).sum(dim=[-2, -1], keepdims=True)
        filters_ifft = filters_ifft.view(1, o, sc, h, w)
        sum_an2 = torch.sum(filters_ifft ** 2, dim=-3, keepdim=True)
        sum_ai_aj = torch.zeros(1, o, 1, h, w, dtype=dtype)
        for s in range(sc - 1):
            sum_ai_aj = sum_ai_aj + (filters_ifft[:, :, s: s + 1] * filters_ifft[:, :, s + 1:]).sum(dim=-3, keepdim=True)
        _FILTER_TERMS[key] = {"filters": filters, "em_n": em_n,
                              "sum_an2": torch.sum(sum_an2, dim=[-1, -2], keepdim=True),
                              "sum_ai_aj": torch.sum(sum_ai_aj, dim=[-1, -2], keepdim=True)}
    return _FILTER_TERMS[key]


def _phase_congruency(x, terms: dict, scales: int, orientations: int, k: float):
    """``piq.fsim._phase_congruency`` (piq 0.8, torch >= 1.8 branch) for one image, with its
    image-independent terms from :func:`_filter_terms`; the same operations in the same order."""
    import math

    import torch

    eps = torch.finfo(x.dtype).eps
    n, _, h, w = x.shape
    filters = terms["filters"]
    imagefft = torch.fft.fft2(x)
    even_odd = torch.view_as_real(torch.fft.ifft2(imagefft * filters)).view(n, orientations, scales, h, w, 2)
    an = torch.sqrt(torch.sum(even_odd ** 2, dim=-1))
    sum_e = even_odd[..., 0].sum(dim=2, keepdims=True)
    sum_o = even_odd[..., 1].sum(dim=2, keepdims=True)
    x_energy = torch.sqrt(sum_e ** 2 + sum_o ** 2) + eps
    mean_e = sum_e / x_energy
    mean_o = sum_o / x_energy
    even = even_odd[..., 0]
    odd = even_odd[..., 1]
    energy = (even * mean_e + odd * mean_o - torch.abs(even * mean_o - odd * mean_e)).sum(dim=2, keepdim=True)
    abs_eo = torch.sqrt(torch.sum(even_odd[:, :, :1, ...] ** 2, dim=-1)).reshape(n, orientations, 1, 1, h * w)
    median_e2n = torch.median(abs_eo ** 2, dim=-1, keepdim=True).values
    mean_e2n = - median_e2n / math.log(0.5)
    noise_power = mean_e2n / terms["em_n"]
    noise_energy2 = 2 * noise_power * terms["sum_an2"] + 4 * noise_power * terms["sum_ai_aj"]
    tau = torch.sqrt(noise_energy2 / 2)
    noise_energy = tau * math.sqrt(math.pi / 2)
    moise_energy_sigma = torch.sqrt((2 - math.pi / 2) * tau ** 2)
    t = noise_energy + k * moise_energy_sigma
    t = t / 1.7
    energy = torch.max(energy - t, torch.zeros_like(t))
    energy_all = energy.sum(dim=[1, 2]) + eps
    an_all = an.sum(dim=[1, 2]) + eps
    return (energy_all / an_all).unsqueeze(1)
