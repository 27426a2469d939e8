"""ATOMICA's `MultiLabelClassifierModel` (`models/classifier_model.py`): `num_classes` independent sigmoid outputs
from `graph_repr`, BCE (optionally with `pos_weight`, `--weighted_loss`) or the multi-label focal loss
(`--use_focal_loss`, losses.py).

The head has MultiClassClassifierModel's layout ([ReLU, Linear] h -> h -> h -> h/2 -> num_classes, `classifier_ffn.*`
in the state dict) and the config keys ATOMICA writes for it (`num_classes, loss_type, focal_alpha, focal_gamma,
pocket_embedding_size`), so ATOMICA's loader rebuilds it from our config.json. Pocket embeddings (ATOMICA's
`pocket_embedding_size`) are not implemented: a config that sets one is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads import relu_linear
from .losses import focal_sigmoid
from .prediction import PredictionModel

LOSS_TYPES = ("binary_cross_entropy", "focal")


class MultiLabelClassifierModel(PredictionModel):
    def __init__(self, num_classes, loss_type="binary_cross_entropy", focal_alpha=None, focal_gamma=2.0,
                 pocket_embedding_size=None, **kwargs):
        super().__init__(**kwargs)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"MultiLabelClassifierModel: loss_type {loss_type!r} is not one of {LOSS_TYPES}")
        if pocket_embedding_size is not None:
            raise ValueError("MultiLabelClassifierModel: pocket_embedding_size is set, but pocket embeddings are "
                             "not implemented in atomica-ray")
        self.num_classes = num_classes
        self.loss_type = loss_type
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.pocket_embedding_size = None
        self.pos_weight = None  # [num_classes] from the training labels (--weighted_loss); not in the state dict
        h = self.hidden_size
        self.classifier_ffn = relu_linear(h, h, h, h // 2, num_classes)

    head_modules = ("classifier_ffn",)

    def head_config(self) -> dict:
        return {"num_classes": self.num_classes, "loss_type": self.loss_type, "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma}

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """ATOMICA's name: for this model the weights are BCE's `pos_weight` (and focal loss's alpha)."""
        if weights.shape != (self.num_classes,):
            raise ValueError(f"pos_weight must have shape ({self.num_classes},), got {tuple(weights.shape)}")
        self.pos_weight = weights

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "focal":
            # ATOMICA: --weighted_loss replaces the focal alpha by the positive weights
            alpha = self.pos_weight if self.pos_weight is not None else self.focal_alpha
            return focal_sigmoid(logits, label, self.focal_gamma, alpha)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, label, pos_weight=pos_weight)

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids)
        logits = self.classifier_ffn(enc.graph_repr)  # [bs, num_classes]
        return self.loss(logits, label), torch.sigmoid(logits)

    def infer(self, batch, extra_info=False):
        self.eval()
        enc = self.encode(batch)
        pred = torch.sigmoid(self.classifier_ffn(enc.graph_repr))
        return (pred, enc) if extra_info else pred
