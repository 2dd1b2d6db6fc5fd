"""GLUE metrics against cases computed by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest

from distill_jax.evaluate import glue_metrics

# Five examples: TP at 0 and 4, FP at 1, TN at 2, FN at 3.
PREDS = [1, 1, 0, 0, 1]
LABELS = [1, 0, 0, 1, 1]


def test_accuracy():
    assert glue_metrics.accuracy(PREDS, LABELS) == pytest.approx(3 / 5)
    assert glue_metrics.accuracy([2, 0, 1], [2, 1, 1]) == pytest.approx(2 / 3)


def test_f1_binary():
    # 2TP / (2TP + FP + FN) = 4 / (4 + 1 + 1)
    assert glue_metrics.f1_binary(PREDS, LABELS) == pytest.approx(2 / 3)
    # class 0 as positive: TP=1 (idx 2), FP=1 (idx 3), FN=1 (idx 1) -> 2 / 4
    assert glue_metrics.f1_binary(PREDS, LABELS, positive=0) == pytest.approx(1 / 2)
    assert glue_metrics.f1_binary([0, 0], [0, 0]) == 0.0  # no positive predicted or present


def test_matthews_binary():
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert glue_metrics.matthews_corrcoef(PREDS, LABELS) == pytest.approx(1 / 6)
    assert glue_metrics.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert glue_metrics.matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    # A constant predictor (what CoLA gives when nothing is learned) scores 0, not NaN.
    assert glue_metrics.matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0


def test_matthews_three_classes():
    # true rows / predicted columns: t0 -> {p0, p1}, t1 -> {p1, p1}, t2 -> {p2, p0}
    # c = 4, s = 6, t = (2, 2, 2), p = (2, 3, 1): (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))
    # = (24 - 12) / sqrt((36 - 14)(36 - 12)) = 12 / sqrt(528)
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    assert glue_metrics.matthews_corrcoef(preds, labels) == pytest.approx(12 / math.sqrt(528))


def test_pearson():
    # x - mean = (-1, 0, 1), y - mean = (-5/3, -2/3, 7/3): 4 / sqrt(2 * 78/9) = 12 / sqrt(156)
    assert glue_metrics.pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(12 / math.sqrt(156))
    assert glue_metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert glue_metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_average_ranks_ties():
    # 5 is smallest (rank 1); 10 next (2); the three 20s share ranks 3, 4, 5 -> 4
    np.testing.assert_array_equal(glue_metrics.average_ranks([10, 20, 20, 20, 5]), [2, 4, 4, 4, 1])


def test_spearman_with_ties():
    # ranks x = (1, 2.5, 2.5, 4), ranks y = (1, 3, 2, 4); centred: (-1.5, 0, 0, 1.5), (-1.5, .5, -.5, 1.5)
    # dot 4.5, norms^2 4.5 and 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert glue_metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    # monotone but non-linear: rank correlation 1, Pearson below 1
    x, y = [1, 2, 3, 4], [1, 4, 9, 100]
    assert glue_metrics.spearman(x, y) == pytest.approx(1.0)
    assert glue_metrics.pearson(x, y) < 0.99


def test_compute_metrics_from_logits_and_scores():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0], [-2.0, 2.0]])  # argmax = PREDS
    got = glue_metrics.compute_metrics(("acc", "f1", "mcc"), logits, np.array(LABELS), regression=False)
    assert got == pytest.approx({"acc": 3 / 5, "f1": 2 / 3, "mcc": 1 / 6})
    scores = np.array([[1.0], [2.0], [3.0]])
    got = glue_metrics.compute_metrics(("pearson", "spearman"), scores, np.array([1.0, 2.0, 5.0]), regression=True)
    assert got == pytest.approx({"pearson": 12 / math.sqrt(156), "spearman": 1.0})


def test_bad_input_errors():
    with pytest.raises(ValueError, match="equal length"):
        glue_metrics.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="unknown metric"):
        glue_metrics.compute_metrics(("auc",), np.zeros((2, 2)), np.zeros(2), regression=False)
