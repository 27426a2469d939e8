"""One probe fit: one setting, one seed (one Tune trial).

Adam on the standardized training rows in shuffled mini-batches; after every epoch the validation split is scored
with the setting's primary metric, the best epoch's weights are kept, and training stops after `patience` epochs
without improvement (by more than `min_delta`). Returns the validation and test probabilities of the kept weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atomica_ray.probe.head import probabilities, probe_head
from atomica_ray.probe.stats import score


@dataclass(frozen=True)
class ProbeSettings:
    head: str = "mlp"  # linear | mlp
    hidden_dim: int = 64
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    min_delta: float = 1e-4

    def label(self) -> str:
        """Short name of the setting (the report's row)."""
        if self.head == "linear":
            return f"linear lr={self.lr:g} wd={self.weight_decay:g}"
        return f"mlp h={self.hidden_dim} p={self.dropout:g} lr={self.lr:g} wd={self.weight_decay:g}"

    def to_dict(self) -> dict:
        return asdict(self)


def n_outputs(task_type: str, y: np.ndarray) -> int:
    if task_type == "binary":
        return 1
    if task_type == "multilabel":
        return int(y.shape[1])
    return int(y.max()) + 1


def loss_fn(task_type: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task_type == "multiclass":
        return F.cross_entropy(logits, y.long())
    return F.binary_cross_entropy_with_logits(logits.reshape(y.shape), y.float())


def fit_probe(data: dict, task_type: str, metric: str, settings: ProbeSettings, seed: int) -> dict:
    """`data`: X_train, y_train, X_valid, y_valid, X_test (standardized float32 arrays)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # copies: arrays from the object store are read-only
    X_tr, y_tr = torch.tensor(data["X_train"]), torch.tensor(np.asarray(data["y_train"], np.float32))
    X_va, X_te = torch.tensor(data["X_valid"]), torch.tensor(data["X_test"])
    n_classes = max(n_outputs(task_type, data["y_train"]), n_outputs(task_type, data["y_valid"]))
    model = probe_head(settings.head, X_tr.shape[1], n_classes, settings.hidden_dim, settings.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def predict(X):
        model.eval()
        with torch.no_grad():
            return probabilities(task_type, model(X)).numpy()

    best, best_state, best_epoch, waited = -np.inf, None, -1, 0
    for epoch in range(settings.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(X_tr)))
        for start in range(0, len(order), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            opt.zero_grad()
            loss_fn(task_type, model(X_tr[idx]), y_tr[idx]).backward()
            opt.step()
        value = score(task_type, metric, data["y_valid"], predict(X_va))
        if np.isfinite(value) and value > best + settings.min_delta:
            best, best_epoch, waited = value, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"valid_prob": predict(X_va), "test_prob": predict(X_te), "best_epoch": best_epoch,
            "valid_metric": float(best), "epochs_run": epoch + 1, "state_dict": model.state_dict()}
