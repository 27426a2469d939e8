"""`residue_binary_classifier` (ResidueClassifierModel): one 0/1 label per non-global block (binding-site and
interface-residue prediction), BCE over every non-global block of the batch.

ATOMICA's ClassifierTrainer (as for binary_classifier): AdamW (wd 1e-3), exponential lr decay per step; model
selection by validation AUPRC over all blocks pooled, maximised. Also reported: AUROC and BCE pooled, AUPRC minus
the positive rate, and the mean over structures of each structure's own AUROC / AUPRC (structures where it is
defined: both classes present for AUROC, a positive for AUPRC).
"""

from __future__ import annotations

import numpy as np
import torch

from atomica_ray.data.vocab import GLB
from atomica_ray.tasks import metrics as M
from atomica_ray.tasks.binary import classifier_head
from atomica_ray.tasks.spec import Task, structure_inputs


def block_structures(batch) -> torch.Tensor:
    """[n_non_global_blocks] the dataset index of each block's item (batch position when not given)."""
    lengths = batch["lengths"]
    batch_id = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # [Nb]
    owner = batch["item_index"][batch_id] if "item_index" in batch else batch_id
    return owner[batch["B"] != GLB]


def forward(model, batch):
    loss, prob = model(**structure_inputs(batch), label=batch["label"])
    return loss, {"prob": prob.detach().float().reshape(-1), "label": batch["label"].float(),
                  "structure": block_structures(batch)}


def compute_metrics(r):
    prob, label, structure = r["prob"], r["label"], r["structure"]
    auprc = M.auprc(prob, label)
    return {
        "val_bce": M.bce(prob, label),
        "val_auroc": M.auroc(prob, label),
        "val_auprc": auprc,
        "val_delta_auprc": auprc - float(np.mean(label)) if len(label) else float("nan"),
        "val_auroc_per_structure": M.per_group(M.auroc, prob, label, structure)[0],
        "val_auprc_per_structure": M.per_group(M.auprc, prob, label, structure)[0],
    }


RESIDUE = Task(
    name="residue_binary_classifier",
    model_class="ResidueClassifierModel",
    data_kind=lambda cfg: "residue",
    model_kwargs=classifier_head,
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_auprc",
    mode="max",
    optimizer="adamw",
    scheduler="exp_decay",
    metric_names=("val_bce", "val_auroc", "val_auprc", "val_delta_auprc", "val_auroc_per_structure",
                  "val_auprc_per_structure"),
    label_kind="block",
)
