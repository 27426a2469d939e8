"""Denoising pretraining (DenoisePretrainModel): `pretrain_torsion`, `pretrain_gaussian` and
`pretrain_torsion_masking` (noise + block masking, the released ATOMICA).

ATOMICA's PretrainTrainer / PretrainMaskingNoisingTrainer: Adam (wd 1e-3), cosine warm restarts per step; model
selection by the total val loss; each term's loss and the mask accuracy logged.
"""

from __future__ import annotations

import torch

from atomica_ray.data.vocab import get_vocab
from atomica_ray.tasks.spec import Task, structure_inputs
from atomica_ray.tasks import metrics as M

TERMS = ("atom_loss", "translation_loss", "rotation_loss", "tor_loss", "masked_loss")
NOISE_KEYS = ("atom_score", "atom_eps", "tr_score", "tr_eps", "rot_score", "tor_score", "tor_edges", "tor_batch",
              "masked_blocks", "masked_labels", "modality")


def forward(model, batch):
    noise = {k: batch[k] for k in NOISE_KEYS if k in batch}
    out = model(**structure_inputs(batch), receptor_segment=batch["noisy_segment"], **noise)
    n = float(batch["lengths"].shape[0])
    records = {"n": torch.tensor([n]), "loss": out.loss.detach().float().reshape(1).cpu()}
    for term in TERMS:  # one row per batch: the model returns batch means
        records[term] = torch.as_tensor(getattr(out, term)).detach().float().reshape(1).cpu()
    if out.pred_blocks is not None:
        records["mask_correct"] = (out.pred_blocks.detach().argmax(1) == batch["masked_labels"]).float()
    return out.loss, records


def compute_metrics(r):
    metrics = {"val_loss": M.weighted_mean(r["loss"], r["n"])}
    for term in TERMS:
        metrics["val_" + term] = M.weighted_mean(r[term], r["n"])
    if "mask_correct" in r:
        metrics["val_mask_acc"] = float(r["mask_correct"].mean())
    return metrics


def denoise_kwargs(cfg, masking: bool):
    return dict(
        atom_noise=cfg.atom_noise != 0,
        translation_noise=cfg.translation_noise != 0,
        rotation_noise=cfg.rotation_noise != 0,
        torsion_noise=cfg.torsion_noise != 0,
        atom_weight=cfg.atom_weight,
        translation_weight=cfg.tr_weight,
        rotation_weight=cfg.rot_weight,
        torsion_weight=cfg.tor_weight,
        mask_weight=cfg.mask_weight,
        modality_embedding=cfg.modality_embedding,
        num_masked_block_classes=get_vocab(cfg.fragmentation_method).num_masked_classes if masking else None,
    )


def _pretrain(name, kind, masking):
    return Task(
        name=name,
        model_class="DenoisePretrainModel",
        data_kind=lambda cfg: kind,
        model_kwargs=lambda cfg: denoise_kwargs(cfg, masking),
        forward=forward,
        metrics=compute_metrics,
        selection_metric="val_loss",
        mode="min",
        optimizer="adam",
        scheduler="cosine_restarts",
        metric_names=("val_loss", *("val_" + t for t in TERMS), "val_mask_acc"),
    )


PRETRAIN_TORSION = _pretrain("pretrain_torsion", "pretrain_torsion", masking=False)
PRETRAIN_GAUSSIAN = _pretrain("pretrain_gaussian", "pretrain_atom", masking=False)
PRETRAIN_TORSION_MASKING = _pretrain("pretrain_torsion_masking", "pretrain_masked_torsion", masking=True)
