"""The Triton projection (models/kernels/fused_projection.py) computes the tensor product's per-group projections
(outer product of the group's inputs with y, times the stacked Wigner 3j symbols), forward and backward.

Run in Triton's interpreter (CPU, numpy), in a subprocess because the interpreter is chosen when the kernels are
defined. fp32 only: the interpreter's bf16 dot is not faithful. The interpreter accepts code the GPU compiler
rejects (e.g. a tl.dot dimension below 16), so the kernels are also compiled for an H100 (sm_90, no GPU needed).
"""

import os
import subprocess
import sys

import pytest

from triton_sm90 import compile_for_sm90

pytest.importorskip("triton")

SCRIPT = r"""
import torch
from atomica_ray.models.kernels import fused_projection
from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.interaction import irreps_sequence


def reference(stp, x, y):
    # per group: rows of the group's input irreps stacked, outer product with y, times cg_{l1}   [E, U Q]
    e = x.shape[0]
    parts = x.split([mul * (2 * l1 + 1) for mul, l1 in stp.in1], dim=1)
    out = []
    for l1 in stp.group_columns:
        xg = torch.cat([parts[i].reshape(e, stp.in1[i][0], 2 * l1 + 1) for i in stp.groups[l1]], dim=1)
        outer = (xg.unsqueeze(-1) * y[:, None, None, :]).reshape(e, xg.shape[1], -1)
        out.append((outer @ getattr(stp, f"cg_{l1}")).reshape(e, -1))
    return out


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


torch.manual_seed(0)
seq = irreps_sequence(32, 16)
cases = [(seq[0], seq[1]), (seq[1], seq[2]), (seq[2], seq[3]), (seq[3], seq[3]),
         ("8x0e + 2x3e", "8x0e")]  # l1 = 3 (I = 7) reaches no output: its x columns get a zero gradient
worst, groups = 0.0, 0
for irreps_in, irreps_out in cases:
    stp = TensorProductConv(irreps_in, "1x0e + 1x1o + 1x2e", irreps_out, 128, 128).stacked_tp
    plan = fused_projection.projection_plan(stp)
    e = 45  # not a multiple of the edge tile
    x = torch.randn(e, plan.x_dim, requires_grad=True)
    y = torch.randn(e, 9, requires_grad=True)
    assert fused_projection.usable(x)
    ref = reference(stp, x, y)
    g = [torch.randn_like(r) for r in ref]
    ref_grads = torch.autograd.grad(ref, [x, y], g)
    for group_major in (False, True):
        out = fused_projection.FusedProjection.apply(x, y, plan, group_major)
        if group_major:
            want, grad = torch.cat([r.reshape(-1) for r in ref]), torch.cat([t.reshape(-1) for t in g])
        else:
            want, grad = torch.cat(ref, dim=1), torch.cat(g, dim=1)
        assert out.shape == want.shape, (out.shape, want.shape)
        grads = torch.autograd.grad(out, [x, y], grad)
        for a, b in zip([want, *ref_grads], [out, *grads]):
            assert torch.isfinite(b).all()
            worst = max(worst, rel(a, b))
    # y without gradient (the usual case), and the x gradient alone
    x2 = x.detach().requires_grad_()
    out = fused_projection.FusedProjection.apply(x2, y.detach(), plan)
    (gx,) = torch.autograd.grad(out, [x2], torch.cat(g, dim=1))
    worst = max(worst, rel(ref_grads[0], gx))
    groups += len(plan.groups)
print("WORST", worst, "GROUPS", groups)
"""


def test_triton_projection_equals_torch_projection_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("WORST")][-1].split()
    worst, groups = float(line[1]), int(line[3])
    assert groups == 1 + 3 + 3 + 3 + 1, groups  # every group of every case ran through the kernels
    assert worst < 1e-5, worst


COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import torch
from atomica_ray.models.kernels import fused_projection as fp
from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.interaction import irreps_sequence

seq = irreps_sequence(32, 16)
target, n = GPUTarget("cuda", 90, 32), 0
for irreps_in, irreps_out in [(seq[3], seq[3]), ("8x0e + 2x3e", "8x0e + 2x3e")]:
    plan = fp.projection_plan(TensorProductConv(irreps_in, "1x0e + 1x1o + 1x2e", irreps_out, 16, 16).stacked_tp)
    for dtype, p in [(torch.bfloat16, "*bf16"), (torch.float32, "*fp32")]:
        for g in plan.groups:
            dims = fp._dims(g, 9, dtype)
            fwd = dict(x_ptr=p, y_ptr="*fp32", cols_ptr="*i32", cg_ptr="*fp32", out_ptr=p, E="i32", stride_xe="i32",
                       stride_ye="i32", stride_oe="i32")
            k = triton.compile(ASTSource(fp._project_fwd, {**fwd, **{k: "constexpr" for k in dims}},
                                         constexprs=dims), target=target, options=dict(num_warps=fp.NUM_WARPS))
            assert k.metadata.shared <= 232448, (dims, k.metadata.shared)  # one program's shared memory (H100)
            for flags in [dict(GRAD_X=True, GRAD_Y=True), dict(GRAD_X=True, GRAD_Y=False)]:
                c = {**dims, **flags}
                bwd = dict(x_ptr=p, y_ptr="*fp32", cols_ptr="*i32", cg_ptr="*fp32", g_ptr=p, gx_ptr=p, gy_ptr="*fp32",
                           E="i32", stride_xe="i32", stride_ye="i32", stride_ge="i32", stride_gxe="i32")
                k = triton.compile(ASTSource(fp._project_bwd, {**bwd, **{k: "constexpr" for k in c}}, constexprs=c),
                                   target=target, options=dict(num_warps=fp.NUM_WARPS_BWD))
                assert k.metadata.shared <= 232448, (c, k.metadata.shared)
            n += 3
print("COMPILED", n)
"""


def test_kernels_compile_for_sm90(tmp_path):
    """The kernels are valid for an H100 (ptxas), not only for the interpreter, and fit one program's shared
    memory (bf16, and fp32 with 3xTF32 dots)."""
    compile_for_sm90(COMPILE, tmp_path, expected=30)  # 5 groups, 2 dtypes, 3 kernel variants
