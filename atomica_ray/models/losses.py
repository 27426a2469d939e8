"""Classification losses of ATOMICA's classifier heads (`utils/losses.py` and the models' `forward`).

Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5): FL(p_t) = -alpha_t (1 - p_t)^gamma
log(p_t), with p_t the probability given to the true class. gamma = 0 and no alpha is the cross-entropy.

- multi-class (softmax): alpha_t = alpha[true class] (a per-class weight vector), mean over items;
- multi-label / binary (sigmoid, per label independently): alpha_t = alpha for a positive target, 1 for a negative
  one (alpha a number or one weight per label), mean over every (item, label) entry.

`--weighted_loss` in ATOMICA: multi-class cross-entropy with per-class weights (inverse class frequency, scaled to
mean 1); multi-label BCE with `pos_weight` = negatives / positives per label (1 where a label has no positive). The
weights come from the training labels (`class_weights` / `pos_weights` below) and are not part of the state dict.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_alpha(alpha, device) -> torch.Tensor | None:
    """ATOMICA's `--focal_alpha` (None, a number, or a list of per-class weights) as a tensor."""
    if alpha is None:
        return None
    return torch.as_tensor(alpha, dtype=torch.float32, device=device).reshape(-1)


def focal_multiclass(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha=None) -> torch.Tensor:
    """logits [n, C], target [n] class indices."""
    log_p = F.log_softmax(logits, dim=1)  # [n, C]
    log_pt = log_p.gather(1, target.view(-1, 1)).squeeze(1)  # [n]
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    a = as_alpha(alpha, logits.device)
    if a is not None:
        loss = a.gather(0, target) * loss if a.numel() > 1 else a * loss
    return loss.mean()


def focal_sigmoid(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha=None) -> torch.Tensor:
    """logits and target of one shape ([n] or [n, C]); target in [0, 1]."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    loss = (1 - pt) ** gamma * bce
    a = as_alpha(alpha, logits.device)
    if a is not None:
        loss = (a * target + (1 - target)) * loss
    return loss.mean()


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Multi-class `--weighted_loss`: 1 / count per class (0 for an absent class), scaled so they sum to
    n_classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes].astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = w / w.sum() * n_classes if w.sum() > 0 else np.ones(n_classes)
    return torch.tensor(w, dtype=torch.float32)


def pos_weights(labels: np.ndarray) -> torch.Tensor:
    """Multi-label `--weighted_loss`: negatives / positives of each label column ([n, C] 0/1), 1 without
    positives."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels.sum(0)
    neg = len(labels) - pos
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1e-12), 1.0), dtype=torch.float32)
