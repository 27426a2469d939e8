"""Probe metrics and their uncertainty.

- `score`: the probe's metrics from probabilities (AUPRC as ATOMICA's trapezoidal `auc(recall, precision)`, AUROC,
  macro F1; tasks/metrics.py defines them);
- `seed_interval`: mean over seeds and the half-width of its 95% interval, 1.96 * sd / sqrt(n_seeds): training
  randomness on a fixed test set;
- `bootstrap_ci`: percentile interval of a metric of the seed-ensembled prediction, resampling test rows;
  `cluster=...` resamples whole clusters instead (several residues of one structure are not independent evidence:
  resampling them one by one gives intervals that are too narrow);
- `paired_bootstrap`: the interval of the difference A - B of two predictions of the same rows on shared
  resamples (paired, clustered when given), with a two-sided bootstrap p-value;
- `mcnemar`: exact McNemar test on hard multiclass / binary predictions (binomial on the discordant pairs).

Hand-written: these are a few lines of numpy over the metric functions, and scipy is not a runtime dependency
(the tests check `mcnemar` against scipy's binomtest).
"""

from __future__ import annotations

import math

import numpy as np

from atomica_ray.tasks import metrics as M

METRICS = {
    "binary": ("auprc", "auroc", "f1"),
    "multiclass": ("macro_auprc", "accuracy", "f1_macro"),
    "multilabel": ("macro_auprc", "micro_auprc", "f1_macro"),
}
PRIMARY = {"binary": "auprc", "multiclass": "macro_auprc", "multilabel": "macro_auprc"}


def score(task_type: str, metric: str, y: np.ndarray, prob: np.ndarray) -> float:
    y = np.asarray(y)
    if task_type == "binary":
        p = np.asarray(prob).reshape(-1)
        return {"auprc": M.auprc, "auroc": M.auroc}[metric](p, y) if metric != "f1" else M.f1_binary(p > 0.5, y)
    if task_type == "multiclass":
        if metric == "macro_auprc":
            return M.macro_auprc(prob, y.astype(np.int64))
        if metric == "accuracy":
            return M.accuracy(prob.argmax(1), y)
        return M.f1_macro_multiclass(prob.argmax(1), y)
    return {"macro_auprc": M.macro_auprc_multilabel, "micro_auprc": M.micro_auprc_multilabel,
            "f1_macro": M.f1_macro_multilabel}[metric](prob, y)


def scores(task_type: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    return {m: score(task_type, m, y, prob) for m in METRICS[task_type]}


def seed_interval(values) -> tuple[float, float]:
    """(mean, 95% half-width) over seeds; the half-width is 0 for one seed."""
    a = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    if a.size == 1:
        return float(a[0]), 0.0
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(a.size))


def resample_index(rng: np.random.Generator, n: int, cluster: np.ndarray | None) -> np.ndarray:
    """Row indices of one bootstrap resample: n rows with replacement, or as many clusters with replacement and
    every row of each drawn cluster."""
    if cluster is None:
        return rng.integers(0, n, n)
    codes = np.unique(cluster, return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pick = rng.integers(0, len(sizes), len(sizes))
    return np.concatenate([order[starts[c]:starts[c] + sizes[c]] for c in pick]) if len(pick) else order


def bootstrap_ci(task_type: str, metric: str, y, prob, n_boot: int = 1000, seed: int = 0,
                 cluster: np.ndarray | None = None) -> tuple[float, float, float]:
    """(value, low, high): the metric and its 95% percentile interval; resamples where the metric is undefined
    (e.g. no positive drawn) are skipped."""
    y, prob = np.asarray(y), np.asarray(prob)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = resample_index(rng, len(y), cluster)
        v = score(task_type, metric, y[idx], prob[idx])
        if math.isfinite(v):
            values.append(v)
    point = score(task_type, metric, y, prob)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def paired_bootstrap(task_type: str, metric: str, y, prob_a, prob_b, n_boot: int = 1000, seed: int = 0,
                     cluster: np.ndarray | None = None) -> dict:
    """The difference A - B of one metric on the same rows: value, 95% interval, two-sided bootstrap p-value
    (twice the smaller share of resampled differences on either side of 0)."""
    y, prob_a, prob_b = np.asarray(y), np.asarray(prob_a), np.asarray(prob_b)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = resample_index(rng, len(y), cluster)
        d = score(task_type, metric, y[idx], prob_a[idx]) - score(task_type, metric, y[idx], prob_b[idx])
        if math.isfinite(d):
            diffs.append(d)
    delta = score(task_type, metric, y, prob_a) - score(task_type, metric, y, prob_b)
    if not diffs:
        return {"delta": delta, "low": float("nan"), "high": float("nan"), "p_value": float("nan")}
    d = np.asarray(diffs)
    low, high = np.percentile(d, [2.5, 97.5])
    p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return {"delta": float(delta), "low": float(low), "high": float(high), "p_value": float(p)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test: among rows where exactly one prediction is right, is A right as often as B?"""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def correct(task_type: str, y, prob) -> np.ndarray:
    """Per-row correctness of the hard prediction (argmax; 0.5 threshold for binary)."""
    y = np.asarray(y)
    if task_type == "multiclass":
        return np.asarray(prob).argmax(1) == y
    if task_type == "binary":
        return (np.asarray(prob).reshape(-1) > 0.5) == (y > 0.5)
    return np.all((np.asarray(prob) > 0.5) == (y > 0.5), axis=1)
