"""Scatter reductions in native torch (the torch_scatter semantics ATOMICA relies on)."""

from __future__ import annotations

import torch


class _ScatterSum(torch.autograd.Function):
    """index_add's sum, whose backward keeps only the index. torch's index_add saves its source for backward (for a
    shape check): a copy of every message-passing layer's [E, D] messages held until backward, ~0.4 GiB of a
    1000-block training step (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return src.new_zeros((dim_size, *src.shape[1:])).index_add_(0, index, src)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """out[i] = sum of src[j] over j with index[j] == i; rows with no entry are 0.  # [dim_size, ...]"""
    return _ScatterSum.apply(src, index, dim_size)


def scatter_count(index: torch.Tensor, dim_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Number of entries per output row.  # [dim_size]"""
    return torch.zeros(dim_size, dtype=dtype, device=index.device).index_add_(
        0, index, torch.ones_like(index, dtype=dtype)
    )


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean over the entries of each output row; empty rows are 0 (torch_scatter's convention)."""
    total = scatter_sum(src, index, dim_size)
    count = scatter_count(index, dim_size, src.dtype).clamp_(min=1)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Max over the entries of each output row; empty rows are -inf.  # [dim_size, ...]"""
    out = src.new_full((dim_size, *src.shape[1:]), float("-inf"))
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    return out.scatter_reduce_(0, idx, src, reduce="amax", include_self=True)
