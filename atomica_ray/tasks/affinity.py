"""Affinity (`PDBBind`, AffinityPredictor) and `regression` (RegressionPredictor): MSE on a scalar label.

ATOMICA's AffinityTrainer: AdamW (wd 1e-3), exponential lr decay per step; model selection by val RMSE; Pearson
and Spearman logged.
"""

from __future__ import annotations

from atomica_ray.tasks.spec import Task, structure_inputs
from atomica_ray.tasks import metrics as M


def forward(model, batch):
    loss, pred = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"pred": pred.detach().float(), "label": batch["label"].float()}


def compute_metrics(r):
    return {
        "val_rmse": M.rmse(r["pred"], r["label"]),
        "val_pearson": M.pearson(r["pred"], r["label"]),
        "val_spearman": M.spearman(r["pred"], r["label"]),
        "val_loss": M.rmse(r["pred"], r["label"]) ** 2,  # MSE, the training loss
    }


def affinity_head(cfg):
    return dict(
        num_affinity_pred_layers=cfg.num_pred_layers,
        affinity_pred_dropout=cfg.pred_dropout,
        affinity_pred_hidden_size=cfg.pred_hidden_size,
        nonlinearity=cfg.pred_nonlinearity,
    )


PDBBIND = Task(
    name="PDBBind",
    model_class="AffinityPredictor",
    data_kind=lambda cfg: "affinity",
    model_kwargs=affinity_head,
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_rmse",
    mode="min",
    optimizer="adamw",
    scheduler="exp_decay",
    metric_names=("val_rmse", "val_pearson", "val_spearman", "val_loss"),
    prediction_keys=("pred",),
)

REGRESSION = Task(
    name="regression",
    model_class="RegressionPredictor",
    data_kind=lambda cfg: "labelled",
    model_kwargs=lambda cfg: {},
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_rmse",
    mode="min",
    optimizer="adamw",
    scheduler="exp_decay",
    metric_names=("val_rmse", "val_pearson", "val_spearman", "val_loss"),
    prediction_keys=("pred",),
)
