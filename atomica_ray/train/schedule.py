"""Optimizer and learning-rate schedule.

The learning rate is a pure function of the optimizer step, `lr(step) = cfg.lr * warmup(step) * decay(step)`,
set on the optimizer before every step. A resumed run therefore needs only the step count, and a run started
from another run's checkpoint (`init_checkpoint`, PBT) gets this config's lr whatever the donor's optimizer held.

Decays, as ATOMICA's trainers use them (per optimizer step):
- exp_decay: lr * (final_lr / lr) ** ((step + 1) / total_steps) — ATOMICA's LambdaLR(exp(log_alpha * (step+1))).
- cosine_restarts: CosineAnnealingWarmRestarts(T_0=cycle_steps, T_mult=1, eta_min=final_lr):
  final_lr + (lr - final_lr) * (1 + cos(pi * (step mod cycle_steps) / cycle_steps)) / 2.
- constant.
Warmup (ours; ATOMICA's warmup code is never called): linear, factor (step + 1) / lr_warmup_steps.
"""

from __future__ import annotations

import math

import torch

from atomica_ray.train.config import TrainConfig


def param_groups(params) -> list[dict]:
    """Parameters marked `_no_weight_decay = True` (ATOMICA marks its long-range edge gate so) in a group of their
    own that `apply_hparams` never decays; without any, one group (the optimizer state of older checkpoints)."""
    params = list(params)
    exempt = [p for p in params if getattr(p, "_no_weight_decay", False)]
    if not exempt:
        return [{"params": params}]
    return [{"params": [p for p in params if not getattr(p, "_no_weight_decay", False)]},
            {"params": exempt, "weight_decay": 0.0, "no_weight_decay": True}]


def build_optimizer(params, cfg: TrainConfig, default: str) -> torch.optim.Optimizer:
    kind = cfg.optimizer or default
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    # fused: one kernel per step, and it can skip a bad step on the device (`found_inf`), so the loop need not wait
    # for the GPU to decide
    return cls(param_groups(params), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def lr_at(step: int, cfg: TrainConfig, kind: str, total_steps: int) -> float:
    lr, final = cfg.lr, cfg.final_lr_value
    if kind == "exp_decay":
        value = lr * math.exp(math.log(final / lr) * (step + 1) / max(total_steps, 1))
    elif kind == "cosine_restarts":
        t = step % cfg.cycle_steps
        value = final + (lr - final) * (1 + math.cos(math.pi * t / cfg.cycle_steps)) / 2
    elif kind == "constant":
        value = lr
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    if cfg.lr_warmup_steps > 0:
        value *= min(1.0, (step + 1) / cfg.lr_warmup_steps)
    return value


def apply_hparams(optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float) -> None:
    """Put this config's lr and weight decay on every parameter group (also after loading a donor's state); the
    `_no_weight_decay` group keeps 0."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = 0.0 if group.get("no_weight_decay") else cfg.weight_decay
