"""`multiclass_classifier` (MultiClassClassifierModel): cross-entropy over `num_classifier_classes` classes, or the
focal loss (`use_focal_loss`), with inverse-frequency class weights under `weighted_loss`.

ATOMICA's MultiClassClassifierTrainer: AdamW (wd 1e-3), exponential lr decay per step; model selection by the mean
per-class AUPRC minus the mean class frequency (`val_delta_auprc`), maximised, or by macro F1
(`multiclass_metric: f1_macro`) (current ATOMICA; the 2025 release selected by val CE: `selection_metric: val_ce`).
Accuracy and the mean per-class AUPRC (`val_macro_auprc`) are logged too.
"""

from __future__ import annotations

import numpy as np

from atomica_ray.tasks import metrics as M
from atomica_ray.tasks.spec import Task, labels_within, per_class_head, per_class_selection, structure_inputs


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"prob": prob.detach().float(), "label": batch["label"].long()}  # [bs, C], [bs]


def compute_metrics(r):
    prob, label = r["prob"], r["label"]
    macro = M.macro_auprc(prob, label)
    return {
        "val_ce": M.cross_entropy(prob, label),
        "val_accuracy": M.accuracy(prob.argmax(axis=1), label),
        "val_macro_auprc": macro,
        # ATOMICA's frequency baseline: bincount(label) / n, averaged over the classes up to the largest label
        "val_delta_auprc": macro - float(np.mean(np.bincount(label.astype(np.int64)) / max(len(label), 1))),
        "val_f1_macro": M.f1_macro_multiclass(prob.argmax(axis=1), label),
    }


def check_labels(labels, cfg):
    n = cfg.num_classifier_classes
    return labels_within(0, n - 1, f"a class index 0..{n - 1} (num_classifier_classes {n})")(labels, cfg)


def prepare(model, cfg, train):
    """`weighted_loss`: per-class weights 1 / count over the training set, scaled to sum to the class count."""
    if cfg.weighted_loss:
        from atomica_ray.models.losses import class_weights

        model.set_class_weights(class_weights(train.index["label"], cfg.num_classifier_classes))


MULTICLASS = Task(
    name="multiclass_classifier",
    model_class="MultiClassClassifierModel",
    data_kind=lambda cfg: "multiclass",
    model_kwargs=per_class_head,
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_delta_auprc",
    mode="max",
    optimizer="adamw",
    scheduler="exp_decay",
    prediction_keys=("prob",),
    check_labels=check_labels,
    metric_names=("val_ce", "val_accuracy", "val_macro_auprc", "val_delta_auprc", "val_f1_macro"),
    select=per_class_selection,
    prepare=prepare,
)
