"""ATOMICA's `AffinityPredictor` (PDBBind): a per-block energy, summed over each item's blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.vocab import GLB
from .heads import act_dropout_linear, activation_name
from .prediction import PredictionModel
from .scatter import scatter_sum


class AffinityPredictor(PredictionModel):
    """pK = sum over blocks of FFN(block_repr) (global blocks count 0 unless global message passing); MSE loss.

    Optional external per-block features (`block_embedding*_size`) are projected and mixed into the block state
    before and after the block encoder. The attention pooling is unused and frozen."""

    def __init__(self, num_affinity_pred_layers=3, nonlinearity="relu", affinity_pred_dropout=0.0,
                 affinity_pred_hidden_size=32, num_projector_layers=3, projector_hidden_size=256,
                 projector_dropout=0.0, block_embedding_size=None, block_embedding0_size=None,
                 block_embedding1_size=None, **kwargs):
        super().__init__(**kwargs)
        self.nonlinearity = activation_name(nonlinearity)
        self.num_affinity_pred_layers = num_affinity_pred_layers
        self.affinity_pred_dropout = affinity_pred_dropout
        self.affinity_pred_hidden_size = affinity_pred_hidden_size
        self.num_projector_layers = num_projector_layers
        self.projector_hidden_size = projector_hidden_size
        self.projector_dropout = projector_dropout
        self.block_embedding_size = block_embedding_size
        self.block_embedding0_size = block_embedding0_size
        self.block_embedding1_size = block_embedding1_size
        self.energy_ffn = act_dropout_linear(self.nonlinearity, self.hidden_size, affinity_pred_hidden_size, 1,
                                             num_affinity_pred_layers, affinity_pred_dropout)
        self._init_block_features(self.nonlinearity, block_embedding_size, block_embedding0_size,
                                  block_embedding1_size, num_projector_layers, projector_hidden_size,
                                  projector_dropout, post=True)
        self.attention_pooling.requires_grad_(False)

    head_modules = ("energy_ffn", "pre_projector", "pre_mixing_ffn", "post_projector", "post_mixing_ffn",
                    "pre_projector0", "pre_mixing_ffn0", "pre_projector1", "pre_mixing_ffn1",
                    "post_projector0", "post_mixing_ffn0", "post_projector1", "post_mixing_ffn1")
    frozen_modules = ("attention_pooling",)

    def head_config(self) -> dict:
        return {
            "nonlinearity": self.nonlinearity,
            "num_affinity_pred_layers": self.num_affinity_pred_layers,
            "affinity_pred_dropout": self.affinity_pred_dropout,
            "affinity_pred_hidden_size": self.affinity_pred_hidden_size,
            "num_projector_layers": self.num_projector_layers,
            "projector_dropout": self.projector_dropout,
            "projector_hidden_size": self.projector_hidden_size,
            "block_embedding_size": self.block_embedding_size,
            "block_embedding0_size": self.block_embedding0_size,
            "block_embedding1_size": self.block_embedding1_size,
        }

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        features = {"block_embeddings": block_embeddings, "block_embeddings0": block_embeddings0,
                    "block_embeddings1": block_embeddings1}
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids, block_features=features,
                           return_graph_repr=False)
        block_energy = self.energy_ffn(enc.block_repr).squeeze(-1)  # [Nb]
        if not self.global_message_passing:
            block_energy = torch.where(B == GLB, torch.zeros_like(block_energy), block_energy)
        pred = scatter_sum(block_energy, enc.batch_id, lengths.shape[0])  # [bs]
        return F.mse_loss(pred, label), pred

    def infer(self, batch):
        self.eval()
        return self.forward(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                            lengths=batch["lengths"], segment_ids=batch["segment_ids"], label=batch["label"],
                            block_embeddings=batch.get("block_embeddings"),
                            block_embeddings0=batch.get("block_embeddings0"),
                            block_embeddings1=batch.get("block_embeddings1"))[1]
