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

A relaunch that changes the run's length (a larger `max_epoch`) changes `total_steps`. The exponential decay then
restarts from where it stopped: from the lr of the last step taken, `anchor_lr` at `anchor_step`, it decays to
final_lr at the new last step, so lr stays within [final_lr, lr] (`stretch`).
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


def lr_at(step: int, cfg: TrainConfig, kind: str, total_steps: int, anchor_step: int = 0,
          anchor_lr: float | None = None) -> float:
    lr, final = cfg.lr, cfg.final_lr_value
    if kind == "exp_decay" and anchor_lr is not None:
        span = total_steps - anchor_step
        value = final if span <= 0 else anchor_lr * math.exp(math.log(final / anchor_lr) * (step + 1 - anchor_step)
                                                             / span)
        value = min(max(value, final), lr)
    elif kind == "exp_decay":
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


def stretch(cfg: TrainConfig, kind: str, state, new_total: int) -> str | None:
    """Re-anchor `state`'s schedule for a run whose total steps changed from `state.total_steps` to `new_total`;
    returns what changed, in words (None when nothing did)."""
    old_total, step = state.total_steps, state.global_step
    if new_total == old_total:
        return None
    state.total_steps = new_total
    if kind != "exp_decay" or cfg.final_lr_value == cfg.lr:
        return f"the run's length changed ({old_total} -> {new_total} optimizer steps); the {kind} schedule " \
               "does not depend on it"
    last = lr_at(max(step - 1, 0), cfg, kind, old_total, state.schedule_from_step, state.schedule_from_lr) \
        if step else cfg.lr
    state.schedule_from_step, state.schedule_from_lr = step, last
    return (f"the run's length changed from {old_total} to {new_total} optimizer steps: the exp_decay schedule "
            f"now decays from {last:.3g} (step {step}) to final_lr {cfg.final_lr_value:.3g} at step {new_total} "
            f"instead of step {old_total}")


def apply_hparams(optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float) -> None:
    """Put this config's lr and weight decay on every parameter group (also after loading a donor's state); the
    `_no_weight_decay` group keeps 0."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = 0.0 if group.get("no_weight_decay") else cfg.weight_decay
