"""Triton kernels for the per-edge weighted contraction of a tensor product (GPU only, optional).

For one output irrep, with per-edge weights made from the edge's hidden features (rows r_u .. r_u + W of the
tensor product's Linear belong to T's row u, a_u is its path's normalisation),

    w[e, u, v] = a_u (sum_h hidden[e, h] weight[r_u + v, h] + bias[r_u + v])    # [E, S, W]
    out[e, v, k] = sum_u w[e, u, v] t[e, u, k]                                 # [E, W, 2lo+1]

`EdgeWeightedContraction` (tensor_product.py) does this with cuBLAS: it writes w to memory chunk by chunk, reads it
back for a batched matmul whose matrices are tiny (W x S times S x (2lo+1)), and repeats both in backward. Here a
program owns a tile of BE edges and walks over T's rows in groups of UT consecutive rows of one path, whose Linear
rows r_u + v are one contiguous slab of UT W rows: w of the group is one [BE, H] x [H, UT W] tensor-core product
(UT W = `COLUMNS`, 128 by default: wide enough for Hopper's wgmma, and each slab of the Linear read once per BE
edges), kept in registers, contracted with T at once and dropped, so w never reaches memory. The contraction runs
on the product's accumulator as it lies: u is a register dimension of it, so the sum over u stays in each thread,
and each of the 2lo+1 output components has its own [BE, W] accumulator in the same layout (no shuffles through
shared memory). Backward writes only dL/d(Linear output) (once, in the Linear's row order), which one cuBLAS matmul
turns into the Linear's gradients (and a second into dL/dhidden), and dL/dT; by default as two kernels: one makes w
again the same way and contracts it with dL/dout (dL/dT), the other needs no product at all (dL/dw = a_u t (x) g),
each holding half of what one kernel would (which needs 255 registers and spills for 2lo+1 = 5; H200 A/B in
benchmarks/RESULTS.md). The single kernel remains, also with dL/dhidden made inside it as a [BE, UT W] x [UT W, H]
product per group (`tensor_product.KERNEL_HIDDEN_GRAD`). T is not stored either: a per-block int32 table says
where each group's rows lie in the projection buffer of all paths (tensor_product.StackedTensorProduct.
_plan_kernels), and dL/dT goes to the same places of a gradient buffer.

Used when Triton imports, the tensors are on a CUDA device and UT W >= 16 (tl.dot needs 16 columns); otherwise the
cuBLAS path runs. Same function up to float rounding (tests/test_fused_contraction.py, in Triton's interpreter).
"""

from __future__ import annotations

import torch

from .triton_common import edge_tile, precision, runnable, tl, triton

EDGE_TILE = 64  # edges per program (BE): wgmma's M
NUM_WARPS = 4
NUM_WARPS_BWD = 8  # backward holds dL/dout, the remade w and dL/dw of a group at once
NUM_STAGES = 2
# fp32 dots by 3xTF32 (triton_common.FP32_DOT) hold each operand as head and tail: the released layer's tiles need
# 258 KiB of shared memory at two stages, over the H200's 227 KiB; 192 KiB at one (ptxas figures, sm_90)
NUM_STAGES_TF32X3 = 1
# backward as two kernels: dL/dT (with w made again) and dL/dw (no product), each holding less in registers than
# the single kernel; the single kernel runs where dL/dhidden is made inside it (tensor_product.KERNEL_HIDDEN_GRAD)
SPLIT_BACKWARD = True
COLUMNS = 128  # UT W: columns of one group's weight product (set before the model is built: plans use it)


# shared memory of one program on an H100 / H200 (227 KiB)
SHARED_MEMORY = 232448


def usable(hidden: torch.Tensor, mul_out: int) -> bool:
    return runnable(hidden) and mul_out & (mul_out - 1) == 0 and shared_memory(hidden) <= SHARED_MEMORY


def shared_memory(hidden: torch.Tensor) -> int:
    """Bytes of shared memory the contraction's tiles need for these per-edge features: the hidden tile [BE, HP]
    and a slab of the Linear [HP, COLUMNS] per pipeline stage, twice over for 3xTF32 (head and tail); what ptxas
    reports for the released layers (tests/test_fused_contraction.py). A larger hidden size in fp32 keeps cuBLAS."""
    dot = precision(hidden.dtype)
    size = 8 if dot == "tf32x3" else hidden.element_size()
    return size * _padded(hidden.shape[1]) * (EDGE_TILE + COLUMNS) * _stages(dot)


def _padded(h: int) -> int:
    """HP: the hidden size padded to a power of two of at least 16 (tl.dot's smallest K)."""
    return max(16, 1 << (h - 1).bit_length())


def _stages(dot: str) -> int:
    return NUM_STAGES_TF32X3 if dot == "tf32x3" else NUM_STAGES


def group_rows(mul_out: int, path_rows: list[int]) -> int:
    """UT for an output irrep of multiplicity W whose paths have these numbers of T rows: a power of two dividing
    every path (a group never spans two paths), at most COLUMNS / W; 0 if UT W < 16 (no kernel)."""
    ut = max(1, COLUMNS // mul_out)
    while ut > 1 and any(n % ut for n in path_rows):
        ut //= 2
    return ut if ut * mul_out >= 16 and mul_out & (mul_out - 1) == 0 else 0


if triton is not None:

    @triton.jit
    def _group(grp_ptr, scale_ptr, g, w_ptr, b_ptr, hid, k, k_ok, c, i, e, n_edges, H: tl.constexpr,
               PRECISION: tl.constexpr):
        """Group g of the block's T rows: the Linear's slab [HP, UT W] (transposed), the group's w [BE, UT W]
        = a_p (hid @ slab + bias) (column c = u W + v), and where its T rows lie for edges e ([BE, UT] offsets of
        component 0 into the projection buffer of n_edges edges). grp_ptr: int32 [G, 5] = (start, stride, column,
        row step, Linear row): row u0 + i of edge e is at start * n_edges + e * stride + column + i * step."""
        start = tl.load(grp_ptr + 5 * g).to(tl.int64)
        stride = tl.load(grp_ptr + 5 * g + 1).to(tl.int64)
        column = tl.load(grp_ptr + 5 * g + 2)
        step = tl.load(grp_ptr + 5 * g + 3)
        r = tl.load(grp_ptr + 5 * g + 4)
        scale = tl.load(scale_ptr + g)
        slab = tl.load(w_ptr + (r + c)[None, :].to(tl.int64) * H + k[:, None], mask=k_ok[:, None], other=0.0)
        bias = tl.load(b_ptr + r + c).to(tl.float32)
        w = (tl.dot(hid, slab, input_precision=PRECISION) + bias[None, :]) * scale  # [BE, UT W] fp32
        rows = (start * n_edges + column + e * stride)[:, None] + (i * step)[None, :]  # [BE, UT]
        return slab, r, scale, w, rows

    @triton.jit
    def _hidden_tile(h_ptr, w_ptr, E, stride_he, H: tl.constexpr, HP: tl.constexpr, BE: tl.constexpr):
        """This program's edges, the hidden columns k (HP padded, k_ok real) and its hidden features [BE, HP] in the
        Linear's dtype (zeros where padded)."""
        e, e_ok = edge_tile(E, BE)
        k = tl.arange(0, HP)
        k_ok = k < H
        hid = tl.load(h_ptr + e[:, None] * stride_he + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        return e, e_ok, k, k_ok, hid.to(w_ptr.dtype.element_ty)

    @triton.jit
    def _contract_fwd(h_ptr, w_ptr, b_ptr, t_ptr, grp_ptr, scale_ptr, out_ptr, E, stride_he, stride_oe,
                      G: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, W: tl.constexpr, D: tl.constexpr,
                      UT: tl.constexpr, BE: tl.constexpr, PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr):
        e, e_ok, k, k_ok, hid = _hidden_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        c = tl.arange(0, UT * W)
        i = tl.arange(0, UT)
        t_ok = e_ok[:, None]
        # one [BE, W] accumulator per output component k < D (D <= 5: l <= 2); unused ones are never touched
        acc0 = tl.zeros((BE, W), dtype=tl.float32)
        acc1 = tl.zeros((BE, W), dtype=tl.float32)
        acc2 = tl.zeros((BE, W), dtype=tl.float32)
        acc3 = tl.zeros((BE, W), dtype=tl.float32)
        acc4 = tl.zeros((BE, W), dtype=tl.float32)
        for g in tl.range(G, num_stages=NUM_STAGES):
            _, _, _, w, rows = _group(grp_ptr, scale_ptr, g, w_ptr, b_ptr, hid, k, k_ok, c, i, e, E, H, PRECISION)
            w3 = tl.reshape(w, (BE, UT, W))
            t0 = tl.load(t_ptr + rows, mask=t_ok, other=0.0).to(tl.float32)  # [BE, UT]
            acc0 += tl.sum(w3 * t0[:, :, None], axis=1)
            if D > 1:
                t1 = tl.load(t_ptr + rows + 1, mask=t_ok, other=0.0).to(tl.float32)
                acc1 += tl.sum(w3 * t1[:, :, None], axis=1)
            if D > 2:
                t2 = tl.load(t_ptr + rows + 2, mask=t_ok, other=0.0).to(tl.float32)
                acc2 += tl.sum(w3 * t2[:, :, None], axis=1)
            if D > 3:
                t3 = tl.load(t_ptr + rows + 3, mask=t_ok, other=0.0).to(tl.float32)
                acc3 += tl.sum(w3 * t3[:, :, None], axis=1)
            if D > 4:
                t4 = tl.load(t_ptr + rows + 4, mask=t_ok, other=0.0).to(tl.float32)
                acc4 += tl.sum(w3 * t4[:, :, None], axis=1)
        v = tl.arange(0, W)
        out = out_ptr + e[:, None] * stride_oe + v[None, :] * D  # component k of row v at column v D + k
        dtype = out_ptr.dtype.element_ty
        tl.store(out, acc0.to(dtype), mask=t_ok)
        if D > 1:
            tl.store(out + 1, acc1.to(dtype), mask=t_ok)
        if D > 2:
            tl.store(out + 2, acc2.to(dtype), mask=t_ok)
        if D > 3:
            tl.store(out + 3, acc3.to(dtype), mask=t_ok)
        if D > 4:
            tl.store(out + 4, acc4.to(dtype), mask=t_ok)

    @triton.jit
    def _grad_component(w3, g, t_ptr, rows, gt_ptr, t_ok, gw3):
        """One output component k (g, rows: its dL/dout column and T places): dL/dT[e, u, k] = sum_v w[e, u, v]
        g[e, v, k] written at T's places; returns dL/dw (before a_p) with t[e, u, k] g[e, v, k] added. dL/dout is
        read again per group (from L1/L2) rather than held: registers are what limits this kernel."""
        g_k = tl.load(g, mask=t_ok, other=0.0).to(tl.float32)  # [BE, W]
        grad_t = tl.sum(w3 * g_k[:, None, :], axis=2)  # [BE, UT]
        tl.store(gt_ptr + rows, grad_t.to(gt_ptr.dtype.element_ty), mask=t_ok)
        t_k = tl.load(t_ptr + rows, mask=t_ok, other=0.0).to(tl.float32)  # [BE, UT]
        return gw3 + t_k[:, :, None] * g_k[:, None, :]

    @triton.jit
    def _contract_bwd(h_ptr, w_ptr, b_ptr, t_ptr, grp_ptr, scale_ptr, g_ptr, gt_ptr, gw_ptr, gh_ptr, E, e_first,
                      n_edges, stride_he, stride_ge, stride_gwe, G: tl.constexpr, H: tl.constexpr,
                      HP: tl.constexpr, W: tl.constexpr, D: tl.constexpr, UT: tl.constexpr, BE: tl.constexpr,
                      PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr, ACCUMULATE: tl.constexpr,
                      HIDDEN_GRAD: tl.constexpr):
        # edges e (local to the chunk of E edges) are edges e_first + e of the projection buffer
        e, e_ok, k, k_ok, hid = _hidden_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        c = tl.arange(0, UT * W)
        i = tl.arange(0, UT)
        v = tl.arange(0, W)
        t_ok = e_ok[:, None]
        g = g_ptr + e[:, None] * stride_ge + v[None, :] * D  # dL/dout, component k of row v at column v D + k
        grad_hid = tl.zeros((BE, HP), dtype=tl.float32)
        for grp in tl.range(G, num_stages=NUM_STAGES):
            slab, r, scale, w, rows = _group(grp_ptr, scale_ptr, grp, w_ptr, b_ptr, hid, k, k_ok, c, i, e_first + e,
                                             n_edges, H, PRECISION)  # made again
            w3 = tl.reshape(w, (BE, UT, W))
            gw3 = _grad_component(w3, g, t_ptr, rows, gt_ptr, t_ok, tl.zeros((BE, UT, W), dtype=tl.float32))
            if D > 1:
                gw3 = _grad_component(w3, g + 1, t_ptr, rows + 1, gt_ptr, t_ok, gw3)
            if D > 2:
                gw3 = _grad_component(w3, g + 2, t_ptr, rows + 2, gt_ptr, t_ok, gw3)
            if D > 3:
                gw3 = _grad_component(w3, g + 3, t_ptr, rows + 3, gt_ptr, t_ok, gw3)
            if D > 4:
                gw3 = _grad_component(w3, g + 4, t_ptr, rows + 4, gt_ptr, t_ok, gw3)
            # dL/d(Linear output)[e, r + c] = a_p dL/dw[e, u, v]: the group's slab of Linear rows, contiguous
            grad_w = (tl.reshape(gw3, (BE, UT * W)) * scale).to(gw_ptr.dtype.element_ty)  # [BE, UT W]
            tl.store(gw_ptr + e[:, None] * stride_gwe + r + c[None, :], grad_w, mask=t_ok)
            if HIDDEN_GRAD:
                grad_hid += tl.dot(grad_w.to(slab.dtype), tl.trans(slab), input_precision=PRECISION)  # [BE, HP]
        if HIDDEN_GRAD:
            gh = gh_ptr + e[:, None] * H + k[None, :]
            gh_ok = e_ok[:, None] & k_ok[None, :]
            if ACCUMULATE:
                grad_hid += tl.load(gh, mask=gh_ok, other=0.0)
            tl.store(gh, grad_hid, mask=gh_ok)


    @triton.jit
    def _load_grad(g, t_ok, D: tl.constexpr, K: tl.constexpr):
        """Component K of dL/dout for the tile ([BE, W] fp32; zeros where K >= D, never read then)."""
        if K < D:
            return tl.load(g + K, mask=t_ok, other=0.0).to(tl.float32)
        return tl.load(g, mask=t_ok, other=0.0).to(tl.float32)

    @triton.jit
    def _grad_t_component(w3, g_k, rows, gt_ptr, t_ok):
        grad_t = tl.sum(w3 * g_k[:, None, :], axis=2)  # [BE, UT]
        tl.store(gt_ptr + rows, grad_t.to(gt_ptr.dtype.element_ty), mask=t_ok)

    @triton.jit
    def _contract_bwd_t(h_ptr, w_ptr, b_ptr, grp_ptr, scale_ptr, g_ptr, gt_ptr, E, e_first, n_edges, stride_he,
                        stride_ge, G: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, W: tl.constexpr,
                        D: tl.constexpr, UT: tl.constexpr, BE: tl.constexpr, PRECISION: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
        """dL/dT only (split backward): w made again, dL/dout held in registers for the whole loop."""
        e, e_ok, k, k_ok, hid = _hidden_tile(h_ptr, w_ptr, E, stride_he, H, HP, BE)
        c = tl.arange(0, UT * W)
        i = tl.arange(0, UT)
        v = tl.arange(0, W)
        t_ok = e_ok[:, None]
        g = g_ptr + e[:, None] * stride_ge + v[None, :] * D
        g0 = _load_grad(g, t_ok, D, 0)
        g1 = _load_grad(g, t_ok, D, 1)
        g2 = _load_grad(g, t_ok, D, 2)
        g3 = _load_grad(g, t_ok, D, 3)
        g4 = _load_grad(g, t_ok, D, 4)
        for grp in tl.range(G, num_stages=NUM_STAGES):
            _, _, _, w, rows = _group(grp_ptr, scale_ptr, grp, w_ptr, b_ptr, hid, k, k_ok, c, i, e_first + e,
                                      n_edges, H, PRECISION)  # made again
            w3 = tl.reshape(w, (BE, UT, W))
            _grad_t_component(w3, g0, rows, gt_ptr, t_ok)
            if D > 1:
                _grad_t_component(w3, g1, rows + 1, gt_ptr, t_ok)
            if D > 2:
                _grad_t_component(w3, g2, rows + 2, gt_ptr, t_ok)
            if D > 3:
                _grad_t_component(w3, g3, rows + 3, gt_ptr, t_ok)
            if D > 4:
                _grad_t_component(w3, g4, rows + 4, gt_ptr, t_ok)

    @triton.jit
    def _contract_bwd_w(t_ptr, grp_ptr, scale_ptr, g_ptr, gw_ptr, E, e_first, n_edges, stride_ge, stride_gwe,
                        G: tl.constexpr, W: tl.constexpr, D: tl.constexpr, UT: tl.constexpr, BE: tl.constexpr):
        """dL/d(Linear output) only (split backward): a_p sum_k t[e, u, k] g[e, v, k], no product with the Linear,
        row u by row u ([BE, W] tiles: 2-D code whose operands need no layout changes), each row's W Linear rows
        contiguous."""
        e, e_ok = edge_tile(E, BE)
        v = tl.arange(0, W)
        t_ok = e_ok
        g = g_ptr + e[:, None] * stride_ge + v[None, :] * D
        g0 = _load_grad(g, e_ok[:, None], D, 0)
        g1 = _load_grad(g, e_ok[:, None], D, 1)
        g2 = _load_grad(g, e_ok[:, None], D, 2)
        g3 = _load_grad(g, e_ok[:, None], D, 3)
        g4 = _load_grad(g, e_ok[:, None], D, 4)
        gw = gw_ptr + e[:, None] * stride_gwe + v[None, :]
        for grp in range(G):
            start = tl.load(grp_ptr + 5 * grp).to(tl.int64)
            stride = tl.load(grp_ptr + 5 * grp + 1).to(tl.int64)
            column = tl.load(grp_ptr + 5 * grp + 2)
            step = tl.load(grp_ptr + 5 * grp + 3)
            r = tl.load(grp_ptr + 5 * grp + 4)
            scale = tl.load(scale_ptr + grp)
            rows = start * n_edges + column + (e_first + e) * stride  # [BE]: row u0 of the group, component 0
            for u in tl.static_range(UT):
                row = rows + u * step
                grad_w = tl.load(t_ptr + row, mask=t_ok, other=0.0).to(tl.float32)[:, None] * g0  # [BE, W]
                if D > 1:
                    grad_w += tl.load(t_ptr + row + 1, mask=t_ok, other=0.0).to(tl.float32)[:, None] * g1
                if D > 2:
                    grad_w += tl.load(t_ptr + row + 2, mask=t_ok, other=0.0).to(tl.float32)[:, None] * g2
                if D > 3:
                    grad_w += tl.load(t_ptr + row + 3, mask=t_ok, other=0.0).to(tl.float32)[:, None] * g3
                if D > 4:
                    grad_w += tl.load(t_ptr + row + 4, mask=t_ok, other=0.0).to(tl.float32)[:, None] * g4
                tl.store(gw + r + u * W, (grad_w * scale).to(gw_ptr.dtype.element_ty), mask=e_ok[:, None])


def _dims(hidden: torch.Tensor, weight: torch.Tensor, groups: torch.Tensor, mul_out: int, dim_out: int,
          ut: int) -> dict:
    h = hidden.shape[1]
    assert dim_out <= 5, "the kernels keep one accumulator per output component, l <= 2"
    dot = precision(weight.dtype)
    return dict(G=groups.shape[0], H=h, HP=_padded(h), W=mul_out, D=dim_out, UT=ut, BE=EDGE_TILE, PRECISION=dot,
                NUM_STAGES=_stages(dot))


def forward(hidden, weight, bias, proj, groups, scale, mul_out: int, dim_out: int, ut: int,
            out: torch.Tensor) -> None:
    """out [E, W (2lo+1)] (a column range of the layer's output) <- contraction of T [E, S, 2lo+1] with
    w[e, u, :] = a_u (hidden[e] @ weight[r_u:r_u + W]^T + bias[r_u:r_u + W]), T's rows in groups of `ut` read from
    the projection buffer `proj` (group-major, flat) where `groups` says (int32 [G, 5], see `_group`), a_u =
    scale[group]. `weight` [numel, H] and `bias` (the Linear's, e3nn's row order) in the compute dtype, `hidden`
    any float dtype (cast on load)."""
    e = hidden.shape[0]
    assert hidden.stride(1) == 1 and out.stride(1) == 1 and weight.is_contiguous() and proj.is_contiguous()
    assert groups.is_contiguous() and groups.dtype == torch.int32 and out.shape[1] == mul_out * dim_out
    assert scale.dtype == torch.float32 and scale.shape[0] == groups.shape[0]
    grid = (triton.cdiv(e, EDGE_TILE),)
    _contract_fwd[grid](hidden, weight, bias, proj, groups, scale, out, e, hidden.stride(0), out.stride(0),
                        num_warps=NUM_WARPS, **_dims(hidden, weight, groups, mul_out, dim_out, ut))


def backward(hidden, weight, bias, proj, groups, scale, mul_out: int, dim_out: int, ut: int, grad_out, grad_proj,
             grad_w, grad_hidden, e_first: int, n_edges: int, accumulate: bool) -> None:
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
    if SPLIT_BACKWARD and grad_hidden is None:
        dims = _dims(hidden, weight, groups, mul_out, dim_out, ut)
        _contract_bwd_t[grid](hidden, weight, bias, groups, scale, grad_out, grad_proj, e, e_first, n_edges,
                              hidden.stride(0), grad_out.stride(0), num_warps=NUM_WARPS_BWD, **dims)
        del dims["H"], dims["HP"], dims["NUM_STAGES"], dims["PRECISION"]
        _contract_bwd_w[grid](proj, groups, scale, grad_out, grad_w, e, e_first, n_edges, grad_out.stride(0),
                              grad_w.stride(0), num_warps=NUM_WARPS, **dims)
        return
    _contract_bwd[grid](hidden, weight, bias, proj, groups, scale, grad_out, grad_proj, grad_w,
                        grad_w if grad_hidden is None else grad_hidden, e, e_first, n_edges, hidden.stride(0),
                        grad_out.stride(0), grad_w.stride(0), ACCUMULATE=accumulate,
                        HIDDEN_GRAD=grad_hidden is not None, num_warps=NUM_WARPS_BWD,
                        **_dims(hidden, weight, groups, mul_out, dim_out, ut))
