"""ATOMICA's graph-level downstream models (`models/classifier_model.py`): a head on `graph_repr`."""

from __future__ import annotations

import torch.nn.functional as F

from .heads import act_dropout_linear, activation_name, relu_linear
from .losses import focal_multiclass
from .prediction import PredictionModel


class ClassifierModel(PredictionModel):
    """Binary classification: BCE-with-logits loss, sigmoid probabilities."""

    def __init__(self, num_pred_layers=3, nonlinearity="relu", pred_dropout=0.0, pred_hidden_size=32, **kwargs):
        super().__init__(**kwargs)
        self.num_pred_layers = num_pred_layers
        self.pred_dropout = pred_dropout
        self.pred_hidden_size = pred_hidden_size
        self.nonlinearity = activation_name(nonlinearity)
        self.classifier_ffn = act_dropout_linear(self.nonlinearity, self.hidden_size, pred_hidden_size, 1,
                                                 num_pred_layers, pred_dropout)

    head_modules = ("classifier_ffn",)

    def head_config(self) -> dict:
        return {"num_pred_layers": self.num_pred_layers, "nonlinearity": self.nonlinearity,
                "pred_dropout": self.pred_dropout, "pred_hidden_size": self.pred_hidden_size}

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids)
        logits = self.classifier_ffn(enc.graph_repr).squeeze(-1)  # [bs]
        return F.binary_cross_entropy_with_logits(logits, label), F.sigmoid(logits)

    def infer(self, batch, extra_info=False):
        self.eval()
        out = super().infer(batch)
        pred = F.sigmoid(self.classifier_ffn(out.graph_repr))  # [bs, 1], as ATOMICA returns it
        return (pred, out) if extra_info else pred


class MultiClassClassifierModel(PredictionModel):
    """Multi-class classification: cross-entropy loss, softmax probabilities."""

    def __init__(self, num_classes, loss_type="cross_entropy", focal_alpha=None, focal_gamma=2.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.loss_type, self.focal_alpha, self.focal_gamma = loss_type, focal_alpha, focal_gamma  # losses.py
        self.class_weights = None  # --weighted_loss, from the training labels; not in the state dict
        h = self.hidden_size
        self.classifier_ffn = relu_linear(h, h, h, h // 2, num_classes)

    head_modules = ("classifier_ffn",)

    def head_config(self) -> dict:
        if self.loss_type == "cross_entropy":  # the keys older ATOMICA does not know stay out of config.json
            return {"num_classes": self.num_classes}
        return {"num_classes": self.num_classes, "loss_type": self.loss_type, "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma}

    def set_class_weights(self, weights):
        self.class_weights = weights

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids)
        logits = self.classifier_ffn(enc.graph_repr)  # [bs, num_classes]
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if self.loss_type == "focal":  # ATOMICA: --weighted_loss replaces the focal alpha by the class weights
            alpha = weight if weight is not None else self.focal_alpha
            loss = focal_multiclass(logits, label, self.focal_gamma, alpha)
        else:
            loss = F.cross_entropy(logits, label, weight=weight)
        return loss, F.softmax(logits, dim=1)

    def infer(self, batch, extra_info=False):
        self.eval()
        out = super().infer(batch)
        pred = F.softmax(self.classifier_ffn(out.graph_repr), dim=1)
        return (pred, out) if extra_info else pred


class RegressionPredictor(PredictionModel):
    """Regression of one value per item from `graph_repr`: MSE loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        h = self.hidden_size
        self.energy_ffn = act_dropout_linear("relu", h, h, 1, 3, self.dropout)

    head_modules = ("energy_ffn",)

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, label, block_embeddings=None,
                block_embeddings0=None, block_embeddings1=None):
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids)
        pred = self.energy_ffn(enc.graph_repr).squeeze(-1)  # [bs]
        return F.mse_loss(pred, label), pred

    def infer(self, batch, extra_info=False):
        self.eval()
        out = super().infer(batch)
        pred = self.energy_ffn(out.graph_repr).squeeze(-1)
        return (pred, out) if extra_info else pred
