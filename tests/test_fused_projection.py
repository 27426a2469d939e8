"""The Triton projection (models/fused_projection.py) computes the tensor product's per-group projections
(outer product of the group's inputs with y, times the stacked Wigner 3j symbols), forward and backward.

Run in Triton's interpreter (CPU, numpy), in a subprocess because the interpreter is chosen when the kernels are
defined. fp32 only: the interpreter's bf16 dot is not faithful.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import torch
from atomica_ray.models import fused_projection
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
