"""Triton kernels for the projection ("prologue") of a tensor product: one launch per input degree l1 (GPU, optional).

`StackedTensorProduct` (tensor_product.py) first projects its input onto every path's output degree, per group of
input irreps of one degree l1 (their rows u stacked, U in all):

    proj[e, u, q] = sum_ij x[e, u, i] y[e, j] cg[i J + j, q]          # [E, U, Q]   i < I = 2l1+1, j < J

with y the spherical harmonics and cg the stacked Wigner 3j symbols of the group (its `cg_{l1}` buffer). In torch this
is a concatenation of the group's inputs, a broadcast outer product and a small misaligned matmul (K = 9, 27, 45),
each a kernel, and as many again in backward. Here a program owns a tile of edges, holds y and cg in registers and
walks over u: the outer product x_u (x) y is built in registers ([tile, I, J] padded to powers of 2, flattened) and
sent through one tensor-core product with cg. x's rows are read in place through a table of columns (`cols`), so no
concatenation is made; every group writes its columns of one output buffer.

Backward makes dL/d(outer) = dL/dproj_u @ cg^T the same way and reduces it against y (dL/dx, written: each x column
belongs to one row of one group) and against x (dL/dy, summed over u in registers and added into one fp32 buffer by
the group launches one after another).

Same function as the torch projection up to float rounding (tests/test_fused_projection.py, in Triton's interpreter).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .triton_common import TL_DTYPES, edge_tile, precision, runnable, tl, triton

EDGE_TILE = 32  # edges per program
NUM_WARPS = 4  # forward
# backward: with 4 warps the l1 = 2 kernel needs 177 registers a thread (bf16, sm_90, ptxas), with 8 warps 114
NUM_WARPS_BWD = 8


def usable(x: torch.Tensor) -> bool:
    return runnable(x)


if triton is not None:

    @triton.jit
    def _group_tiles(y_ptr, cg_ptr, E, stride_ye, I: tl.constexpr, J: tl.constexpr, Q: tl.constexpr,
                     IP: tl.constexpr, JP: tl.constexpr, QP: tl.constexpr, BE: tl.constexpr, DTYPE: tl.constexpr):
        """This program's edges, the index ranges, y [BE, JP] (fp32) and cg [IP JP, QP] (DTYPE), zero-padded: cg's
        row i JP + j is row i J + j of the unpadded [I J, Q] table."""
        e64, e_ok = edge_tile(E, BE)  # [BE]
        i = tl.arange(0, IP)
        j = tl.arange(0, JP)
        q = tl.arange(0, QP)
        y = tl.load(y_ptr + e64[:, None] * stride_ye + j[None, :], mask=e_ok[:, None] & (j < J)[None, :],
                    other=0.0).to(tl.float32)  # [BE, JP]
        k = tl.arange(0, IP * JP)
        ki, kj = k // JP, k % JP
        cg = tl.load(cg_ptr + (ki * J + kj)[:, None] * Q + q[None, :],
                     mask=((ki < I) & (kj < J))[:, None] & (q < Q)[None, :], other=0.0).to(DTYPE)  # [IP JP, QP]
        return e_ok, e64, i, q, y, cg

    @triton.jit
    def _project_fwd(x_ptr, y_ptr, cols_ptr, cg_ptr, out_ptr, E, stride_xe, stride_ye, stride_oe, U: tl.constexpr,
                     I: tl.constexpr, J: tl.constexpr, Q: tl.constexpr, IP: tl.constexpr, JP: tl.constexpr,
                     QP: tl.constexpr, BE: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
        """out[e, u Q + q] = sum_ij x[e, cols[u] + i] y[e, j] cg[i J + j, q]."""
        e_ok, e64, i, q, y, cg = _group_tiles(y_ptr, cg_ptr, E, stride_ye, I, J, Q, IP, JP, QP, BE, DTYPE)
        x_ok = e_ok[:, None] & (i < I)[None, :]
        out_ok = e_ok[:, None] & (q < Q)[None, :]
        for u in range(U):
            col = tl.load(cols_ptr + u)
            xu = tl.load(x_ptr + e64[:, None] * stride_xe + col + i[None, :], mask=x_ok, other=0.0)  # [BE, IP]
            outer = tl.reshape(xu.to(tl.float32)[:, :, None] * y[:, None, :], (BE, IP * JP))  # [BE, IP JP]
            proj = tl.dot(outer.to(DTYPE), cg, input_precision=PRECISION)  # [BE, QP] fp32
            tl.store(out_ptr + e64[:, None] * stride_oe + u * Q + q[None, :], proj.to(out_ptr.dtype.element_ty),
                     mask=out_ok)

    @triton.jit
    def _project_bwd(x_ptr, y_ptr, cols_ptr, cg_ptr, g_ptr, gx_ptr, gy_ptr, E, stride_xe, stride_ye, stride_ge,
                     stride_gxe, U: tl.constexpr, I: tl.constexpr, J: tl.constexpr, Q: tl.constexpr, IP: tl.constexpr,
                     JP: tl.constexpr, QP: tl.constexpr, BE: tl.constexpr, DTYPE: tl.constexpr,
                     PRECISION: tl.constexpr, GRAD_X: tl.constexpr, GRAD_Y: tl.constexpr):
        """With h[e, u, i, j] = sum_q cg[i J + j, q] g[e, u Q + q] (dL/d outer):
        gx[e, cols[u] + i] = sum_j y[e, j] h[e, u, i, j]              (written)
        gy[e, j] += sum_ui x[e, cols[u] + i] h[e, u, i, j]             (added)."""
        e_ok, e64, i, q, y, cg = _group_tiles(y_ptr, cg_ptr, E, stride_ye, I, J, Q, IP, JP, QP, BE, DTYPE)
        cg_t = tl.trans(cg)  # [QP, IP JP]
        x_ok = e_ok[:, None] & (i < I)[None, :]
        g_ok = e_ok[:, None] & (q < Q)[None, :]
        grad_y = tl.zeros((BE, JP), dtype=tl.float32)
        for u in range(U):
            col = tl.load(cols_ptr + u)
            g = tl.load(g_ptr + e64[:, None] * stride_ge + u * Q + q[None, :], mask=g_ok, other=0.0)  # [BE, QP]
            h = tl.dot(g.to(DTYPE), cg_t, input_precision=PRECISION)  # [BE, IP JP] fp32
            h = tl.reshape(h, (BE, IP, JP))
            if GRAD_X:
                grad_x = tl.sum(h * y[:, None, :], axis=2)  # [BE, IP]
                tl.store(gx_ptr + e64[:, None] * stride_gxe + col + i[None, :], grad_x.to(gx_ptr.dtype.element_ty),
                         mask=x_ok)
            if GRAD_Y:
                xu = tl.load(x_ptr + e64[:, None] * stride_xe + col + i[None, :], mask=x_ok, other=0.0)  # [BE, IP]
                grad_y += tl.sum(h * xu.to(tl.float32)[:, :, None], axis=1)  # [BE, JP]
        if GRAD_Y:
            j = tl.arange(0, JP)
            gy = gy_ptr + e64[:, None] * J + j[None, :]
            gy_ok = e_ok[:, None] & (j < J)[None, :]
            tl.store(gy, tl.load(gy, mask=gy_ok, other=0.0) + grad_y, mask=gy_ok)


class ProjectionGroup(NamedTuple):
    """The input irreps of one degree l1: U rows of I = 2l1+1 components, Q projected columns, and the group's first
    column in the [E, P] output (equivalently: its first element, times E, in the group-major layout)."""
    l1: int
    rows: int  # U
    dim: int  # I
    width: int  # Q
    column: int  # col0


class ProjectionPlan(nn.Module):
    """What the kernels need for every group of a `StackedTensorProduct`, in its `group_columns` order. Holds only
    non-persistent buffers (they follow `.to(device)`; no state-dict keys):
    `cols_{l1}` int32 [U]: x column of component 0 of the group's row u (rows in `groups[l1]` order);
    `cg_{l1}` [I J, Q]: the stacked Wigner 3j symbols, row i J + j (a copy of the tensor product's buffer)."""

    def __init__(self, in1: list[tuple[int, int]], groups: dict[int, list[int]],
                 group_columns: dict[int, list[tuple[int, int]]], cgs: dict[int, torch.Tensor]):
        super().__init__()
        starts = [0]
        for mul, l1 in in1:
            starts.append(starts[-1] + mul * (2 * l1 + 1))
        self.x_dim = starts[-1]
        self.groups: list[ProjectionGroup] = []
        column, covered = 0, 0
        for l1, columns in group_columns.items():
            dim = 2 * l1 + 1
            cols = [starts[i] + r * dim for i in groups[l1] for r in range(in1[i][0])]
            cg = cgs[l1]
            width = sum(2 * lo + 1 for _, lo in columns)
            if cg.shape[1] != width or cg.shape[0] % dim:
                raise ValueError(f"cg_{l1} has shape {tuple(cg.shape)}, expected [(2l1+1) J, {width}]")
            self.register_buffer(f"cols_{l1}", torch.tensor(cols, dtype=torch.int32, device=cg.device),
                                 persistent=False)
            self.register_buffer(f"cg_{l1}", cg.detach().clone().contiguous(), persistent=False)
            self.groups.append(ProjectionGroup(l1, len(cols), dim, width, column))
            column += len(cols) * width
            covered += len(cols) * dim
        if len({cgs[g.l1].shape[0] // g.dim for g in self.groups}) > 1:
            raise ValueError("the cg tables disagree on the second input's dimension J")
        self.y_dim = cgs[self.groups[0].l1].shape[0] // self.groups[0].dim if self.groups else 0
        self.width = column  # P
        self.covers_x = covered == self.x_dim  # else some x columns are read by no group: their gradient is 0

    def tables(self):
        """(group, cols [U] int32, cg [I J, Q]) per group."""
        for g in self.groups:
            yield g, getattr(self, f"cols_{g.l1}"), getattr(self, f"cg_{g.l1}")


def projection_plan(stacked_tp) -> ProjectionPlan:
    """The plan of a `StackedTensorProduct` (its in1, groups, group_columns and cg_{l1} buffers)."""
    return ProjectionPlan(stacked_tp.in1, stacked_tp.groups, stacked_tp.group_columns,
                          {l1: getattr(stacked_tp, f"cg_{l1}") for l1 in stacked_tp.group_columns})


def _dims(g: ProjectionGroup, j: int, dtype: torch.dtype) -> dict:
    # tl.dot needs every dimension >= 16: J and Q are padded to at least 16 (IP JP >= 16 then)
    return dict(U=g.rows, I=g.dim, J=j, Q=g.width, IP=triton.next_power_of_2(g.dim),
                JP=max(16, triton.next_power_of_2(j)), QP=max(16, triton.next_power_of_2(g.width)), BE=EDGE_TILE,
                DTYPE=TL_DTYPES[dtype], PRECISION=precision(dtype))


def forward(x, y, cols, cg, g: ProjectionGroup, out: torch.Tensor, dtype: torch.dtype) -> None:
    """out [E, U Q] (any row stride: a column range of [E, P], or a group's block of the group-major buffer) <- the
    group's projection of x [E, Dx] and y [E, J] (column stride 1, any float dtype, cast on load) by cg [I J, Q],
    computed in `dtype` with fp32 accumulation."""
    e = x.shape[0]
    assert x.stride(1) == 1 and y.stride(1) == 1 and out.stride(1) == 1 and out.shape == (e, g.rows * g.width)
    assert cols.dtype == torch.int32 and cols.is_contiguous() and cg.is_contiguous() and cols.numel() == g.rows
    grid = (triton.cdiv(e, EDGE_TILE),)
    _project_fwd[grid](x, y, cols, cg, out, e, x.stride(0), y.stride(0), out.stride(0),
                       num_warps=NUM_WARPS, **_dims(g, y.shape[1], dtype))


def backward(x, y, cols, cg, g: ProjectionGroup, grad_out, grad_x, grad_y, dtype: torch.dtype) -> None:
    """From grad_out [E, U Q] (any row stride): the group's columns of grad_x [E, Dx] written (if not None), and
    its part of dL/dy added into grad_y [E, J] fp32 contiguous (if not None)."""
    e = x.shape[0]
    assert grad_out.stride(1) == 1 and grad_out.shape == (e, g.rows * g.width)
    assert grad_x is None or (grad_x.stride(1) == 1 and grad_x.shape == x.shape)
    assert grad_y is None or (grad_y.is_contiguous() and grad_y.dtype == torch.float32 and grad_y.shape == y.shape)
    grid = (triton.cdiv(e, EDGE_TILE),)
    gx = grad_x if grad_x is not None else x  # placeholders: not touched when the flag is off
    gy = grad_y if grad_y is not None else y
    _project_bwd[grid](x, y, cols, cg, grad_out, gx, gy, e, x.stride(0), y.stride(0), grad_out.stride(0),
                       gx.stride(0), GRAD_X=grad_x is not None, GRAD_Y=grad_y is not None, num_warps=NUM_WARPS_BWD,
                       **_dims(g, y.shape[1], dtype))


def _group_view(buffer: torch.Tensor, g: ProjectionGroup, e: int, group_major: bool) -> torch.Tensor:
    """The group's [E, U Q] part of an [E, P] buffer (a column range) or of a flat group-major one (a block)."""
    n = g.rows * g.width
    if group_major:
        return buffer[g.column * e:(g.column + n) * e].view(e, n)
    return buffer[:, g.column:g.column + n]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype under autocast, else x's (the dtype torch's `outer @ cg` would run in)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride along its features, as the kernels read rows (a copy only where needed)."""
    return t if t.stride(1) == 1 else t.contiguous()


def project(x, y, plan: ProjectionPlan, group_major: bool, dtype: torch.dtype) -> torch.Tensor:
    """Every group's projection, no autograd: [E, P], or group-major [E P] (see FusedProjection)."""
    e = x.shape[0]
    if x.shape[1] != plan.x_dim or y.shape[1] != plan.y_dim or y.shape[0] != e:
        raise ValueError(f"x {tuple(x.shape)}, y {tuple(y.shape)}: expected [E, {plan.x_dim}], [E, {plan.y_dim}]")
    out = torch.empty((e * plan.width,) if group_major else (e, plan.width), dtype=dtype, device=x.device)
    if e > 0:
        for g, cols, cg in plan.tables():
            forward(x, y, cols, cg, g, _group_view(out, g, e, group_major), dtype)
    return out


class _MadeAgain:
    """Stands, among a backward's saved tensors, for a projection made again from x and y when it is unpacked."""


def recomputed(proj: torch.Tensor, x: torch.Tensor, y: torch.Tensor, plan: ProjectionPlan):
    """Saved-tensor hooks under which an autograd Function that saves `proj` (the group-major output of
    FusedProjection(x, y, plan)) keeps no copy of it: its backward makes it again from x and y, which the projection's
    own backward holds anyway. One more projection launch per layer in backward for [E, P] less memory held per
    layer between forward and backward: the largest saved tensors of a training step (benchmarks/RESULTS.md)."""
    ptr, shape, dtype = proj.data_ptr(), proj.shape, proj.dtype
    x, y = _unit_stride(x).detach(), _unit_stride(y).detach()

    def pack(t: torch.Tensor):
        return _MadeAgain if t.data_ptr() == ptr and t.shape == shape else t

    def unpack(saved):
        return project(x, y, plan, True, dtype) if saved is _MadeAgain else saved

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class FusedProjection(torch.autograd.Function):
    """Every group's projection of a tensor product, one kernel launch per group (forward and backward).

    x [E, Dx], y [E, J] -> [E, P] with group g in columns [col0_g, col0_g + U_g Q_g), element (e, u, q) of the group
    at column col0_g + u Q_g + q; or, with group_major=True, the flat [E P] buffer `StackedTensorProduct` hands to
    `FusedEdgeWeightedContraction` (group g's [E, U_g Q_g] block starting at element col0_g E). In the autocast
    dtype under autocast (fp32 accumulation), else in x's dtype."""

    @staticmethod
    def forward(ctx, x, y, plan: ProjectionPlan, group_major: bool = False):
        dtype = _compute_dtype(x)
        x, y = _unit_stride(x), _unit_stride(y)
        out = project(x, y, plan, group_major, dtype)
        ctx.save_for_backward(x, y)
        ctx.plan, ctx.group_major, ctx.dtype = plan, group_major, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        plan, group_major = ctx.plan, ctx.group_major
        e = x.shape[0]
        need_x, need_y = ctx.needs_input_grad[:2]
        if group_major or grad.stride(-1) != 1:
            grad = grad.contiguous()
        grad_x = ((torch.empty_like if plan.covers_x else torch.zeros_like)(x, memory_format=torch.contiguous_format)
                  if need_x else None)
        grad_y = torch.zeros(y.shape, dtype=torch.float32, device=y.device) if need_y else None
        if e > 0 and (need_x or need_y):
            for g, cols, cg in plan.tables():
                backward(x, y, cols, cg, g, _group_view(grad, g, e, group_major), grad_x, grad_y, ctx.dtype)
        return grad_x, None if grad_y is None else grad_y.to(y.dtype), None, None
