"""Triton kernels for the per-edge weighted contraction of a tensor product (GPU only, optional).

For one output irrep, with per-edge weights made from the edge's hidden features (rows r_u .. r_u + W of the
tensor product's Linear belong to T's row u, a_u is its path's normalisation),

    w[e, u, v] = a_u (sum_h hidden[e, h] weight[r_u + v, h] + bias[r_u + v])    # [E, S, W]
    out[e, v, k] = sum_u w[e, u, v] t[e, u, k]                                 # [E, W, 2lo+1]

`EdgeWeightedContraction` (tensor_product.py) does this with cuBLAS: it writes w to memory chunk by chunk, reads it
back for a batched matmul whose matrices are tiny (W x S times S x (2lo+1)), and repeats both in backward. Here a
program owns a tile of edges and walks over u: w[:, u, :] is one [tile, H] x [H, W] tensor-core product kept in
registers, used at once and dropped, so w never reaches memory. Backward makes it again the same way and writes
only dL/d(Linear output) (once, in the Linear's row order), which one cuBLAS matmul turns into the gradients of the
Linear layer. t is not stored either: a per-block int32 row table says where each of its rows lies in the
projection buffer of all paths (tensor_product.StackedTensorProduct._plan_kernels), and dL/dt goes to the same
places of a gradient buffer of that layout.

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
    def _weight_row(hid, w_ptr, b_ptr, rows_ptr, scale_ptr, u, v, k, k_ok, H: tl.constexpr,
                    PRECISION: tl.constexpr):
        """The Linear's rows r .. r + W of T's row u ([HP, W], transposed; r from the row table), the path's a_p
        and the edges' weights w[e, u, :] = a_p (hid[e] @ rows^T + bias) ([BE, W])."""
        r = tl.load(rows_ptr + 4 * u + 3)
        scale = tl.load(scale_ptr + u)
        wu = tl.load(w_ptr + (r + v)[None, :] * H + k[:, None], mask=k_ok[:, None], other=0.0)
        bu = tl.load(b_ptr + r + v).to(tl.float32)
        return wu, r, scale, (tl.dot(hid, wu, input_precision=PRECISION) + bu[None, :]) * scale

    @triton.jit
    def _t_row(rows_ptr, u, e, n_edges):
        """Where row u of the block's T starts for edges e ([BE], indices into the projection buffer's n_edges).
        T is not stored: its rows lie in the group-major projection buffer, where row u of edge e starts at element
        start[u] * n_edges + e * stride[u] + column[u] (rows_ptr: int32 [S, 4] = (start, stride, column, Linear
        row))."""
        start = tl.load(rows_ptr + 4 * u).to(tl.int64)
        stride = tl.load(rows_ptr + 4 * u + 1).to(tl.int64)
        column = tl.load(rows_ptr + 4 * u + 2)
        return (start * n_edges + column) + e.to(tl.int64) * stride  # [BE] int64

    @triton.jit
    def _contract_fwd(h_ptr, w_ptr, b_ptr, t_ptr, rows_ptr, scale_ptr, out_ptr, E, stride_he, stride_oe,
                      S: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, W: tl.constexpr, D: tl.constexpr,
                      DP: tl.constexpr, BE: tl.constexpr, PRECISION: tl.constexpr):
        e, e_ok, k, k_ok, hid = _edge_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        v = tl.arange(0, W)
        d = tl.arange(0, DP)
        d_ok = d < D
        acc = tl.zeros((BE, W, DP), dtype=tl.float32)
        for u in range(S):
            _, _, _, weight = _weight_row(hid, w_ptr, b_ptr, rows_ptr, scale_ptr, u, v, k, k_ok, H,
                                          PRECISION)  # [BE, W]
            tu = tl.load(t_ptr + _t_row(rows_ptr, u, e, E)[:, None] + d[None, :],
                         mask=e_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BE, DP]
            acc += weight[:, :, None] * tu[:, None, :]
        out = out_ptr + e.to(tl.int64)[:, None, None] * stride_oe + v[None, :, None] * D + d[None, None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=e_ok[:, None, None] & d_ok[None, None, :])

    @triton.jit
    def _contract_bwd(h_ptr, w_ptr, b_ptr, t_ptr, rows_ptr, scale_ptr, g_ptr, gt_ptr, gw_ptr, gh_ptr, E, e_first,
                      n_edges, stride_he, stride_ge, stride_gwe, S: tl.constexpr, H: tl.constexpr,
                      HP: tl.constexpr, W: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BE: tl.constexpr,
                      PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr, HIDDEN_GRAD: tl.constexpr):
        # edges e (local to the chunk of E edges) are edges e_first + e of the projection buffer
        e, e_ok, k, k_ok, hid = _edge_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        v = tl.arange(0, W)
        d = tl.arange(0, DP)
        d_ok = d < D
        e_ok_d = e_ok[:, None] & d_ok[None, :]
        g = tl.load(g_ptr + e.to(tl.int64)[:, None, None] * stride_ge + v[None, :, None] * D + d[None, None, :],
                    mask=e_ok[:, None, None] & d_ok[None, None, :], other=0.0).to(tl.float32)  # [BE, W, DP]
        grad_hid = tl.zeros((BE, HP), dtype=tl.float32)
        for u in range(S):
            wu, r, scale, weight = _weight_row(hid, w_ptr, b_ptr, rows_ptr, scale_ptr, u, v, k, k_ok, H,
                                               PRECISION)  # made again
            row = _t_row(rows_ptr, u, e_first + e, n_edges)[:, None] + d[None, :]  # [BE, DP]
            tu = tl.load(t_ptr + row, mask=e_ok_d, other=0.0).to(tl.float32)
            grad_t = tl.sum(weight[:, :, None] * g, axis=1)  # [BE, DP]
            # dL/dT goes to the same place of the gradient buffer: each element of T belongs to one block
            tl.store(gt_ptr + row, grad_t.to(gt_ptr.dtype.element_ty), mask=e_ok_d)
            # dL/d(Linear output)[e, r:r + W] = a_p dL/dw[e, u, :]  [BE, W]
            grad_w = (tl.sum(tu[:, None, :] * g, axis=2) * scale).to(gw_ptr.dtype.element_ty)
            tl.store(gw_ptr + e.to(tl.int64)[:, None] * stride_gwe + r + v[None, :], grad_w, mask=e_ok[:, None])
            if HIDDEN_GRAD:
                grad_hid += tl.dot(grad_w.to(wu.dtype), tl.trans(wu), input_precision=PRECISION)  # [BE, HP]
        if HIDDEN_GRAD:
            gh = gh_ptr + e[:, None] * H + k[None, :]
            gh_ok = e_ok[:, None] & k_ok[None, :]
            if ACCUMULATE:
                grad_hid += tl.load(gh, mask=gh_ok, other=0.0)
            tl.store(gh, grad_hid, mask=gh_ok)


def _dims(hidden: torch.Tensor, rows: torch.Tensor, mul_out: int, dim_out: int) -> dict:
    h = hidden.shape[1]
    return dict(S=rows.shape[0], H=h, HP=max(16, triton.next_power_of_2(h)), W=mul_out, D=dim_out,
                DP=triton.next_power_of_2(dim_out), BE=EDGE_TILE)


def forward(hidden, weight, bias, proj, rows, scale, mul_out: int, dim_out: int, out: torch.Tensor) -> None:
    """out [E, W (2lo+1)] (a column range of the layer's output) <- contraction of T [E, S, 2lo+1] with
    w[e, u, :] = scale[u] (hidden[e] @ weight[r_u:r_u + W]^T + bias[r_u:r_u + W]). T's row u is read from the
    projection buffer `proj` (group-major, flat) at the place `rows[u]` says (int32 [S, 4], see `_t_row`), r_u is
    rows[u, 3]. `weight` [numel, H] and `bias` (the Linear's, e3nn's row order) in the compute dtype, `hidden` any
    float dtype (cast on load)."""
    e = hidden.shape[0]
    assert hidden.stride(1) == 1 and out.stride(1) == 1 and weight.is_contiguous() and proj.is_contiguous()
    assert rows.is_contiguous() and rows.dtype == torch.int32 and out.shape[1] == mul_out * dim_out
    assert scale.dtype == torch.float32 and scale.shape[0] == rows.shape[0]
    grid = (triton.cdiv(e, EDGE_TILE),)
    _contract_fwd[grid](hidden, weight, bias, proj, rows, scale, out, e, hidden.stride(0), out.stride(0),
                        PRECISION=_precision(weight.dtype), num_warps=NUM_WARPS,
                        **_dims(hidden, rows, mul_out, dim_out))


def backward(hidden, weight, bias, proj, rows, scale, mul_out: int, dim_out: int, grad_out, grad_proj, grad_w,
             grad_hidden, e_first: int, n_edges: int, accumulate: bool) -> None:
    """For the chunk of edges e_first ... e_first + len(hidden) of the n_edges of `proj`: dL/dT written into
    `grad_proj` (same layout as `proj`) at T's places, dL/d(Linear output) into this block's columns of
    grad_w [chunk, numel], grad_hidden [chunk, H] fp32 written or added to (None: not computed here, the caller
    takes grad_w @ weight with cuBLAS); grad_out [chunk, W (2lo+1)] may be a column range."""
    e = hidden.shape[0]
    assert grad_out.stride(1) == 1 and grad_proj.is_contiguous() and grad_proj.shape == proj.shape
    assert grad_w.stride(1) == 1 and grad_w.shape[1] == weight.shape[0]
    assert grad_hidden is None or grad_hidden.is_contiguous()
    assert proj.numel() % n_edges == 0
    grid = (triton.cdiv(e, EDGE_TILE),)
    _contract_bwd[grid](hidden, weight, bias, proj, rows, scale, grad_out, grad_proj, grad_w,
                        grad_w if grad_hidden is None else grad_hidden, e, e_first, n_edges, hidden.stride(0),
                        grad_out.stride(0), grad_w.stride(0), PRECISION=_precision(weight.dtype),
                        ACCUMULATE=accumulate, HIDDEN_GRAD=grad_hidden is not None, num_warps=NUM_WARPS,
                        **_dims(hidden, rows, mul_out, dim_out))
