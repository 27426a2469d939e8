"""ATOMICA's `ResidueClassifierModel` (`models/classifier_model.py`): the binary classifier head applied to every
block's `block_repr`, BCE over the non-global blocks (binding-site / interface-residue prediction).

Same head, constructor arguments and config keys as `ClassifierModel` (`classifier_ffn.*` in the state dict), so
ATOMICA's loader builds it from our config.json and loads its weights strictly. The label is one 0/1 per non-global
block, in block order, concatenated over the batch's items.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..data.vocab import GLB
from .classifier import ClassifierModel


class ResidueClassifierModel(ClassifierModel):
    # ATOMICA freezes the attention pooling when fine-tuning this head: graph_repr is not used
    frozen_modules = ("attention_pooling",)

    def block_logits(self, Z, B, A, block_lengths, lengths, segment_ids):
        """[n_non_global_blocks] logits, blocks in batch order."""
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids, return_graph_repr=False)
        return self.classifier_ffn(enc.block_repr).squeeze(-1)[B != GLB]

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        logits = self.block_logits(Z, B, A, block_lengths, lengths, segment_ids)
        return F.binary_cross_entropy_with_logits(logits, label), F.sigmoid(logits)

    def infer(self, batch, extra_info=False):
        self.eval()
        enc = self.encode(batch)
        pred = F.sigmoid(self.classifier_ffn(enc.block_repr)[batch["B"] != GLB])  # [n_non_global, 1], as ATOMICA
        return (pred, enc) if extra_info else pred
