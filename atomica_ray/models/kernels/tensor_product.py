"""The public operation of this package: e3nn's fully connected tensor product with per-edge weights
(`StackedTensorProduct`), the switch that picks its backend (BACKEND, `set_backend`), and its torch path, computed as
one batched matmul per output irrep.

For a path p = (input irrep l1 with multiplicity U, spherical harmonic l2, output irrep lo with multiplicity W)
e3nn computes (TensorProduct, 'uvw' connection, 'component' / 'element' normalisation)

    out[e, w, k] += a_p * sum_u weight_p[e, u, w] * T_p[e, u, k]
    T_p[e, u, k]  = sum_ij C(l1 l2 lo)[i, j, k] x[e, u, i] y[e, j]

with C the Wigner 3j symbols and a_p the path normalisation. Here all paths into one output irrep are stacked:
out_o[e] = weight_o[e]^T @ T_o[e], a [W, sum U] x [sum U, 2lo+1] matmul per edge. The per-edge weights come from
the rows of a Linear layer permuted (and scaled by a_p) once per call into that stacked order, one Linear per
output irrep. T is computed with one matmul per input l1: the outer product of all l1 inputs with all spherical
harmonics times a (block-sparse) matrix of every C(l1 . .) needed. On the Triton kernels' path neither T_o nor
the permuted Linear is made: the kernels find both through a group table (`StackedTensorProduct._plan_kernels`).

e3nn runs one einsum per path on strided weight slices; this does a handful of matmuls. It is the same function
(up to float rounding), which tests/test_models_properties.py checks against e3nn. The per-edge weights are never
held whole (`EdgeWeightedContraction`); on a GPU (bf16; fp32 by 3xTF32 dots), Triton kernels make them in
registers (fused_contraction.py), and the per-l1 projections are Triton kernels too (fused_projection.py); the
libraries' backends (libraries.py) take them whole.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
from e3nn import o3
from torch import nn

from . import fused_contraction, fused_projection, libraries
from .triton_common import precision


class KernelBlock(NamedTuple):
    """An output irrep with paths, for the kernels: W, 2lo+1, its first column in the output, its groups
    [group0, group1) of `StackedTensorProduct.t_groups` and the rows of T per group (UT)."""
    mul: int
    dim: int
    column: int
    group0: int
    group1: int
    ut: int


class KernelPlan(NamedTuple):
    blocks: list[KernelBlock]
    out_dim: int
    zero_grad: bool  # some projected elements are read by no block: their gradient is zero


class StackedTensorProduct(nn.Module):
    """Execution plan for `tp` (an `o3.FullyConnectedTensorProduct` with `shared_weights=False` whose second input
    has multiplicity 1 per irrep, i.e. spherical harmonics). Holds only non-persistent buffers."""

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        irreps1, irreps2, irreps_out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        if any(mul != 1 for mul, _ in irreps2):
            raise ValueError("the second input must have multiplicity 1 (spherical harmonics)")
        self.in1 = [(mul, ir.l) for mul, ir in irreps1]
        # what the libraries' backends need to build the same tensor product (libraries.py)
        self.irreps = libraries.Spec(str(irreps1), str(irreps2), str(irreps_out),
                                     tuple((i.i_in1, i.i_in2, i.i_out, i.path_weight) for i in tp.instructions))
        self.out_blocks = [(mul, ir.dim) for mul, ir in irreps_out]
        y_start = [s.start for s in irreps2.slices()]

        # input irreps grouped by l1 (their rows stacked), and the (second input, output l) pairs each group needs
        self.groups: dict[int, list[int]] = {}  # l1 -> input irrep indices
        for i, (_, l1) in enumerate(self.in1):
            self.groups.setdefault(l1, []).append(i)
        needs: dict[int, list[tuple[int, int]]] = {l1: [] for l1 in self.groups}
        for ins in tp.instructions:
            key = (ins.i_in2, irreps_out[ins.i_out].ir.l)
            if key not in needs[self.in1[ins.i_in1][1]]:
                needs[self.in1[ins.i_in1][1]].append(key)
        self.group_columns: dict[int, list[tuple[int, int]]] = {}
        for l1, columns in needs.items():
            if not columns:
                continue
            self.group_columns[l1] = columns
            blocks = []
            for i2, lo in columns:  # C(l1 l2 lo) on the rows of the l2 harmonics, zero on the others
                l2 = irreps2[i2].ir.l
                block = torch.zeros(2 * l1 + 1, irreps2.dim, 2 * lo + 1)
                block[:, y_start[i2]:y_start[i2] + 2 * l2 + 1] = o3.wigner_3j(l1, l2, lo)
                blocks.append(block.reshape(-1, 2 * lo + 1))
            self.register_buffer(f"cg_{l1}", torch.cat(blocks, dim=1), persistent=False)  # [(2l1+1) D2, Q]

        # stacked order of the weights: output irrep, then path (instruction order), then (u, w) as e3nn stores
        offsets = torch.cumsum(torch.tensor([0] + [i.path_shape[0] * i.path_shape[1] * i.path_shape[2]
                                                   for i in tp.instructions]), 0).tolist()
        perm, scale = [], []
        self.paths = [[] for _ in irreps_out]  # per output irrep: (input irrep, second input irrep, lo)
        path_weights = [[] for _ in irreps_out]  # per output irrep: (first Linear row of the path, a_p)
        for i_out in range(len(irreps_out)):
            for ins, start, stop in zip(tp.instructions, offsets[:-1], offsets[1:]):
                if ins.i_out == i_out:
                    self.paths[i_out].append((ins.i_in1, ins.i_in2, irreps_out[i_out].ir.l))
                    path_weights[i_out].append((start, ins.path_weight))
                    perm.extend(range(start, stop))
                    scale.extend([ins.path_weight] * (stop - start))
        self.register_buffer("weight_perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("weight_scale", torch.tensor(scale, dtype=torch.get_default_dtype()), persistent=False)
        self.block_rows = [sum(self.in1[i1][0] for i1, _, _ in paths) * mul
                           for paths, (mul, _) in zip(self.paths, self.out_blocks)]
        self.weight_numel = tp.weight_numel
        self._plan_kernels(path_weights)
        self.projection = fused_projection.projection_plan(self)  # the Triton projection's tables (no state)
        assert all(self.group_starts[g.l1] == g.column for g in self.projection.groups), "buffer layouts differ"

    def _plan_kernels(self, path_weights) -> None:
        """What the kernels (`FusedEdgeWeightedContraction`) need to find T_o and w_o, neither of which is stored.

        T_o's rows are read from one flat buffer holding every group's projection [E, U_l1, Q_l1], group after
        group ("group-major": each group's block is its matmul's contiguous result and its gradient a view). Row u
        of T_o for edge e is at element start * E + e * U_l1 Q_l1 + (row of u in the group) Q_l1 + (column of
        (i2, lo)). w_o[e, u, :] = a_p (hidden[e] @ weight[r:r + W]^T + bias[r:r + W]) with r the Linear row (e3nn
        order) of the path's (u, 0), r = r_p + u W. The kernels take T_o's rows in groups of UT consecutive rows of
        one path (`fused_contraction.group_rows`): their Linear rows are one slab [r, r + UT W). Buffers:
        `t_groups` = (start, U_l1 Q_l1, row Q_l1 + column of the group's first row, Q_l1, r) and `t_scale` = a_p
        per group, blocks with paths one after another ([sum over blocks G_o, 5] int32, [.] fp32)."""
        place = {}  # (input irrep, second input irrep, lo) -> (start, stride, first row's element in the edge's group)
        used = {}  # per group start: how many blocks read each element of an edge's group [U_l1 Q_l1]
        start = 0
        self.group_starts: dict[int, int] = {}  # l1 -> its block's start in the buffer, in units of E elements
        for l1, columns in self.group_columns.items():
            self.group_starts[l1] = start
            members = self.groups[l1]
            q = sum(2 * lo + 1 for _, lo in columns)
            u = sum(self.in1[i][0] for i in members)
            row = 0
            for i1 in members:
                column = 0
                for i2, lo in columns:
                    place[(i1, i2, lo)] = (start, u * q, row * q + column)
                    column += 2 * lo + 1
                row += self.in1[i1][0]
            used[start] = torch.zeros(u, q, dtype=torch.long)
            start += u * q
        self.proj_numel_per_edge = start
        groups, scales, blocks, column = [], [], [], 0
        for paths, weights, (mul_out, dim_out) in zip(self.paths, path_weights, self.out_blocks):
            ut = fused_contraction.group_rows(mul_out, [self.in1[i1][0] for i1, _, _ in paths])
            first = len(groups)
            for (i1, i2, lo), (linear_row, a_p) in zip(paths, weights):
                p_start, stride, first_element = place[(i1, i2, lo)]
                q = stride // used[p_start].shape[0]
                for u in range(self.in1[i1][0]):
                    used[p_start].view(-1)[first_element + u * q:first_element + u * q + 2 * lo + 1] += 1
                for u in range(0, self.in1[i1][0], max(ut, 1)):
                    groups.append((p_start, stride, first_element + u * q, q, linear_row + u * mul_out))
                    scales.append(a_p)
            if paths:
                blocks.append(KernelBlock(mul_out, dim_out, column, first, len(groups), ut))
            column += mul_out * dim_out
        counts = torch.cat([c.view(-1) for c in used.values()]) if used else torch.zeros(0, dtype=torch.long)
        # Each (i1, i2, lo) feeds the one output irrep of degree lo and parity p1 p2, so the kernels write dL/dT
        # into the gradient buffer rather than add to it. An irreps_out with a repeated irrep (two readers of one
        # element) breaks that, as does a block whose groups cannot be formed (ut = 0) or an output with l > 2:
        # such a tensor product keeps the torch path.
        self.kernel_layout_ok = (bool((counts <= 1).all()) and all(b.ut > 0 and b.dim <= 5 for b in blocks)
                                 and bool(blocks))
        self.register_buffer("t_groups", torch.tensor(groups, dtype=torch.int32).view(-1, 5), persistent=False)
        self.register_buffer("t_scale", torch.tensor(scales, dtype=torch.float32), persistent=False)
        # elements read by no block (a path missing for one member of a group) get a zero gradient
        self.kernel_plan = KernelPlan(blocks, column, zero_grad=not bool((counts == 1).all()))

    def forward(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        """TP(x, y) with per-edge weights `linear(hidden)`, by the backend `BACKEND` picks for these tensors.

        x [E, irreps_in1.dim], y [E, irreps_in2.dim], hidden [E, linear.in_features] -> [E, irreps_out.dim]."""
        backend = self.backend_for(hidden)
        if backend == "triton":
            saving = contextlib.nullcontext()  # what the contraction saves for backward: as it is
            if USE_FUSED_PROJECTION and fused_projection.usable(x):
                proj = fused_projection.FusedProjection.apply(x, y, self.projection, True)
                if RECOMPUTE_PROJECTION and torch.is_grad_enabled():
                    saving = fused_projection.recomputed(proj, x, y, self.projection)  # proj made again instead
            else:
                flat = [p.reshape(-1) for p in self._project(x, y)]
                proj = flat[0] if len(flat) == 1 else torch.cat(flat)
            # proj: [E * sum over groups U_l1 Q_l1], group-major
            with saving:
                return FusedEdgeWeightedContraction.apply(hidden, linear.weight, linear.bias, proj, self.t_groups,
                                                          self.t_scale, self.kernel_plan)
        if backend in libraries.LIBRARIES:
            return libraries.tensor_product(backend, self.irreps, x, y, linear(hidden))
        return self._contract_stacked(self._project(x, y), hidden, linear)  # per l1 group [E, U_l1, Q_l1]

    def backend_for(self, hidden: torch.Tensor) -> str:
        """The backend that runs for these per-edge features: `BACKEND` where it applies, else the next one down
        (library -> auto; triton -> torch; auto: triton in auto_dtypes(), else torch)."""
        if BACKEND in libraries.LIBRARIES and libraries.applies(BACKEND, self.irreps, hidden):
            return BACKEND
        if BACKEND != "torch" and self._kernels_apply(hidden, BACKEND == "triton"):
            return "triton"
        return "torch"

    def _project(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """T of every path, as one [E, U_l1, Q_l1] tensor per input degree l1: the outer product of the group's
        inputs with y times the stacked C(l1 . .). Slices are taken with `split` (whose backward concatenates)
        rather than indexing (whose backward writes into zero tensors of the full size)."""
        e = x.shape[0]
        x_parts = x.split([mul * (2 * l1 + 1) for mul, l1 in self.in1], dim=1)
        projected = []
        for l1 in self.group_columns:
            xs = [x_parts[i].reshape(e, self.in1[i][0], 2 * l1 + 1) for i in self.groups[l1]]
            xg = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)  # [E, U_l1, 2l1+1]
            outer = (xg.unsqueeze(-1) * y[:, None, None, :]).reshape(e, xg.shape[1], -1)  # [E, U_l1, (2l1+1) D2]
            projected.append(outer @ getattr(self, f"cg_{l1}"))  # [E, U_l1, Q_l1]
        return projected

    def _contract_stacked(self, projected, hidden, linear) -> torch.Tensor:
        """cuBLAS / CPU path: the Linear's rows permuted into stacked order and scaled, each T_o [E, sum U, 2lo+1]
        concatenated from the projections, then contracted."""
        e = hidden.shape[0]
        w_all = linear.weight.index_select(0, self.weight_perm) * self.weight_scale.unsqueeze(1)  # [numel, H]
        b_all = linear.bias.index_select(0, self.weight_perm) * self.weight_scale  # [numel]
        pieces = {}  # (input irrep, second input irrep, lo) -> [E, U, 2lo+1]
        for (l1, columns), part_l1 in zip(self.group_columns.items(), projected):
            members = self.groups[l1]
            for (i2, lo), part in zip(columns, part_l1.split([2 * lo + 1 for _, lo in columns], dim=2)):
                for i1, piece in zip(members, part.split([self.in1[i][0] for i in members], dim=1)):
                    pieces[(i1, i2, lo)] = piece
        ts, blocks = [], []
        for (mul_out, _), paths, rows in zip(self.out_blocks, self.paths, self.block_rows):
            if paths:
                t = [pieces[path] for path in paths]
                ts.append(t[0] if len(t) == 1 else torch.cat(t, dim=1))  # [E, sum U, 2lo+1]
                blocks.append((rows, mul_out))
        out = EdgeWeightedContraction.apply(hidden, w_all, b_all, blocks, *ts)  # [E, sum over paths W (2lo+1)]
        if len(blocks) == len(self.out_blocks):
            return out
        parts, it = [], iter(out.split([mul * dim for (mul, dim), p in zip(self.out_blocks, self.paths) if p], 1))
        for (mul_out, dim_out), paths in zip(self.out_blocks, self.paths):
            parts.append(next(it) if paths else out.new_zeros(e, mul_out * dim_out))
        return torch.cat(parts, dim=1)

    def _kernels_apply(self, hidden: torch.Tensor, any_dtype: bool = False) -> bool:
        # Measured on an H200 (benchmarks/RESULTS.md, issues 16 and 18): the kernels win in bf16, in fp32 with
        # 3xTF32 dots (largest layer forward 8.9 vs 14.0 ms) and in TF32; fp32 with strict ("ieee") dots is an
        # order of magnitude slower than cuBLAS, so "auto" keeps cuBLAS there
        return ((any_dtype or hidden.dtype in auto_dtypes()) and self.kernel_layout_ok
                and all(fused_contraction.usable(hidden, b.mul) for b in self.kernel_plan.blocks))


# Elements of per-edge weights (or their gradients) held at once, per output irrep and chunk of edges: 2**26 =
# 256 MiB in fp32.
WEIGHT_CHUNK_ELEMENTS = 1 << 26
# The backend switch (`set_backend`; environment variable ATOMICA_RAY_TP_BACKEND at import):
#   "auto"   the Triton kernels (fused_contraction.py) on a GPU where they win (bf16, fp16; fp32 with 3xTF32 or
#            TF32 dots, `auto_dtypes`); else "torch"
#   "torch"  torch matmuls only (cuBLAS on a GPU; the CPU path; the reference the others are checked against)
#   "triton" the Triton kernels in every dtype where they apply (GPU, or the CPU in Triton's interpreter)
#   "cuequivariance", "openequivariance": the libraries' tensor products where installed and applicable
#            (libraries.py), with the per-edge weights made whole; else "auto"
BACKENDS = ("auto", "torch", "triton", *libraries.LIBRARIES)


def _checked(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown tensor-product backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def backend_from_environment() -> str:
    """ATOMICA_RAY_TP_BACKEND (unset: "auto"); read once, at import."""
    return _checked(os.environ.get("ATOMICA_RAY_TP_BACKEND", "auto"))


BACKEND = backend_from_environment()


def set_backend(name: str) -> None:
    """Pick the tensor products' backend for every model in this process (see BACKENDS)."""
    global BACKEND
    BACKEND = _checked(name)


def get_backend() -> str:
    return BACKEND

# Where the contraction kernels run, the projections too (fused_projection.py); False: torch's outer @ cg.
USE_FUSED_PROJECTION = True
# The projection is made again in backward rather than held from forward to backward (fused_projection.recomputed):
# one more projection launch per layer for the largest tensors a training step holds.
RECOMPUTE_PROJECTION = True
# dL/dhidden inside the backward kernels (one [32, W] x [W, H] dot per row of T) or, False, as one cuBLAS matmul
# of the stored dL/dw: the kernels' dots have K = W = 16 or 32, too small for the tensor cores to pay (H100 A/B in
# benchmarks/RESULTS.md).
KERNEL_HIDDEN_GRAD = False
FUSED_DTYPES = (torch.bfloat16, torch.float16)
# bytes of dL/dw held at once on the kernels' path (512 MiB: the whole batch of a released layer in bf16)
FUSED_GRAD_CHUNK_BYTES = 1 << 29


def auto_dtypes() -> tuple[torch.dtype, ...]:
    """Dtypes in which "auto" runs the kernels: FUSED_DTYPES, and fp32 unless its dots would be strict fp32."""
    return FUSED_DTYPES + ((torch.float32,) if precision(torch.float32) != "ieee" else ())


class EdgeWeightedContraction(torch.autograd.Function):
    """out_o[e] = w_o[e]^T @ t_o[e] for each output irrep o, where the per-edge weights
    w[e] = hidden[e] @ weight^T + bias are made chunk by chunk of edges and made again in backward (cuBLAS / CPU).

    The per-edge weights of the released configuration are [E, 11264] per layer (about 3.8 GB in fp32 on a
    1000-block batch): holding them for backward is what made ATOMICA's step need 24 GiB. Here at most
    `WEIGHT_CHUNK_ELEMENTS` of them exist at a time; the price is one more [E, H] x [H, numel] matmul.

    Under autocast (bf16 / fp16) the weight matmul and the contraction run in that dtype with fp32 outputs and
    fp32-accumulated parameter gradients.

    hidden [E, H], weight [numel, H], bias [numel] in stacked order (output irrep o owns `rows_o = sum U * W`
    consecutive rows, (u, w) row-major), blocks = [(rows_o, W_o)], ts = [t_o [E, sum U, 2lo+1]].
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, blocks, *ts):
        dtype, out_dtype = _compute_dtypes(hidden)
        ctx.blocks, ctx.compute_dtype = blocks, dtype
        ctx.save_for_backward(hidden, weight, bias, *ts)
        with torch.autocast(hidden.device.type, enabled=False):
            e = hidden.shape[0]
            outs = [t.new_empty((e, w_o, t.shape[2]), dtype=out_dtype) for (_, w_o), t in zip(blocks, ts)]
            weight_parts, bias_parts = _in_dtype(weight, bias, [r for r, _ in blocks], dtype)
            for e0, e1 in _chunks(hidden, blocks):
                h = hidden[e0:e1].to(dtype)
                for (rows, w_o), wt, bs, t, out in zip(blocks, weight_parts, bias_parts, ts, outs):
                    w = torch.addmm(bs, h, wt.t()).view(e1 - e0, rows // w_o, w_o)  # [c, sum U, W]
                    out[e0:e1] = torch.bmm(w.transpose(1, 2), t[e0:e1].to(dtype))
            return torch.cat([out.view(e, -1) for out in outs], dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, *ts = ctx.saved_tensors
        blocks, dtype = ctx.blocks, ctx.compute_dtype
        acc = torch.promote_types(dtype, torch.float32)  # gradients summed over chunks in at least fp32
        e, n_hidden = hidden.shape
        with torch.autocast(hidden.device.type, enabled=False):
            grad_outs = grad_out.split([w_o * t.shape[2] for (_, w_o), t in zip(blocks, ts)], dim=1)
            grad_hidden = torch.zeros_like(hidden, dtype=acc)  # [E, H]
            grad_ts = [torch.empty_like(t, dtype=dtype) for t in ts]
            weight_parts, bias_parts = _in_dtype(weight, bias, [r for r, _ in blocks], dtype)
            h_ones = _with_ones(hidden, dtype)  # [E, H + 8]
            grad_weight_bias = []  # per block [rows, H + 8]
            for (rows, w_o), wt, bs, t, g, gt in zip(blocks, weight_parts, bias_parts, ts, grad_outs, grad_ts):
                step = max(1, WEIGHT_CHUNK_ELEMENTS // rows)
                total = None
                for e0 in range(0, e, step):
                    e1 = min(e, e0 + step)
                    c = e1 - e0
                    h = h_ones[e0:e1, :n_hidden]
                    w = torch.addmm(bs, h, wt.t()).view(c, rows // w_o, w_o)  # [c, sum U, W], made again
                    gc = g[e0:e1].reshape(c, w_o, -1).to(dtype)  # [c, W, 2lo+1]
                    torch.bmm(w, gc, out=gt[e0:e1])  # d t
                    gw = torch.bmm(t[e0:e1].to(dtype), gc.transpose(1, 2)).view(c, rows)  # d w  [c, rows]
                    grad_hidden[e0:e1] += gw @ wt
                    part = gw.t() @ h_ones[e0:e1]  # [rows, H + 8]
                    total = part if total is None else total.to(acc).add_(part)
                grad_weight_bias.append(total)
            grad_weight_bias = torch.cat(grad_weight_bias)  # [numel, H + 8]
        return (grad_hidden.to(hidden.dtype), grad_weight_bias[:, :n_hidden].to(weight.dtype),
                grad_weight_bias[:, n_hidden].to(bias.dtype), None, *(gt.to(t.dtype) for gt, t in zip(grad_ts, ts)))


class FusedEdgeWeightedContraction(torch.autograd.Function):
    """`EdgeWeightedContraction` by the Triton kernels of fused_contraction.py (GPU; bf16 / fp16, fp32 by 3xTF32):
    w is never stored, dL/dw is stored once (chunks of FUSED_GRAD_CHUNK_BYTES, usually the whole batch). Nor is
    any t_o or permuted copy of the Linear made: the kernels read T_o's rows from the projection buffer `proj`
    (group-major) and the Linear's rows in e3nn's order where `t_groups` says, scale by `t_scale` (see
    `StackedTensorProduct._plan_kernels`), write each block into its columns of the output, dL/dT into the same
    places of one gradient buffer and dL/dw in the Linear's row order, so that one matmul gives the Linear's
    weight and bias gradients.

    hidden [E, H], weight [numel, H], bias [numel] (the Linear's own), proj [E * P] -> [E, irreps_out.dim].
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, proj, t_groups, t_scale, plan: KernelPlan):
        dtype, out_dtype = _compute_dtypes(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            e = hidden.shape[0]
            make = torch.empty if plan.out_dim == sum(b.mul * b.dim for b in plan.blocks) else torch.zeros
            out = make((e, plan.out_dim), dtype=out_dtype, device=hidden.device)  # blocks without paths stay 0
            wt, bs = weight.to(dtype), bias.to(dtype)
            if e > 0:
                for b in plan.blocks:
                    fused_contraction.forward(hidden, wt, bs, proj, t_groups[b.group0:b.group1],
                                              t_scale[b.group0:b.group1], b.mul, b.dim, b.ut,
                                              out[:, b.column:b.column + b.mul * b.dim])
        ctx.plan, ctx.compute_dtype, ctx.param_dtypes = plan, dtype, (weight.dtype, bias.dtype)
        ctx.save_for_backward(hidden, wt, bs, proj, t_groups, t_scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, wt, bs, proj, t_groups, t_scale = ctx.saved_tensors
        plan, dtype = ctx.plan, ctx.compute_dtype
        acc = torch.promote_types(dtype, torch.float32)
        e, n_hidden = hidden.shape
        numel = wt.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            if grad_out.stride(1) != 1:
                grad_out = grad_out.contiguous()
            grad_hidden = torch.empty_like(hidden, dtype=acc)  # [E, H], written by the first block
            grad_proj = (torch.zeros_like if plan.zero_grad else torch.empty_like)(proj)
            h_ones = _with_ones(hidden, dtype)  # [E, H + 8]
            step = max(1, FUSED_GRAD_CHUNK_BYTES // (numel * dtype.itemsize))
            grad_weight_bias = torch.zeros((numel, n_hidden + 8), dtype=acc, device=hidden.device) if e == 0 else None
            for e0 in range(0, e, step):
                e1 = min(e, e0 + step)
                gw = torch.empty((e1 - e0, numel), dtype=dtype, device=hidden.device)  # dL/d(Linear output)
                for i, b in enumerate(plan.blocks):
                    fused_contraction.backward(hidden[e0:e1], wt, bs, proj, t_groups[b.group0:b.group1],
                                               t_scale[b.group0:b.group1], b.mul, b.dim, b.ut,
                                               grad_out[e0:e1, b.column:b.column + b.mul * b.dim], grad_proj, gw,
                                               grad_hidden[e0:e1] if KERNEL_HIDDEN_GRAD else None, e0, e,
                                               accumulate=i > 0)
                if not KERNEL_HIDDEN_GRAD:
                    grad_hidden[e0:e1] = gw @ wt  # [chunk, numel] x [numel, H]: one large cuBLAS matmul
                part = gw.t() @ h_ones[e0:e1]  # [numel, H + 8]
                grad_weight_bias = part if grad_weight_bias is None else grad_weight_bias.to(acc).add_(part)
        weight_dtype, bias_dtype = ctx.param_dtypes
        return (grad_hidden.to(hidden.dtype), grad_weight_bias[:, :n_hidden].to(weight_dtype),
                grad_weight_bias[:, n_hidden].to(bias_dtype), grad_proj, None, None, None)


def _compute_dtypes(hidden: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the matmuls, dtype of the output): the autocast dtype and fp32 under autocast, else hidden's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type), torch.float32
    return hidden.dtype, hidden.dtype


def _in_dtype(weight, bias, rows, dtype):
    """The weight rows and biases of each output block, contiguous, in the compute dtype."""
    return weight.to(dtype).split(rows), bias.to(dtype).split(rows)


def _with_ones(hidden, dtype):
    """[hidden, 1, 0 ...] [E, H + 8]: dL/dw^T @ it gives the Linear's weight and bias gradients in one matmul."""
    e = hidden.shape[0]
    return torch.cat((hidden.to(dtype), hidden.new_ones(e, 1, dtype=dtype), hidden.new_zeros(e, 7, dtype=dtype)),
                     dim=1)


def _chunks(hidden, blocks):
    """(e0, e1) of chunks of edges whose largest per-block weight tensor has at most WEIGHT_CHUNK_ELEMENTS."""
    step = max(1, WEIGHT_CHUNK_ELEMENTS // max(r for r, _ in blocks))
    for e0 in range(0, hidden.shape[0], step):
        yield e0, min(hidden.shape[0], e0 + step)
