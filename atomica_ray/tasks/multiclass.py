"""`multiclass_classifier` (MultiClassClassifierModel): cross-entropy over `num_classifier_classes` classes.

ATOMICA's MultiClassClassifierTrainer: AdamW (wd 1e-3), exponential lr decay per step; model selection by val CE;
per-class AUPRC logged (here their mean, `val_macro_auprc`).
"""

from __future__ import annotations

from atomica_ray.tasks.spec import Task, labels_within, structure_inputs
from atomica_ray.train import metrics as M


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"prob": prob.detach().float(), "label": batch["label"].long()}  # [bs, C], [bs]


def compute_metrics(r):
    prob, label = r["prob"], r["label"]
    return {
        "val_ce": M.cross_entropy(prob, label),
        "val_accuracy": M.accuracy(prob.argmax(axis=1), label),
        "val_macro_auprc": M.macro_auprc(prob, label),
    }


def check_labels(labels, cfg):
    n = cfg.num_classifier_classes
    return labels_within(0, n - 1, f"a class index 0..{n - 1} (num_classifier_classes {n})")(labels, cfg)


MULTICLASS = Task(
    name="multiclass_classifier",
    model_class="MultiClassClassifierModel",
    data_kind=lambda cfg: "multiclass",
    model_kwargs=lambda cfg: dict(num_classes=cfg.num_classifier_classes),
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_ce",
    mode="min",
    optimizer="adamw",
    scheduler="exp_decay",
    prediction_keys=("prob",),
    check_labels=check_labels,
)
