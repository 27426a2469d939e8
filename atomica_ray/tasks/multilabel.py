"""`multilabel_classifier` (MultiLabelClassifierModel): a float label vector of `num_classifier_classes` per item,
sigmoid outputs, BCE (with `pos_weight` under `weighted_loss`) or the multi-label focal loss (`use_focal_loss`).

ATOMICA's MultiClassClassifierTrainer: AdamW (wd 1e-3), exponential lr decay per step; model selection by the mean
over labels of AUPRC minus the label's positive rate (`val_delta_auprc`), maximised, or by macro F1 at 0.5
(`multiclass_metric: f1_macro`). Also reported: macro and micro AUPRC, macro AUROC, BCE.
"""

from __future__ import annotations

import numpy as np

from atomica_ray.tasks import metrics as M
from atomica_ray.tasks.spec import Task, per_class_head, per_class_selection, structure_inputs


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"prob": prob.detach().float(), "label": batch["label"].float()}  # [bs, C], [bs, C]


def compute_metrics(r):
    prob, label = r["prob"], r["label"]
    macro = M.macro_auprc_multilabel(prob, label)
    return {
        "val_bce": M.bce(prob.reshape(-1), label.reshape(-1)),
        "val_macro_auprc": macro,
        "val_micro_auprc": M.micro_auprc_multilabel(prob, label),
        "val_delta_auprc": macro - float(np.mean(label)),  # mean positive rate over labels = mean(label)
        "val_macro_auroc": M.macro_auroc_multilabel(prob, label),
        "val_f1_macro": M.f1_macro_multilabel(prob, label),
    }


def prepare(model, cfg, train):
    """`weighted_loss`: pos_weight = negatives / positives of each label over the training set."""
    if cfg.weighted_loss:
        from atomica_ray.models.losses import pos_weights

        model.set_class_weights(pos_weights(np.stack(train.column_values("label_vector"))))


MULTILABEL = Task(
    name="multilabel_classifier",
    model_class="MultiLabelClassifierModel",
    data_kind=lambda cfg: "multilabel",
    model_kwargs=per_class_head,
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_delta_auprc",
    mode="max",
    optimizer="adamw",
    scheduler="exp_decay",
    metric_names=("val_bce", "val_macro_auprc", "val_micro_auprc", "val_delta_auprc", "val_macro_auroc",
                  "val_f1_macro"),
    select=per_class_selection,
    prepare=prepare,
    label_kind="vector",
)
