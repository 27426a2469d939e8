"""Validation metrics in numpy, named and defined as ATOMICA's trainers log them (no sklearn/scipy needed).

Every function takes the whole validation set (already gathered from all ranks) as 1-D/2-D arrays.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def rmse(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred.astype(np.float64) - label) ** 2)))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (as numpy.corrcoef)."""
    x = x.astype(np.float64) - x.mean()
    y = y.astype(np.float64) - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of their ranks (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # [n] True where a new run of equal values starts
    starts = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)  # 0-based position of each run's first element
    last = np.concatenate([first[1:], [len(x)]]) - 1
    mean_rank = (first + last) / 2.0 + 1.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho = Pearson's r of the (tie-averaged) ranks."""
    return pearson(rankdata(x), rankdata(y))


def bce(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    p = np.clip(prob.astype(np.float64), EPS, 1 - EPS)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties count 1/2
    (the Mann-Whitney U statistic). NaN if only one class is present."""
    label = label.astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    u = ranks[label].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall_points(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The precision-recall curve at each distinct score threshold plus the (recall 0, precision 1) end point,
    recall decreasing, as sklearn.metrics.precision_recall_curve returns it."""
    label = label.astype(bool)
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], label[order]
    # the last index of each run of equal scores: a threshold between distinct values
    cut = np.concatenate([np.flatnonzero(s[1:] != s[:-1]), [len(s) - 1]])
    tps = np.cumsum(y)[cut].astype(np.float64)
    fps = (cut + 1) - tps
    precision = tps / np.maximum(tps + fps, EPS)
    recall = tps / tps[-1]
    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]])
    return precision, recall


def auprc(score: np.ndarray, label: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve, ATOMICA's `auc(recall, precision)`.
    NaN if there is no positive."""
    if not np.any(label.astype(bool)):
        return float("nan")
    precision, recall = precision_recall_points(score, label)
    # recall runs from 1 down to 0
    return float(np.sum((recall[:-1] - recall[1:]) * (precision[:-1] + precision[1:]) / 2.0))


def cross_entropy(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean categorical cross-entropy of probabilities [n, C] against integer labels [n]."""
    p = np.clip(prob[np.arange(len(label)), label.astype(np.int64)].astype(np.float64), EPS, 1.0)
    return float(-np.mean(np.log(p)))


def accuracy(pred_class: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(pred_class == label)) if len(label) else float("nan")


def macro_auprc(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean one-vs-rest AUPRC over the classes present in `label` (ATOMICA's multiclass trainer)."""
    values = [auprc(prob[:, c], label == c) for c in range(prob.shape[1]) if np.any(label == c)]
    return float(np.mean(values)) if values else float("nan")


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(np.sum(weights))
    return float(np.sum(values * weights) / total) if total > 0 else float("nan")
