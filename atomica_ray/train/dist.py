"""Data-parallel collectives of the engine (a no-op on one worker).

The engine does not wrap the model in DistributedDataParallel. DDP all-reduces gradients inside `backward()`, so
a rank that skips a batch (out of memory, non-finite loss) leaves the others waiting forever. Here each rank runs
forward/backward alone, then ONE all-reduce per optimizer step carries the gradients together with the ranks'
"bad step" flags and loss sums: every rank sees the same reduced buffer and takes the same decision, and
parameters a batch leaves unused need no `find_unused_parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_state(model: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if is_distributed():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


@dataclass
class StepSummary:
    oom: int  # ranks that ran out of memory in this step
    nonfinite: int  # ranks whose loss was not finite
    loss_sum: float  # sum over ranks and micro-batches of the loss
    loss_count: float  # number of micro-batch losses in loss_sum
    grads_finite: bool

    @classmethod
    def read(cls, flags: torch.Tensor | list[float]) -> "StepSummary":
        """The host's view of `reduce_step`'s flags (from the device: a host sync)."""
        n_oom, n_nonfinite, total, count, finite = flags.tolist() if isinstance(flags, torch.Tensor) else flags
        return cls(int(n_oom), int(n_nonfinite), total, count, bool(finite))


@torch.no_grad()
def reduce_step(params: list[torch.nn.Parameter], oom, nonfinite, loss_sum, loss_count,
                device: torch.device) -> torch.Tensor:
    """Sum the gradients of `params` over ranks and agree on the step's flags, in one all-reduce, without a
    host sync. (Each rank scaled its losses by 1/(batches of the step over all ranks), so the sum is the step's
    mean gradient, whatever the number of ranks and however the step's batches were dealt to them.) The flags and loss sums may be Python numbers or 0-d device tensors. Returns the step's flags on the
    device, [ranks out of memory, ranks with a non-finite loss, loss sum, loss count, gradients all finite]
    (`bad_step` decides from them on the device, `StepSummary.read` brings them to the host).

    A parameter without a gradient contributes zeros, so every rank's buffer has the same layout.
    """
    world = dist.get_world_size() if is_distributed() else 1
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    sizes = [g.numel() for g in grads]
    # torch.full, not torch.tensor: a copy from host memory would wait for the queued kernels
    flags = [v.float().reshape(1) if isinstance(v, torch.Tensor) else torch.full((1,), float(v), device=device)
             for v in (oom, nonfinite, loss_sum, loss_count)]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + flags)
    if world > 1:
        dist.all_reduce(flat)
    grad_flat = flat[:-4]  # [n_params]
    for p, g in zip(params, torch.split(grad_flat, sizes)):
        p.grad = g.view_as(p).to(p.dtype)  # a bad step is skipped by the optimizer, on the device
    finite = torch.isfinite(grad_flat).all().float().reshape(1)
    return torch.cat((flat[-4:], finite))  # [5]


def bad_step(flags: torch.Tensor, check_grads: bool) -> torch.Tensor:
    """1.0 where the step must be skipped (a rank out of memory, a non-finite loss, or, if `check_grads`,
    non-finite gradients), else 0.0: the `found_inf` a fused Adam(W) takes.  # [] on the device"""
    bad = (flags[0] + flags[1]) > 0
    if check_grads:
        bad = bad | (flags[4] == 0)
    return bad.float()


class HostCopy:
    """A device tensor on its way to host memory: the copy is queued now, behind the kernels that compute it, and
    `read()` waits for that copy only. (`.tolist()` on the device tensor would queue the copy behind everything
    queued since, e.g. the next step's backward, and leave the GPU idle while the host catches up.)"""

    def __init__(self, values: torch.Tensor):
        values = values.detach()
        self.ready = None
        if values.is_cuda:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host = values.clone()

    def read(self) -> list:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small things: metrics records, RNG states)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
