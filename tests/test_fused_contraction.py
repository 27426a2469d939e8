"""The Triton contraction (models/kernels/fused_contraction.py) computes the cuBLAS path's function, forward and
backward.

Run in Triton's interpreter (CPU, numpy), in a subprocess because the interpreter is chosen when the kernels are
defined. fp32 only: the interpreter's bf16 dot is not faithful. Covered: the tensor product of every layer kind of
the released model (irreps_sequence(32, 16), spherical harmonics up to l = 2), whose T_o the kernels read through
the group table of the group-major projection buffer, plus two small ones: one with projected elements that no
output reads (their gradient must be zero) and an output irrep without paths (it must stay zero). The three
backward variants (two kernels, the default; one kernel; one kernel that also makes dL/dhidden) take turns over
the cases. On the GPU, benchmarks/check_fused.py checks every tensor product of the released model in fp32, TF32
and bf16."""

import os
import subprocess
import sys

import pytest

from triton_sm90 import compile_for_sm90

pytest.importorskip("triton")

SCRIPT = r"""
import torch
from atomica_ray.models.kernels import fused_contraction, tensor_product
from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.interaction import irreps_sequence

tensor_product.WEIGHT_CHUNK_ELEMENTS = 2000  # several chunks of edges in backward, on both paths
tensor_product.FUSED_GRAD_CHUNK_BYTES = 1000000  # dL/dw of released layers: up to 11264 per edge, 1 to 3 chunks
torch.manual_seed(0)
seq = irreps_sequence(32, 16)
cases = [(seq[0], seq[1]), (seq[1], seq[2]), (seq[2], seq[3]), (seq[3], seq[3]),
         ("16x0e + 16x1o + 16x1e", "16x0e + 16x1o"),  # 1e x 1o -> 0o and 1e x 2e -> 1e have no output
         ("16x0e", "16x0e + 16x1e")]  # no path into 1e
for n, (irreps_in, irreps_out) in enumerate(cases):
    # the three backward variants in turn: two kernels (default), one kernel, one kernel making dL/dhidden too
    variant = n % 3
    fused_contraction.SPLIT_BACKWARD = variant == 0
    tensor_product.KERNEL_HIDDEN_GRAD = variant == 2
    tensor_product.RECOMPUTE_PROJECTION = n % 2 == 0  # the projection held for backward, or made again there
    conv = TensorProductConv(irreps_in, "1x0e + 1x1o + 1x2e", irreps_out, 24, 24)
    stp = conv.stacked_tp
    e = 45  # not a multiple of the edge tile
    x = torch.randn(e, conv.tp.irreps_in1.dim, requires_grad=True)
    y = torch.randn(e, 9, requires_grad=True)
    h = torch.randn(e, 24, requires_grad=True)
    g = torch.randn(e, conv.tp.irreps_out.dim)
    results, kernels = [], []
    for fused in (False, True):
        tensor_product.set_backend("triton" if fused else "torch")  # "triton": the kernels in fp32 too
        hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
        kernels.append(stp.backend_for(hidden) == "triton")
        out = stp(x, y, hidden, conv.fc[3])
        grads = torch.autograd.grad(out, [x, y, h, conv.fc[3].weight, conv.fc[3].bias, conv.fc[0].weight], g)
        results.append([out, *grads])
    rel = [((a - b).norm() / a.norm().clamp(min=1e-30)).item() for a, b in zip(*results)]
    assert all(torch.isfinite(b).all() for b in results[1])
    print("CASE", irreps_out.replace(" ", ""), int(kernels[0]), int(kernels[1]), int(stp.kernel_plan.zero_grad),
          max(rel), float(results[1][0].abs().max()), variant)

# RECOMPUTE_PROJECTION: the projection is not held from forward to backward, and the gradients are the same
import gc, weakref
from atomica_ray.models.kernels import fused_projection
made, apply = [], fused_projection.FusedProjection.apply
fused_projection.FusedProjection.apply = lambda *a: made.append(apply(*a)) or made[-1]
tensor_product.set_backend("triton")
conv = TensorProductConv(seq[2], "1x0e + 1x1o + 1x2e", seq[3], 24, 24)
x, y, h = torch.randn(45, conv.tp.irreps_in1.dim), torch.randn(45, 9), torch.randn(45, 24, requires_grad=True)
held, grads = [], []
for recompute in (False, True):
    tensor_product.RECOMPUTE_PROJECTION = recompute
    out = conv.stacked_tp(x, y, h, conv.fc[3])
    proj = weakref.ref(made.pop())
    gc.collect()
    held.append(int(proj() is not None))
    grads.append(torch.autograd.grad(out, [h, conv.fc[3].weight], torch.ones_like(out)))
same = max((a - b).abs().max().item() for a, b in zip(*grads))
print("HELD", *held, same)
"""


@pytest.fixture(scope="module")
def cases():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [ln.split()[1:] for ln in done.stdout.splitlines() if ln.startswith("CASE")]
    assert len(rows) == 6, done.stdout
    held = [ln.split()[1:] for ln in done.stdout.splitlines() if ln.startswith("HELD")]
    assert held and held[0][:2] == ["1", "0"], f"the projection must be freed after forward with recompute: {held}"
    assert float(held[0][2]) == 0.0, f"recomputing the projection changed the gradients: {held}"
    assert {int(r[-1]) for r in rows} == {0, 1, 2}, "every backward variant ran"
    return [(name, int(off), int(on), int(zero), float(worst), float(peak))
            for name, off, on, zero, worst, peak, _ in rows]


def test_triton_contraction_equals_cublas_path_in_the_interpreter(cases):
    for name, off, on, _, worst, peak in cases:
        assert (off, on) == (0, 1), f"{name}: the kernels must run only on the triton backend"
        assert peak > 0, name
        assert worst < 1e-5, (name, worst)  # output and the gradients of x, y, hidden, both Linears


def test_unread_projections_get_zero_gradient_and_pathless_blocks_stay_zero(cases):
    zero_grad = {name: zero for name, _, _, zero, _, _ in cases}
    assert zero_grad["16x0e+16x1o"] == 1  # the case exists: the kernels' buffer has elements no block reads
    assert not any(zero for name, zero in zero_grad.items() if "32x0e" in name)  # released layers read all


COMPILE = r"""
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from atomica_ray.models.kernels import fused_contraction as fc
from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.interaction import irreps_sequence

seq = irreps_sequence(32, 16)
stp = TensorProductConv(seq[3], "1x0e + 1x1o + 1x2e", seq[3], 128, 128).stacked_tp  # the released layer 3
target, n = GPUTarget("cuda", 90, 32), 0
dtypes = {"*bf16": torch.bfloat16, "*fp32": torch.float32}


def build(fn, signature, constexprs, warps, dtype):
    global n
    kernel = triton.compile(ASTSource(fn, {**signature, **{k: "constexpr" for k in constexprs}},
                                      constexprs=constexprs), target=target, options=dict(num_warps=warps))
    estimate = fc.shared_memory(torch.zeros(1, 128, dtype=dtype))
    assert kernel.metadata.shared <= min(estimate, fc.SHARED_MEMORY), (fn.__name__, kernel.metadata.shared, estimate)
    n += 1


for i, b in enumerate(stp.kernel_plan.blocks):
    # bf16 (training): every block's forward and split backward; the single-kernel backward variants and fp32
    # (3xTF32 dots, one pipeline stage) for the blocks of 2lo+1 = 1 and 5 only (compiling is slow)
    for p in ("*bf16", "*fp32") if i == 2 else ("*bf16",):
        c = fc._dims(torch.zeros(1, 128, dtype=dtypes[p]), torch.zeros(1, dtype=dtypes[p]),
                     stp.t_groups[b.group0:b.group1], b.mul, b.dim, b.ut)
        assert c["PRECISION"] == ("ieee" if p == "*bf16" else "tf32x3"), c
        common = dict(h_ptr=p, w_ptr=p, b_ptr=p, t_ptr=p, grp_ptr="*i32", scale_ptr="*fp32")
        fwd = dict(common, out_ptr="*fp32", E="i32", stride_he="i32", stride_oe="i32")
        build(fc._contract_fwd, fwd, c, fc.NUM_WARPS, dtypes[p])
        bwd = dict(common, g_ptr="*fp32", gt_ptr=p, gw_ptr=p, gh_ptr="*fp32", E="i32", e_first="i32", n_edges="i32",
                   stride_he="i32", stride_ge="i32", stride_gwe="i32")
        # split backward (default): dL/dT with w made again, dL/dw without a product
        bwd_t = {k: v for k, v in bwd.items() if k not in ("t_ptr", "gw_ptr", "gh_ptr", "stride_gwe")}
        build(fc._contract_bwd_t, bwd_t, c, fc.NUM_WARPS_BWD, dtypes[p])
        cw = {k: v for k, v in c.items() if k not in ("H", "HP", "NUM_STAGES", "PRECISION")}
        bwd_w = dict(t_ptr=p, grp_ptr="*i32", scale_ptr="*fp32", g_ptr="*fp32", gw_ptr=p, E="i32", e_first="i32",
                     n_edges="i32", stride_ge="i32", stride_gwe="i32")
        build(fc._contract_bwd_w, bwd_w, cw, fc.NUM_WARPS, dtypes[p])
        if i in (0, 2) and p == "*bf16":
            for hidden_grad in (False, True):  # single kernel: dL/dhidden by cuBLAS or inside the kernel
                build(fc._contract_bwd, bwd, {**c, "ACCUMULATE": True, "HIDDEN_GRAD": hidden_grad},
                      fc.NUM_WARPS_BWD, dtypes[p])
print("COMPILED", n)
"""


def test_kernels_compile_for_sm90(tmp_path):
    """The kernels are valid for an H100 / H200 (ptxas), not only for the interpreter: every block of a released
    layer, each within the shared memory of one program (fp32's 3xTF32 tiles at two stages were not: device run)."""
    compile_for_sm90(COMPILE, tmp_path, expected=25)  # 6 blocks x 3 kernels (bf16) + 3 (fp32) + 4 single-kernel
