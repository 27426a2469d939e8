"""ATOMICA's `PredictionModel`: the encoder alone, returning the three representations."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backbone import AtomicaBackbone, encoder_args


class PredictionReturnValue(NamedTuple):
    unit_repr: torch.Tensor
    block_repr: torch.Tensor
    graph_repr: torch.Tensor | None
    batch_id: torch.Tensor
    block_id: torch.Tensor


class PredictionModel(AtomicaBackbone):
    """Encoder without denoising heads; the base of the downstream models."""

    def __init__(self, **encoder):
        super().__init__(**encoder_args(encoder, type(self).__name__))

    # the task head of each subclass; partial fine-tuning trains only these modules
    head_modules: tuple[str, ...] = ()

    def head_config(self) -> dict:
        """Constructor arguments of the task head (written after `model_type`, as ATOMICA does)."""
        return {}

    def get_config(self) -> dict:
        return {**self.encoder_config(), "model_type": type(self).__name__, **self.head_config(),
                **self.behaviour_config()}

    def forward(self, Z, B, A, block_lengths, lengths, segment_ids, return_graph_repr=True) -> PredictionReturnValue:
        enc = self._encode(Z, B, A, block_lengths, lengths, segment_ids, return_graph_repr=return_graph_repr)
        return PredictionReturnValue(enc.unit_repr, enc.block_repr, enc.graph_repr, enc.batch_id, enc.block_id)

    def infer(self, batch: dict) -> PredictionReturnValue:
        self.eval()
        return self.forward(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                            lengths=batch["lengths"], segment_ids=batch["segment_ids"])
