"""`binary_classifier` (ClassifierModel, e.g. ATOMICA-Ligand): BCE on a 0/1 label.

ATOMICA's ClassifierTrainer: AdamW (wd 1e-3), exponential lr decay per step; model selection by validation AUPRC,
maximised (current ATOMICA; the 2025 release selected by val BCE: `selection_metric: val_bce` restores that). AUROC,
BCE and AUPRC minus the positive rate (`val_delta_auprc`) are logged too.
"""

from __future__ import annotations

from atomica_ray.tasks import metrics as M
from atomica_ray.tasks.spec import Task, structure_inputs


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"prob": prob.detach().float().reshape(-1), "label": batch["label"].float()}


def compute_metrics(r):
    auprc = M.auprc(r["prob"], r["label"])
    return {
        "val_bce": M.bce(r["prob"], r["label"]),
        "val_auroc": M.auroc(r["prob"], r["label"]),
        "val_auprc": auprc,
        "val_delta_auprc": auprc - float(r["label"].mean()),
    }


def classifier_head(cfg):
    """ClassifierModel's head arguments (shared with the residue classifier)."""
    return dict(
        num_pred_layers=cfg.num_pred_layers,
        pred_dropout=cfg.pred_dropout,
        pred_hidden_size=cfg.pred_hidden_size,
        nonlinearity=cfg.pred_nonlinearity,
    )


BINARY = Task(
    name="binary_classifier",
    model_class="ClassifierModel",
    data_kind=lambda cfg: "labelled",
    model_kwargs=classifier_head,
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_auprc",
    mode="max",
    optimizer="adamw",
    scheduler="exp_decay",
    prediction_keys=("prob",),
    metric_names=("val_bce", "val_auroc", "val_auprc", "val_delta_auprc"),
)
