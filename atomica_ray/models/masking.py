"""ATOMICA's `MaskedNodeModel`: predicts the type of masked blocks from their representation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads import masked_block_ffn
from .prediction import PredictionModel


class MaskedNodeModel(PredictionModel):
    def __init__(self, num_masked_block_classes, **encoder):
        super().__init__(**encoder)
        self.num_masked_block_classes = num_masked_block_classes
        self.masked_ffn = masked_block_ffn(self.hidden_size, num_masked_block_classes, self.dropout)

    head_modules = ("masked_ffn",)

    def get_config(self) -> dict:
        # ATOMICA writes the head argument before model_type for this class
        return {**self.encoder_config(), "num_masked_block_classes": self.num_masked_block_classes,
                "model_type": type(self).__name__, **self.behaviour_config()}

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, masked_blocks, masked_labels,
                return_logits=False):
        masked_idx = torch.nonzero(masked_blocks).flatten() if masked_blocks.dtype == torch.bool else masked_blocks
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids, return_graph_repr=False)
        logits = self.masked_ffn(enc.block_repr.index_select(0, masked_idx))  # [n_masked, n_classes]
        loss = F.cross_entropy(logits, masked_labels)
        return (loss, logits) if return_logits else (loss, F.softmax(logits, dim=1))

    def infer(self, batch):
        self.eval()
        return self.forward(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                            lengths=batch["lengths"], segment_ids=batch["segment_ids"],
                            masked_blocks=batch["masked_blocks"], masked_labels=batch["masked_labels"])[1]
