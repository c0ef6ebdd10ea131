"""Retrieval metrics on a hand-computed example, and PSNR / SSIM / FSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cbir_dist.evaluation.metrics import (
    average_precision,
    bullseye_score,
    fsim,
    mean_average_precision,
    precision_at_k,
    psnr,
    retrieval_confusion,
    ssim,
)
from cbir_dist.retrieval.search import exclude_self as drop_self

# Three queries, K = 5, a database of N = 20 items.
#   q0 (class A, R = 4): A B A A C -> hits 1 0 1 1 0
#   q1 (class B, R = 2): A B C C B -> hits 0 1 0 0 1
#   q2 (class C, R = 6): B B A A B -> no hit
RETRIEVED = np.array([list("ABAAC"), list("ABCCB"), list("BBAAB")])
QUERIES = np.array(list("ABC"))
N_RELEVANT = np.array([4, 2, 6])
N_DATABASE = 20


def test_precision_at_k_by_hand():
    np.testing.assert_allclose(precision_at_k(RETRIEVED, QUERIES, 1), [1, 0, 0])
    np.testing.assert_allclose(precision_at_k(RETRIEVED, QUERIES, 2), [1 / 2, 1 / 2, 0])
    np.testing.assert_allclose(precision_at_k(RETRIEVED, QUERIES, 5), [3 / 5, 2 / 5, 0])


def test_average_precision_by_hand():
    # q0: (P@1 + P@3 + P@4) / min(4, 5) = (1 + 2/3 + 3/4) / 4
    # q1: (P@2 + P@5) / min(2, 5) = (1/2 + 2/5) / 2
    expected = [(1 + 2 / 3 + 3 / 4) / 4, (1 / 2 + 2 / 5) / 2, 0.0]
    np.testing.assert_allclose(average_precision(RETRIEVED, QUERIES, N_RELEVANT), expected)
    assert mean_average_precision(RETRIEVED, QUERIES, N_RELEVANT) == pytest.approx(sum(expected) / 3)


def test_average_precision_normalises_by_min_of_relevant_and_k():
    # Five relevant results out of R = 50: a perfect list, AP = 1 (normalised by K, not R).
    assert average_precision(np.array([list("AAAAA")]), np.array(["A"]), 50)[0] == pytest.approx(1.0)
    # R = 0: undefined, NaN, and skipped by the mean.
    ap = average_precision(np.array([list("BB"), list("AB")]), np.array(["A", "A"]), [0, 1])
    assert math.isnan(ap[0]) and ap[1] == 1.0
    assert mean_average_precision(np.array([list("BB"), list("AB")]), np.array(["A", "A"]), [0, 1]) == 1.0


def test_retrieval_confusion_by_hand():
    c = retrieval_confusion(RETRIEVED, QUERIES, N_RELEVANT, N_DATABASE, k=5)
    np.testing.assert_array_equal(c.tp, [3, 2, 0])
    np.testing.assert_array_equal(c.fp, [2, 3, 5])
    np.testing.assert_array_equal(c.fn, [1, 0, 6])
    np.testing.assert_array_equal(c.tn, [14, 15, 9])  # (20 - R) - FP
    np.testing.assert_allclose(c.recall, [3 / 4, 1.0, 0.0])
    np.testing.assert_allclose(c.specificity, [14 / 16, 15 / 18, 9 / 14])
    np.testing.assert_allclose(c.accuracy, [17 / 20, 17 / 20, 9 / 20])
    np.testing.assert_allclose(c.precision, [3 / 5, 2 / 5, 0.0])
    assert c.mean()["recall"] == pytest.approx((3 / 4 + 1) / 3)
    c1 = retrieval_confusion(RETRIEVED, QUERIES, N_RELEVANT, N_DATABASE, k=1)
    np.testing.assert_array_equal(c1.tp, [1, 0, 0])
    np.testing.assert_allclose(c1.specificity, [1.0, 17 / 18, 13 / 14])


def test_bullseye_by_hand():
    # Top 4: q0 has 3 A's of a class of 4, q1 has 1 B of 2, q2 none of 6.
    np.testing.assert_allclose(bullseye_score(RETRIEVED, QUERIES, [4, 2, 6], window=4), [3 / 4, 1 / 2, 0])
    np.testing.assert_allclose(bullseye_score(RETRIEVED, QUERIES, 2, window=2), [1 / 2, 1 / 2, 0])
    with pytest.raises(ValueError, match="window=40"):
        bullseye_score(RETRIEVED, QUERIES, 20)


def test_retrieval_errors():
    with pytest.raises(ValueError, match="k=6"):
        precision_at_k(RETRIEVED, QUERIES, 6)
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(RETRIEVED, QUERIES, 0)
    with pytest.raises(ValueError, match="query_labels"):
        precision_at_k(RETRIEVED, QUERIES[:2], 1)
    with pytest.raises(ValueError, match="drop_self"):
        average_precision(RETRIEVED, QUERIES, [2, 2, 6])  # q0 found 3 relevant items, R = 2
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision(RETRIEVED, QUERIES, [4, 2])
    with pytest.raises(ValueError, match="n_database"):
        retrieval_confusion(RETRIEVED, QUERIES, N_RELEVANT, 4, k=5)


def test_drop_self_removes_query_and_truncates():
    query_ids = np.array([10, 20, 30])
    result_ids = np.array([[10, 11, 12, 13], [21, 20, 22, 23], [31, 32, 33, 34]])
    labels = np.array([list("AABB"), list("BBCA"), list("CCCA")])
    dist = np.arange(12, dtype=float).reshape(3, 4)
    ids, lab, d = drop_self(query_ids, result_ids, labels, dist)
    np.testing.assert_array_equal(ids, [[11, 12, 13], [21, 22, 23], [31, 32, 33]])
    np.testing.assert_array_equal(lab, [list("ABB"), list("BCA"), list("CCC")])
    np.testing.assert_array_equal(d, [[1, 2, 3], [4, 6, 7], [8, 9, 10]])
    # No query in its results: nothing removed, K unchanged.
    (same,) = drop_self([1, 2], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(same, [[5, 6], [7, 8]])
    # Per-result vectors (Q, K, D) follow the ids.
    vecs = np.arange(24).reshape(3, 4, 2)
    _, v = drop_self(query_ids, result_ids, vecs)
    np.testing.assert_array_equal(v[1], vecs[1, [0, 2, 3]])
    with pytest.raises(ValueError, match="arrays"):
        drop_self(query_ids, result_ids, dist[:, :3])


@pytest.fixture
def texture(rng) -> np.ndarray:
    """A 64 x 64 RGB image with structure at several scales."""
    yy, xx = np.mgrid[0:64, 0:64]
    base = 128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 40 * ((xx // 16 + yy // 16) % 2)
    img = np.stack([base, base[::-1], base[:, ::-1]], axis=2) + rng.normal(0, 5, (64, 64, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_psnr_of_known_mse():
    ref = np.full((16, 16, 3), 100, np.uint8)
    test = ref.copy()
    test[::2] += 10  # half of the pixels off by 10: MSE = 50
    assert psnr(ref, test) == pytest.approx(10 * math.log10(255**2 / 50))
    assert psnr(ref, ref) == math.inf
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 20, 24), dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_ssim_identical_and_noisy(texture):
    assert ssim(texture, texture) == pytest.approx(1.0)
    assert ssim(texture[..., 0], texture[..., 0]) == pytest.approx(1.0)
    assert ssim(texture, _noisy(texture, 10)) < ssim(texture, _noisy(texture, 3)) < 1.0


def test_fsim_identical_noisy_and_monotone(texture):
    assert fsim(texture, texture) == pytest.approx(1.0, abs=1e-5)
    assert fsim(texture[..., 0], texture[..., 0]) == pytest.approx(1.0, abs=1e-5)
    scores = [fsim(texture, _noisy(texture, s)) for s in (4, 12, 30, 60)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[0] < 1.0


def test_fsim_reference_gives_fsim_bit_for_bit(texture):
    """The evaluation's cached reference maps change nothing: the same float as fsim(), RGB and grey, any size."""
    from cbir_dist.evaluation.metrics import FsimReference

    for ref in (texture, texture[..., 0], texture[:45, :70]):
        cached = FsimReference(ref)
        for s in (4, 30):
            test = _noisy(ref, s)
            assert cached.score(test) == fsim(ref, test)
    with pytest.raises(ValueError, match="shape"):
        FsimReference(texture).score(texture[:-1])


def test_quality_input_validation(texture):
    with pytest.raises(TypeError, match="uint8"):
        psnr(texture.astype(float), texture.astype(float))
    with pytest.raises(ValueError, match="same shape"):
        ssim(texture, texture[:-1])
    with pytest.raises(ValueError, match="at least 7"):
        fsim(texture[:6, :6], texture[:6, :6])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8))
