"""The probe on a frozen representation: `linear` (one Linear layer: logistic / softmax regression, the question
"is the quantity a direction of the representation") or `mlp` (Linear -> ReLU -> Dropout, twice, then Linear: a
small head, the question "can a head built on it do the task")."""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("linear", "mlp")


def probe_head(kind: str, input_dim: int, n_out: int, hidden_dim: int = 64, dropout: float = 0.1) -> nn.Module:
    if kind == "linear":
        return nn.Linear(input_dim, n_out)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),  # [n, hidden]
            nn.Linear(hidden_dim, max(hidden_dim // 2, 1)), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(max(hidden_dim // 2, 1), n_out),  # [n, n_out] logits
        )
    raise ValueError(f"unknown probe head {kind!r}; choose one of {HEADS}")


def probabilities(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """binary [n], multiclass [n, C] (softmax), multilabel [n, C] (sigmoid)."""
    if task_type == "binary":
        return torch.sigmoid(logits.reshape(-1))
    if task_type == "multilabel":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)
