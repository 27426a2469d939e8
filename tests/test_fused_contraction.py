"""The Triton contraction (models/fused_contraction.py) computes the cuBLAS path's function, forward and backward.

Run in Triton's interpreter (CPU, numpy), in a subprocess because the interpreter is chosen when the kernels are
defined. fp32 only: the interpreter's bf16 dot is not faithful. On the GPU, benchmarks/check_fused.py checks every
tensor product of the released model in fp32, TF32 and bf16 (figures in benchmarks/RESULTS.md).
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import torch
from atomica_ray.models import fused_contraction, tensor_product
from atomica_ray.models.equivariant import TensorProductConv

tensor_product.FUSED_DTYPES = (torch.float32,)  # production uses the kernels in bf16 only
tensor_product.WEIGHT_CHUNK_ELEMENTS = 2000  # several chunks of edges in backward, on both paths
tensor_product.FUSED_GRAD_CHUNK_ELEMENTS = 2000
torch.manual_seed(0)
worst, used = 0.0, 0
for irreps_in, irreps_out, hidden in [("16x0e + 16x1o", "16x0e + 16x1o + 16x2e", 40),
                                      ("8x0e + 4x1o + 4x2e", "16x0o + 16x0e + 2x1o", 24)]:
    conv = TensorProductConv(irreps_in, "1x0e + 1x1o + 1x2e", irreps_out, hidden, hidden)
    e = 45  # not a multiple of the edge tile
    x = torch.randn(e, conv.tp.irreps_in1.dim, requires_grad=True)
    y = torch.randn(e, 9)
    h = torch.randn(e, hidden, requires_grad=True)
    g = torch.randn(e, conv.tp.irreps_out.dim)
    results = []
    for fused in (False, True):
        tensor_product.USE_FUSED = fused
        out = conv.stacked_tp(x, y, conv.fc[2](conv.fc[1](conv.fc[0](h))), conv.fc[3])
        grads = torch.autograd.grad(out, [x, h, conv.fc[3].weight, conv.fc[3].bias, conv.fc[0].weight], g)
        results.append([out, *grads])
    for a, b in zip(*results):
        assert torch.isfinite(b).all()
        worst = max(worst, ((a - b).norm() / a.norm()).item())
    used += sum(fused_contraction.usable(h, mul) for mul, _ in conv.stacked_tp.out_blocks)
print("WORST", worst, "USED", used)
"""


def test_triton_contraction_equals_cublas_path_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("WORST")][-1].split()
    worst, used = float(line[1]), int(line[3])
    assert used >= 4, "the kernels were not used for the 16-channel output blocks"
    assert worst < 1e-5, worst
