"""`masking` (MaskedNodeModel): predict the type of masked blocks.

ATOMICA's MaskingTrainer: Adam (wd 1e-3), cosine warm restarts per step; model selection by val CE; accuracy logged.
"""

from __future__ import annotations

import torch

from atomica_ray.data.vocab import get_vocab
from atomica_ray.tasks.spec import Task, structure_inputs
from atomica_ray.tasks import metrics as M


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), masked_blocks=batch["masked_blocks"],
                       masked_labels=batch["masked_labels"])
    label = batch["masked_labels"]
    prob = prob.detach().float()  # [n_masked, n_classes]
    p_true = prob.gather(1, label.view(-1, 1)).squeeze(1).clamp_min(M.EPS)
    return loss, {"mask_ce": -torch.log(p_true), "mask_correct": (prob.argmax(1) == label).float()}


def compute_metrics(r):
    return {"val_ce": float(r["mask_ce"].mean()), "val_accuracy": float(r["mask_correct"].mean())}


MASKING = Task(
    name="masking",
    model_class="MaskedNodeModel",
    data_kind=lambda cfg: "pretrain_masked",
    model_kwargs=lambda cfg: dict(num_masked_block_classes=get_vocab(cfg.fragmentation_method).num_masked_classes),
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_ce",
    mode="min",
    optimizer="adam",
    scheduler="cosine_restarts",
    metric_names=("val_ce", "val_accuracy"),
)
