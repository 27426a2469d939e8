"""`prot_interface` (ProteinInterfaceModel, ATOMICA-Interface): contrastive loss between a frozen complex encoder
and a trainable protein-only copy (symmetric NT-Xent, tau 0.5).

ATOMICA's ProtInterfaceTrainer: AdamW (wd 1e-3), cosine warm restarts per step; model selection by val loss.
"""

from __future__ import annotations

import torch

from atomica_ray.tasks.spec import Task
from atomica_ray.tasks import metrics as M


def forward(model, batch):
    loss = model(batch_cmplx=batch["cmplx"], batch_prot=batch["prot"])
    n = torch.tensor([float(batch["prot"]["lengths"].shape[0])])
    return loss, {"loss": loss.detach().float().reshape(1).cpu(), "n": n}  # one row per batch


def compute_metrics(r):
    # the loss depends on the batch's negatives: average the batch losses, weighted by batch size
    return {"val_loss": M.weighted_mean(r["loss"], r["n"])}


PROT_INTERFACE = Task(
    name="prot_interface",
    model_class="ProteinInterfaceModel",
    data_kind=lambda cfg: "prot_interface",
    model_kwargs=lambda cfg: {},
    forward=forward,
    metrics=compute_metrics,
    selection_metric="val_loss",
    mode="min",
    optimizer="adamw",
    scheduler="cosine_restarts",
    metric_names=("val_loss",),
)
