"""ATOMICA's denoising pretraining model (atomica-reference.md §2.5): the encoder plus noise heads and their losses.

Losses (each a batch mean; `loss` is their weighted sum):
  atom         |atom_eps * pred * scale(block_repr) - atom_score|^2 per perturbed atom, mean per item, mean
  torsion      (tor_pred - tor_score)^2, mean per item, mean
  translation  MSE(tr_eps * pred * scale(graph_repr), -tr_score)
  rotation     MSE(pred * scale(graph_repr), rot_score)
  masking      cross-entropy of the masked blocks' types
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .backbone import AtomicaBackbone, Encoding, encoder_args
from .heads import masked_block_ffn, noise_scale_ffn
from .scatter import scatter_sum


class ReturnValue(NamedTuple):
    unit_repr: torch.Tensor
    block_repr: torch.Tensor
    graph_repr: torch.Tensor
    batch_id: torch.Tensor
    block_id: torch.Tensor
    loss: torch.Tensor
    atom_loss: torch.Tensor
    atom_base: torch.Tensor
    tor_loss: torch.Tensor
    tor_base: torch.Tensor
    rotation_loss: torch.Tensor
    translation_loss: torch.Tensor
    rotation_base: torch.Tensor
    translation_base: torch.Tensor
    masked_loss: torch.Tensor
    pred_blocks: torch.Tensor | None


def mean_of_item_means(values: torch.Tensor, item: torch.Tensor, n_items: int,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over items of the per-item mean of `values` (optionally only where `mask`), with torch_scatter's
    convention that ATOMICA inherits: items after the last one with values are left out, items before it without
    values count as 0."""
    weight = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    total = scatter_sum(values * weight, item, n_items)  # [n_items]
    count = scatter_sum(weight, item, n_items)
    present = count > 0
    n_counted = (torch.arange(1, n_items + 1, device=values.device) * present).max()  # last item with values + 1
    return (total / count.clamp(min=1)).sum() / n_counted.clamp(min=1)


class DenoisePretrainModel(AtomicaBackbone):
    def __init__(self, atom_noise=True, translation_noise=True, rotation_noise=True, torsion_noise=True,
                 num_masked_block_classes=None, atom_weight=1, translation_weight=1, rotation_weight=1,
                 torsion_weight=1, mask_weight=1, modality_embedding=False, **encoder):
        super().__init__(**encoder_args(encoder, type(self).__name__), atom_noise=atom_noise,
                         translation_noise=translation_noise, rotation_noise=rotation_noise,
                         torsion_noise=torsion_noise, modality_embedding=modality_embedding)
        block_hidden_size, dropout = self.hidden_size, self.dropout
        self.atom_weight = atom_weight
        self.translation_weight = translation_weight
        self.rotation_weight = rotation_weight
        self.torsion_weight = torsion_weight
        self.mask_weight = mask_weight
        if atom_noise:
            self.top_scale_noise_ffn = noise_scale_ffn(block_hidden_size, dropout)
        if translation_noise:
            self.top_translation_scale_ffn = noise_scale_ffn(block_hidden_size, dropout)
        if rotation_noise:
            self.top_rotation_scale_ffn = noise_scale_ffn(block_hidden_size, dropout)
        self.num_masked_block_classes = num_masked_block_classes
        self.masking_objective = num_masked_block_classes is not None
        if self.masking_objective:
            self.masked_ffn = masked_block_ffn(block_hidden_size, num_masked_block_classes, dropout)

    head_modules = ("top_scale_noise_ffn", "top_translation_scale_ffn", "top_rotation_scale_ffn", "masked_ffn")

    def get_config(self) -> dict:
        return {
            **self.encoder_config(),
            "atom_noise": self.atom_noise,
            "translation_noise": self.translation_noise,
            "rotation_noise": self.rotation_noise,
            "torsion_noise": self.torsion_noise,
            "atom_weight": self.atom_weight,
            "translation_weight": self.translation_weight,
            "rotation_weight": self.rotation_weight,
            "torsion_weight": self.torsion_weight,
            "mask_weight": self.mask_weight,
            "modality_embedding": self.use_modality_embedding,
            "num_masked_block_classes": self.num_masked_block_classes,
            "model_type": type(self).__name__,
            **self.behaviour_config(),
        }

    def encode_noisy(self, Z, B, A, block_lengths, lengths, segment_ids, receptor_segment, tor_edges=None,
                     tor_batch=None, modality=None, block_features=None) -> Encoding:
        """Representations plus the raw (unscaled) noise predictions for the segment `receptor_segment` [bs]
        of each item that carries the noise."""
        batch_id = torch.repeat_interleave(torch.arange(lengths.shape[0], device=Z.device), lengths,
                                           output_size=B.shape[0])
        block_id = torch.repeat_interleave(torch.arange(B.shape[0], device=Z.device), block_lengths,
                                           output_size=A.shape[0])
        perturb_mask = (segment_ids == receptor_segment[batch_id])[block_id]  # [Na]
        return self._encode(Z, B, A, block_lengths, lengths, segment_ids, modality=modality,
                            perturb_mask=perturb_mask, tor_edges=tor_edges, tor_batch=tor_batch,
                            block_features=block_features)

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, receptor_segment=None, atom_score=None,
                atom_eps=None, tr_score=None, tr_eps=None, rot_score=None, tor_edges=None, tor_score=None,
                tor_batch=None, masked_blocks=None, masked_labels=None, modality=None,
                block_features=None) -> ReturnValue:
        if not (self.atom_noise or self.translation_noise or self.rotation_noise or self.torsion_noise):
            raise ValueError("DenoisePretrainModel needs at least one kind of noise enabled")
        if tor_edges is not None and tor_score is not None and tor_edges.shape[1] != tor_score.shape[0]:
            raise ValueError(f"tor_edges {tuple(tor_edges.shape)} and tor_score {tuple(tor_score.shape)} disagree")
        masked_idx = None if masked_blocks is None else torch.nonzero(masked_blocks).flatten()  # sync before encoding
        enc = self.encode_noisy(Z, B, A, block_lengths, lengths, segment_ids, receptor_segment, tor_edges,
                                tor_batch, modality, block_features)
        n_items = lengths.shape[0]
        zero = Z.new_zeros(())
        loss = Z.new_zeros(())
        perturb_mask = (segment_ids == receptor_segment[enc.batch_id])[enc.block_id]
        atom_item = enc.batch_id[enc.block_id]

        atom_loss = atom_base = zero
        if self.atom_noise:
            pred = enc.atom_noise * self.top_scale_noise_ffn(enc.block_repr)[enc.block_id]  # [Na, 3]
            err = (atom_eps[atom_item].unsqueeze(-1) * pred - atom_score).pow(2).sum(-1)  # [Na]
            atom_loss = mean_of_item_means(err, atom_item, n_items, perturb_mask)
            loss = loss + self.atom_weight * atom_loss
            atom_base = mean_of_item_means(atom_score.pow(2).mean(-1), atom_item, n_items, perturb_mask)

        tor_loss = tor_base = zero
        if self.torsion_noise and enc.tor_noise is not None:
            tor_loss = mean_of_item_means((enc.tor_noise - tor_score).pow(2), tor_batch, n_items)
            loss = loss + self.torsion_weight * tor_loss
            tor_base = tor_score.pow(2).mean()

        tloss = translation_base = zero
        if self.translation_noise:
            trans = enc.trans_noise * self.top_translation_scale_ffn(enc.graph_repr)  # [bs, 3]
            tloss = F.mse_loss(tr_eps.unsqueeze(-1) * trans, -tr_score)
            translation_base = tr_score.pow(2).mean()
            loss = loss + self.translation_weight * tloss

        wloss = rotation_base = zero
        if self.rotation_noise:
            rot = enc.rot_noise * self.top_rotation_scale_ffn(enc.graph_repr)  # [bs, 3]
            wloss = F.mse_loss(rot, rot_score)
            rotation_base = rot_score.pow(2).mean()
            loss = loss + self.rotation_weight * wloss

        masked_loss, pred_blocks = zero, None
        if self.masking_objective:
            logits = self.masked_ffn(enc.block_repr.index_select(0, masked_idx))  # [n_masked, n_classes]
            masked_loss = F.cross_entropy(logits, masked_labels)
            loss = loss + masked_loss * self.mask_weight
            pred_blocks = F.softmax(logits, dim=1)

        return ReturnValue(
            unit_repr=enc.unit_repr, block_repr=enc.block_repr, graph_repr=enc.graph_repr,
            batch_id=enc.batch_id, block_id=enc.block_id, loss=loss,
            atom_loss=atom_loss, atom_base=atom_base, tor_loss=tor_loss, tor_base=tor_base,
            rotation_loss=wloss, rotation_base=rotation_base, translation_loss=tloss,
            translation_base=translation_base, masked_loss=masked_loss, pred_blocks=pred_blocks,
        )


class DenoisePretrainModelWithBlockEmbedding(DenoisePretrainModel):
    """Pretraining with external per-block features mixed into the block embeddings before the block encoder.

    ATOMICA's version builds only these input-side mixers but its forward also calls output-side ones it never
    builds (atomica-reference.md §5 item 4); here the input-side mixing is all there is."""

    def __init__(self, num_projector_layers=3, projector_hidden_size=32, projector_dropout=0,
                 block_embedding_size=None, block_embedding0_size=None, block_embedding1_size=None, **options):
        super().__init__(**options)
        self.num_projector_layers = num_projector_layers
        self.projector_hidden_size = projector_hidden_size
        self.projector_dropout = projector_dropout
        self.block_embedding_size = block_embedding_size
        self.block_embedding0_size = block_embedding0_size
        self.block_embedding1_size = block_embedding1_size
        self._init_block_features("relu", block_embedding_size, block_embedding0_size, block_embedding1_size,
                                  num_projector_layers, projector_hidden_size, projector_dropout, post=False)

    head_modules = DenoisePretrainModel.head_modules

    def get_config(self) -> dict:
        config = super().get_config()
        behaviour = self.behaviour_config()
        for key in behaviour:
            config.pop(key)
        config.update({
            "block_embedding_size": self.block_embedding_size,
            "block_embedding0_size": self.block_embedding0_size,
            "block_embedding1_size": self.block_embedding1_size,
            "num_projector_layers": self.num_projector_layers,
            "projector_dropout": self.projector_dropout,
            "projector_hidden_size": self.projector_hidden_size,
            **behaviour,
        })
        return config

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, receptor_segment=None, atom_score=None,
                atom_eps=None, tr_score=None, tr_eps=None, rot_score=None, tor_edges=None, tor_score=None,
                tor_batch=None, masked_blocks=None, masked_labels=None, modality=None, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None) -> ReturnValue:
        features = {"block_embeddings": block_embeddings, "block_embeddings0": block_embeddings0,
                    "block_embeddings1": block_embeddings1}
        return super().forward(Z, B, A, block_lengths, lengths, segment_ids, receptor_segment, atom_score, atom_eps,
                               tr_score, tr_eps, rot_score, tor_edges, tor_score, tor_batch, masked_blocks,
                               masked_labels, modality, block_features=features)
