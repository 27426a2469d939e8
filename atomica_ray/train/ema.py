"""Exponential moving average of model weights (Polyak averaging), used for validation when enabled."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weight, after every optimizer step.

    Floating-point parameters and buffers are averaged; integer buffers are copied. `swapped_in(model)` puts the
    averaged weights into the model for the duration of a `with` block (validation, saving) and restores the
    trained weights afterwards.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """`skip`: a device flag (1.0: the optimizer skipped this step, leave the averages as they are)."""
        keep = None if skip is None else skip.bool()
        weight = 1.0 - self.decay if skip is None else (1.0 - self.decay) * (1.0 - skip)  # once, not per tensor
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.dtype.is_floating_point:
                shadow.lerp_(value.detach(), weight if skip is None else weight.to(shadow.dtype))
            else:
                shadow.copy_(value if keep is None else torch.where(keep, shadow, value))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(trained)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        # the decay of the current config wins (PBT may mutate it); only the averages are restored
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
