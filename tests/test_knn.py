"""KNN voting with tie-breaks, one-vs-rest classification report, standardiser."""

from __future__ import annotations

import numpy as np
import pytest

from cbir_dist.features.spec import apply_standardizer, fit_standardizer
from cbir_dist.retrieval.knn import classification_report, knn_predict


def test_majority_vote_on_hand_made_features():
    # 1-D features: class "a" near 0, class "b" near 10; queries at 1 and 9 with brute-force neighbours
    feats = np.array([0.0, 0.5, 2.0, 9.0, 10.0, 11.0])
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    queries = np.array([1.0, 9.4, 5.0])
    d = np.abs(queries[:, None] - feats[None])
    order = np.argsort(d, axis=1)
    nl, nd = labels[order], np.take_along_axis(d, order, axis=1)
    np.testing.assert_array_equal(knn_predict(nl, nd, 1), ["a", "b", "a"])  # 5.0: 2.0 is at 3, 9.0 at 4
    np.testing.assert_array_equal(knn_predict(nl, nd, 3), ["a", "b", "a"])
    # k=5 for the query at 5.0: 2.0 (a, 3), 9.0 (b, 4), 0.5 (a, 4.5), 0.0 (a, 5), 10.0 (b, 5) -> a 3 : b 2
    assert knn_predict(nl, nd, 5)[2] == "a"


def test_tie_broken_by_summed_distance():
    # k=4: a has 2 votes summing 1 + 4 = 5, b has 2 votes summing 2 + 2.5 = 4.5 -> b, although a is nearest
    nl = np.array([["a", "b", "a", "b", "c"]])
    nd = np.array([[1.0, 2.0, 4.0, 2.5, 9.0]])
    assert knn_predict(nl, nd, 4)[0] == "b"
    # k=1: the nearest wins
    assert knn_predict(nl, nd, 1)[0] == "a"
    assert knn_predict(nl, nd, 3)[0] == "b"  # nearest three: a(1), b(2), b(2.5) -> b has 2 votes


def test_tie_on_votes_and_sums_broken_by_nearest_single_neighbour():
    # a: 1 + 3 = 4, b: 2 + 2 = 4 -> equal sums, the nearest single neighbour is a
    nl = np.array([[1, 2, 2, 1], [2, 1, 1, 2]])
    nd = np.array([[1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0]])
    np.testing.assert_array_equal(knn_predict(nl, nd, 4), [1, 2])


def test_rows_need_not_be_sorted():
    nl = np.array([[7, 3, 3]])
    nd = np.array([[0.5, 3.0, 2.0]])
    assert knn_predict(nl, nd, 1)[0] == 7
    assert knn_predict(nl, nd, 3)[0] == 3
    nl2, nd2 = nl[:, ::-1], nd[:, ::-1]
    assert knn_predict(nl2, nd2, 1)[0] == 7


def test_knn_validation():
    with pytest.raises(ValueError, match="same shape"):
        knn_predict(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(np.zeros((2, 3)), np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(np.zeros((2, 3)), np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(np.zeros((1, 2)), np.array([[0.0, np.nan]]), 1)


def _three_class():
    # confusion (rows true, cols predicted): [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 0, 1, 1, 1, 2, 2]
    return y_true, y_pred


def test_classification_report_hand_computed():
    rep = classification_report(*_three_class())
    np.testing.assert_array_equal(rep["confusion"], [[3, 1, 0], [1, 2, 0], [0, 1, 2]])
    pc = rep["per_class"]
    # class 0: TP 3 FP 1 FN 1 TN 5; class 1: TP 2 FP 2 FN 1 TN 5; class 2: TP 2 FP 0 FN 1 TN 7
    expected = {
        0: (3 / 4, 3 / 4, 5 / 6, 8 / 10, 4),
        1: (2 / 4, 2 / 3, 5 / 7, 7 / 10, 3),
        2: (1.0, 2 / 3, 1.0, 9 / 10, 3),
    }
    for c, (p, r, s, a, n) in expected.items():
        assert pc[c]["precision"] == pytest.approx(p)
        assert pc[c]["recall"] == pytest.approx(r)
        assert pc[c]["specificity"] == pytest.approx(s)
        assert pc[c]["accuracy"] == pytest.approx(a)
        assert pc[c]["support"] == n
    assert rep["macro"]["precision"] == pytest.approx((0.75 + 0.5 + 1) / 3)
    assert rep["macro"]["recall"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert rep["macro"]["specificity"] == pytest.approx((5 / 6 + 5 / 7 + 1) / 3)
    assert rep["macro"]["accuracy"] == pytest.approx(0.8)
    assert rep["accuracy"] == pytest.approx(0.7) and rep["n"] == 10


def test_classification_report_labels_order_and_unpredicted_class():
    rep = classification_report(["x", "y", "y"], ["y", "y", "y"], labels=["y", "x", "z"])
    assert rep["labels"] == ["y", "x", "z"]
    assert rep["per_class"]["x"]["precision"] == 0.0  # never predicted: 0, not NaN
    assert rep["per_class"]["z"]["recall"] == 0.0 and rep["per_class"]["z"]["specificity"] == 1.0
    assert rep["per_class"]["y"]["precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="lacks classes"):
        classification_report(["x"], ["q"], labels=["x"])
    with pytest.raises(ValueError, match="same length"):
        classification_report([1, 2], [1])


def test_standardizer_round_trip_and_constant_feature():
    X = np.array([[1.0, 5.0, 100.0], [3.0, 5.0, 300.0], [5.0, 5.0, 200.0]])
    mean, std = fit_standardizer(X)
    np.testing.assert_allclose(mean, [3.0, 5.0, 200.0])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0, np.sqrt(20000 / 3)])  # constant -> 1
    Z = apply_standardizer(X, mean, std)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(Z[:, [0, 2]].std(axis=0), 1, atol=1e-6)
    np.testing.assert_array_equal(Z[:, 1], 0)
    # a single vector (a query) uses the stored mean/std
    np.testing.assert_allclose(apply_standardizer(X[1], mean, std), Z[1])


def test_standardizer_floor_catches_rounding_noise():
    X = np.full((4, 1), 0.1) + np.array([[0.0], [1e-17], [0.0], [2e-17]])
    _, std = fit_standardizer(X)
    assert std[0] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        fit_standardizer(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="features"):
        apply_standardizer(np.zeros((2, 3)), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="positive"):
        apply_standardizer(np.zeros((2, 2)), np.zeros(2), np.array([1.0, 0.0]))
