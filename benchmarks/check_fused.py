"""Check, on the GPU, that the Triton kernels (models/kernels/) compute what the cuBLAS path does,
for every tensor product of the released DenoisePretrainModel, in fp32 (TF32 off and on) and under bf16 autocast.

    python benchmarks/check_fused.py [--edges 20000]

Prints ||fused - cublas|| / ||cublas|| for the output and the gradients of x, hidden, the Linear weight and bias.
Expected: fp32 ~1e-6, TF32 ~1e-3, bf16 ~1e-2 (both paths round differently in bf16); NaN never.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import build  # noqa: E402

from atomica_ray.models.kernels import tensor_product  # noqa: E402
from atomica_ray.models.equivariant import TensorProductConv  # noqa: E402


def run(conv, x, y, h, g, fused: bool, bf16: bool):
    tensor_product.set_backend("triton" if fused else "torch")  # "triton": the kernels in every dtype
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
        out = conv.stacked_tp(x, y, hidden, conv.fc[3])
    grads = torch.autograd.grad(out, [x, h, conv.fc[3].weight, conv.fc[3].bias], g)
    return [out, *grads]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edges", type=int, default=20000)
    args = parser.parse_args()
    model = build("DenoisePretrainModel").cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    worst = 0.0
    for i, conv in enumerate(m for m in model.modules() if isinstance(m, TensorProductConv)):
        e = args.edges
        x = torch.randn(e, conv.tp.irreps_in1.dim, device="cuda", generator=gen, requires_grad=True)
        y = torch.randn(e, conv.tp.irreps_in2.dim, device="cuda", generator=gen)
        h = torch.randn(e, conv.fc[0].in_features, device="cuda", generator=gen, requires_grad=True)
        g = torch.randn(e, conv.tp.irreps_out.dim, device="cuda", generator=gen)
        for mode in ("fp32", "tf32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
            ref = run(conv, x, y, h, g, False, mode == "bf16")
            new = run(conv, x, y, h, g, True, mode == "bf16")
            rel = [((a.float() - b.float()).norm() / a.float().norm().clamp(min=1e-30)).item() for a, b in zip(ref, new)]
            if mode == "fp32":
                worst = max(worst, *rel)
            print(f"conv {i} {str(conv.tp.irreps_out):<48} {mode}  out/x/hidden/W/b rel diff "
                  + " ".join(f"{r:.1e}" for r in rel))
    print(f"check_fused: worst fp32 rel diff {worst:.1e} -> {'OK' if worst < 1e-4 else 'FAIL'}")


if __name__ == "__main__":
    main()
