"""Triton kernels for the per-edge weighted contraction of a tensor product (GPU only, optional).

For one output irrep, with per-edge weights made from the edge's hidden features,

    w[e, u, v] = sum_h hidden[e, h] weight[u W + v, h] + bias[u W + v]          # [E, S, W]
    out[e, v, k] = sum_u w[e, u, v] t[e, u, k]                                 # [E, W, 2lo+1]

`EdgeWeightedContraction` (tensor_product.py) does this with cuBLAS: it writes w to memory chunk by chunk, reads it
back for a batched matmul whose matrices are tiny (W x S times S x (2lo+1)), and repeats both in backward. Here a
program owns a tile of edges and walks over u: w[:, u, :] is one [tile, H] x [H, W] tensor-core product kept in
registers, used at once and dropped, so w never reaches memory. Backward makes it again the same way and writes
only dL/dw (once), which two cuBLAS matmuls turn into the gradients of the Linear layer and of `hidden`.

Used when Triton imports, the tensors are on a CUDA device and W >= 16 (tl.dot needs 16 columns); otherwise the
cuBLAS path runs. Same function up to float rounding (tests/test_fused_contraction.py, in Triton's interpreter).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the cuBLAS / CPU path is used
    triton = None

EDGE_TILE = 32  # edges per program
NUM_WARPS = 4


def usable(hidden: torch.Tensor, mul_out: int) -> bool:
    return triton is not None and (hidden.is_cuda or _interpreting()) and mul_out >= 16 and mul_out & (mul_out - 1) == 0


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _precision(dtype: torch.dtype) -> str:
    # fp32 operands follow torch's TF32 switch, as cuBLAS does for the same matmul
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


if triton is not None:

    @triton.jit
    def _edge_tile(h_ptr, w_ptr, E, stride_he, H: tl.constexpr, HP: tl.constexpr, BE: tl.constexpr):
        """This program's edges, the hidden-feature index and the edges' hidden features in the weight dtype."""
        e = tl.program_id(0) * BE + tl.arange(0, BE)  # [BE]
        e_ok = e < E
        k = tl.arange(0, HP)
        k_ok = k < H
        hid = tl.load(h_ptr + e[:, None] * stride_he + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        return e, e_ok, k, k_ok, hid.to(w_ptr.dtype.element_ty)  # hid [BE, HP]

    @triton.jit
    def _weight_row(hid, w_ptr, b_ptr, u, v, k, k_ok, H: tl.constexpr, W: tl.constexpr, PRECISION: tl.constexpr):
        """The Linear's rows of input row u ([HP, W], transposed) and the edges' weights w[e, u, :] ([BE, W])."""
        wu = tl.load(w_ptr + (u * W + v)[None, :] * H + k[:, None], mask=k_ok[:, None], other=0.0)
        bu = tl.load(b_ptr + u * W + v).to(tl.float32)
        return wu, tl.dot(hid, wu, input_precision=PRECISION) + bu[None, :]

    @triton.jit
    def _contract_fwd(h_ptr, w_ptr, b_ptr, t_ptr, out_ptr, E, stride_he, stride_te, stride_tu, S: tl.constexpr,
                      H: tl.constexpr, HP: tl.constexpr, W: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                      BE: tl.constexpr, PRECISION: tl.constexpr):
        e, e_ok, k, k_ok, hid = _edge_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        v = tl.arange(0, W)
        d = tl.arange(0, DP)
        d_ok = d < D
        acc = tl.zeros((BE, W, DP), dtype=tl.float32)
        for u in range(S):
            _, weight = _weight_row(hid, w_ptr, b_ptr, u, v, k, k_ok, H, W, PRECISION)  # [BE, W]
            tu = tl.load(t_ptr + e[:, None] * stride_te + u * stride_tu + d[None, :],
                         mask=e_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BE, DP]
            acc += weight[:, :, None] * tu[:, None, :]
        out = out_ptr + e[:, None, None] * (W * D) + v[None, :, None] * D + d[None, None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=e_ok[:, None, None] & d_ok[None, None, :])

    @triton.jit
    def _contract_bwd(h_ptr, w_ptr, b_ptr, t_ptr, g_ptr, gt_ptr, gw_ptr, gh_ptr, E, stride_he, stride_te,
                      stride_tu, stride_ge, S: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, W: tl.constexpr,
                      D: tl.constexpr, DP: tl.constexpr, BE: tl.constexpr, PRECISION: tl.constexpr,
                      ACCUMULATE: tl.constexpr):
        e, e_ok, k, k_ok, hid = _edge_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        v = tl.arange(0, W)
        d = tl.arange(0, DP)
        d_ok = d < D
        g = tl.load(g_ptr + e[:, None, None] * stride_ge + v[None, :, None] * D + d[None, None, :],
                    mask=e_ok[:, None, None] & d_ok[None, None, :], other=0.0).to(tl.float32)  # [BE, W, DP]
        grad_hid = tl.zeros((BE, HP), dtype=tl.float32)
        for u in range(S):
            wu, weight = _weight_row(hid, w_ptr, b_ptr, u, v, k, k_ok, H, W, PRECISION)  # made again
            tu = tl.load(t_ptr + e[:, None] * stride_te + u * stride_tu + d[None, :],
                         mask=e_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BE, DP]
            grad_t = tl.sum(weight[:, :, None] * g, axis=1)  # [BE, DP]
            tl.store(gt_ptr + e[:, None] * (S * D) + u * D + d[None, :], grad_t.to(gt_ptr.dtype.element_ty),
                     mask=e_ok[:, None] & d_ok[None, :])
            grad_w = tl.sum(tu[:, None, :] * g, axis=2).to(gw_ptr.dtype.element_ty)  # [BE, W] = dL/dw[e, u, :]
            tl.store(gw_ptr + e[:, None] * (S * W) + u * W + v[None, :], grad_w, mask=e_ok[:, None])
            grad_hid += tl.dot(grad_w.to(wu.dtype), tl.trans(wu), input_precision=PRECISION)  # [BE, HP]
        gh = gh_ptr + e[:, None] * H + k[None, :]
        gh_ok = e_ok[:, None] & k_ok[None, :]
        if ACCUMULATE:
            grad_hid += tl.load(gh, mask=gh_ok, other=0.0)
        tl.store(gh, grad_hid, mask=gh_ok)


def _dims(hidden: torch.Tensor, t: torch.Tensor, mul_out: int) -> dict:
    h, d = hidden.shape[1], t.shape[2]
    return dict(H=h, HP=max(16, triton.next_power_of_2(h)), W=mul_out, D=d, DP=triton.next_power_of_2(d),
                BE=EDGE_TILE)


def forward(hidden, weight, bias, t, mul_out: int, out: torch.Tensor) -> None:
    """out [E, W, 2lo+1] <- contraction of t [E, S, 2lo+1] with w = hidden @ weight^T + bias; `weight` [S W, H] and
    `bias` in the compute dtype, `hidden` any float dtype (cast on load)."""
    e, s = t.shape[0], t.shape[1]
    assert hidden.stride(1) == 1 and t.stride(2) == 1 and weight.is_contiguous() and out.is_contiguous()
    grid = (triton.cdiv(e, EDGE_TILE),)
    _contract_fwd[grid](hidden, weight, bias, t, out, e, hidden.stride(0), t.stride(0), t.stride(1), S=s,
                        PRECISION=_precision(weight.dtype), num_warps=NUM_WARPS, **_dims(hidden, t, mul_out))


def backward(hidden, weight, bias, t, grad_out, mul_out: int, grad_t, grad_w, grad_hidden, accumulate: bool) -> None:
    """grad_t [E, S, 2lo+1] and grad_w [E, S W] (written), grad_hidden [E, H] fp32 (written or added to);
    grad_out [E, W (2lo+1)] may be a column slice."""
    e, s = t.shape[0], t.shape[1]
    assert grad_out.stride(1) == 1 and grad_t.is_contiguous() and grad_w.is_contiguous()
    assert grad_hidden.is_contiguous()
    grid = (triton.cdiv(e, EDGE_TILE),)
    _contract_bwd[grid](hidden, weight, bias, t, grad_out, grad_t, grad_w, grad_hidden, e, hidden.stride(0),
                        t.stride(0), t.stride(1), grad_out.stride(0), S=s, PRECISION=_precision(weight.dtype),
                        ACCUMULATE=accumulate, num_warps=NUM_WARPS, **_dims(hidden, t, mul_out))
