"""Validation metrics in numpy, named and defined as ATOMICA's trainers log them; they belong to the tasks that
name them (the engine only calls `task.metrics`).

Every function takes the whole validation set (already gathered from all ranks) as 1-D/2-D arrays.

Why hand-written rather than a kept library: ATOMICA computes these with scikit-learn (`roc_auc_score`,
`auc(recall, precision)` over `precision_recall_curve`, `f1_score`) and scipy (`spearmanr`). Neither is a runtime
dependency here (scikit-learn would add scipy, joblib and threadpoolctl to every worker for a dozen short
functions), and the one maintained alternative in the torch world, torchmetrics, computes AUPRC as average
precision, not ATOMICA's trapezoidal `auc(recall, precision)`: selection by that number would rank checkpoints
differently from ATOMICA. So each function reproduces the sklearn definition it names (tests check them against
scipy where scipy has the same statistic, and against sklearn's documented examples).
"""

from __future__ import annotations

import math

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


def delta_auprc(score: np.ndarray, label: np.ndarray) -> float:
    """AUPRC minus the positive rate (the AUPRC of a constant predictor): ATOMICA's `val_delta_auprc`."""
    return auprc(score, label) - float(np.mean(label)) if len(label) else float("nan")


def per_group(metric, score: np.ndarray, label: np.ndarray, group: np.ndarray) -> tuple[float, int]:
    """Mean of `metric` computed within each group (e.g. one structure's residues) over the groups where it is
    defined (finite), and how many groups that is. Per-structure AUROC needs both classes in the structure,
    per-structure AUPRC a positive."""
    order = np.argsort(group, kind="stable")
    g, s, y = group[order], score[order], label[order]
    cuts = np.flatnonzero(g[1:] != g[:-1]) + 1
    values = [metric(ss, yy) for ss, yy in zip(np.split(s, cuts), np.split(y, cuts))] if len(g) else []
    values = [v for v in values if math.isfinite(v)]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def f1_binary(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 of one class from hard 0/1 predictions; 0 when there is no true and no predicted positive
    (sklearn's `zero_division=0`)."""
    pred, label = pred.astype(bool), label.astype(bool)
    tp = float(np.sum(pred & label))
    denom = float(np.sum(pred) + np.sum(label))
    return 2.0 * tp / denom if denom > 0 else 0.0


def f1_macro_multiclass(pred_class: np.ndarray, label: np.ndarray) -> float:
    """sklearn `f1_score(label, pred, average='macro')`: mean one-vs-rest F1 over the classes that occur in the
    labels or the predictions."""
    classes = np.union1d(np.unique(label), np.unique(pred_class))
    return float(np.mean([f1_binary(pred_class == c, label == c) for c in classes])) if len(classes) else float("nan")


def f1_macro_multilabel(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """sklearn `f1_score(label, prob > threshold, average='macro', zero_division=0)` over the label columns."""
    pred = prob > threshold
    return float(np.mean([f1_binary(pred[:, c], label[:, c]) for c in range(label.shape[1])]))


def macro_auprc_multilabel(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean AUPRC over the label columns that have a positive (a column without one has no PR curve)."""
    values = [auprc(prob[:, c], label[:, c]) for c in range(label.shape[1]) if np.any(label[:, c] > 0.5)]
    return float(np.mean(values)) if values else float("nan")


def micro_auprc_multilabel(prob: np.ndarray, label: np.ndarray) -> float:
    """AUPRC of every (item, label) pair pooled: sklearn's `average='micro'`."""
    return auprc(prob.reshape(-1), label.reshape(-1))


def macro_auroc_multilabel(prob: np.ndarray, label: np.ndarray) -> float:
    values = [auroc(prob[:, c], label[:, c]) for c in range(label.shape[1])]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def class_frequencies(label: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes] fraction of items of each class (integer labels)."""
    return np.bincount(label.astype(np.int64), minlength=n_classes) / max(len(label), 1)


# Direction of every metric a task reports, for checkpoint ranking, early stopping and sweeps.
LOWER_IS_BETTER = frozenset({"val_loss", "val_rmse", "val_bce", "val_ce", "val_atom_loss", "val_translation_loss",
                             "val_rotation_loss", "val_tor_loss", "val_masked_loss"})


def mode_of(metric: str) -> str:
    """'min' for losses and errors, 'max' for every score (AUROC, AUPRC, F1, accuracy, correlation)."""
    return "min" if metric in LOWER_IS_BETTER else "max"
