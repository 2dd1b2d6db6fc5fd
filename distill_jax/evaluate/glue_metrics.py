"""GLUE metrics, implemented once, in numpy.

All functions take 1-D arrays of equal length N and return a Python float. Classification
metrics take integer class predictions and labels; correlation metrics take real values.
Degenerate inputs (a constant vector for a correlation, an empty confusion row for MCC) return
0.0, the convention of scikit-learn and the GLUE scorer, rather than NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _pair(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"metrics need two 1-D arrays of equal length, got {preds.shape} and {labels.shape}")
    if preds.size == 0:
        raise ValueError("metrics need at least one example, got empty arrays")
    return preds, labels


def accuracy(preds, labels) -> float:
    """Fraction of positions where preds == labels."""
    preds, labels = _pair(preds, labels)
    return float(np.mean(preds == labels))


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the `positive` class: 2 TP / (2 TP + FP + FN); 0.0 when there is no positive at all."""
    preds, labels = _pair(preds, labels)
    tp = np.sum((preds == positive) & (labels == positive))
    fp = np.sum((preds == positive) & (labels != positive))
    fn = np.sum((preds != positive) & (labels == positive))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation coefficient (the K-class form of Gorodkin 2004; binary phi for K=2).

    With confusion matrix C, t_k = row sums (true), p_k = column sums (predicted), c = trace,
    s = N:  MCC = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
    """
    preds, labels = _pair(preds, labels)
    classes = np.union1d(preds, labels)
    index = {c: i for i, c in enumerate(classes.tolist())}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for t, p in zip(labels.tolist(), preds.tolist()):
        confusion[index[t], index[p]] += 1
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    numerator = correct * total - t_sum @ p_sum
    denominator = np.sqrt((total**2 - p_sum @ p_sum) * (total**2 - t_sum @ t_sum))
    return float(numerator / denominator) if denominator else 0.0


def pearson(x, y) -> float:
    """Pearson correlation: cov(x, y) / (std x std y)."""
    x, y = _pair(np.asarray(x, np.float64), np.asarray(y, np.float64))
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / denom) if denom else 0.0


def average_ranks(x) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of the ranks they span (float64 [N])."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.shape[0], dtype=np.float64)
    start = 0
    n = x.shape[0]
    while start < n:
        stop = start + 1
        while stop < n and sorted_x[stop] == sorted_x[start]:
            stop += 1
        # positions start..stop-1 hold ranks start+1..stop; their mean is (start+1+stop)/2
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0
        start = stop
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson on tie-averaged ranks."""
    x, y = _pair(x, y)
    return pearson(average_ranks(x), average_ranks(y))


# Metric name -> (function, takes class predictions (True) or real-valued outputs (False)).
METRICS: dict[str, tuple[Callable[..., float], bool]] = {
    "acc": (accuracy, True),
    "f1": (f1_binary, True),
    "mcc": (matthews_corrcoef, True),
    "pearson": (pearson, False),
    "spearman": (spearman, False),
}


def compute_metrics(names, outputs_bk: np.ndarray, labels_b: np.ndarray, regression: bool) -> dict[str, float]:
    """Evaluates `names` on model outputs.

    Args:
      names: metric names (keys of METRICS).
      outputs_bk: logits [B, K] (classification) or scores [B] / [B, 1] (regression).
      labels_b: int class labels [B] or float targets [B].
      regression: whether outputs are real-valued scores.
    """
    outputs_bk = np.asarray(outputs_bk)
    if regression:
        values = outputs_bk.reshape(outputs_bk.shape[0], -1)[:, 0]
    else:
        values = np.argmax(outputs_bk, axis=-1)
    result = {}
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
        fn, _ = METRICS[name]
        result[name] = fn(values, labels_b)
    return result
