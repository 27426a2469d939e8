"""Every tensor-product backend against the fp32 torch path, on every tensor product of a model (issue 18's parity
gate for the kernel libraries), and each backend's forward + backward time at one large edge count.

    python benchmarks/check_backends.py                      # the released pretraining model (bench_step.py)
    python benchmarks/check_backends.py --edges 85344 --bf16 # timing at batch 0's atom-level edge count, in bf16

Parity: for each distinct TensorProductConv of the model, random inputs of `--parity-edges` edges; output and the
gradients with respect to the node features, the hidden edge features and the weight Linear, each as
|a - b| / |a| against the torch backend in fp32 (TF32 off). Gate: 1e-4 (the models' parity tolerance); exits 1 if
a backend that ran is beyond it. Backends that do not apply (not installed, wrong dtype) are listed as skipped.
Timing: CUDA events, median of `--repeats` forward + backward passes of the largest tensor product, and of its
forward alone without autograd (as inference runs it). The Triton kernels' fp32 dots are 3xTF32 unless
`--fp32-dot ieee` (triton_common.FP32_DOT). OpenEquivariance builds its extension at import; on a machine without
network, `source benchmarks/oeq_env.sh SITE` first (see there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import build  # noqa: E402

from atomica_ray.models.equivariant import TensorProductConv  # noqa: E402
from atomica_ray.models.kernels import libraries, set_backend, triton_common  # noqa: E402

GATE = 1e-4


def inputs(conv: TensorProductConv, edges: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n_in, n_sh = conv.tp.irreps_in1.dim, conv.tp.irreps_in2.dim
    n_hidden = conv.fc[0].in_features
    x = torch.randn(edges, n_in, device="cuda", generator=gen).to(dtype).requires_grad_()  # [E, in]
    y = torch.randn(edges, n_sh, device="cuda", generator=gen).to(dtype)  # [E, sh]
    h = torch.randn(edges, n_hidden, device="cuda", generator=gen).to(dtype).requires_grad_()  # [E, edge]
    g = torch.randn(edges, conv.tp.irreps_out.dim, device="cuda", generator=gen).to(dtype)  # [E, out]
    return x, y, h, g


def forward_backward(conv: TensorProductConv, backend: str, x, y, h, g, bf16: bool = False):
    """(backend that ran, [out, dL/dx, dL/dh, dL/dW]); `bf16`: under autocast, as `precision: bf16` trains"""
    set_backend(backend)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
        ran = conv.stacked_tp.backend_for(hidden)
        out = conv.stacked_tp(x, y, hidden, conv.fc[3])
    return ran, [out, *torch.autograd.grad(out, [x, h, conv.fc[3].weight], g.to(out.dtype))]


def forward_only(conv: TensorProductConv, backend: str, x, y, h, bf16: bool = False):
    set_backend(backend)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        return conv.stacked_tp(x, y, conv.fc[2](conv.fc[1](conv.fc[0](h))), conv.fc[3])


def timed(step, repeats: int) -> float:
    """Median milliseconds of `step` by CUDA events."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="triton,cuequivariance,openequivariance")
    parser.add_argument("--parity-edges", type=int, default=2000)
    parser.add_argument("--edges", type=int, default=85344, help="edges of the timed tensor product")
    parser.add_argument("--bf16", action="store_true", help="time in bf16 (parity is always fp32)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fp32-dot", default=None, choices=["tf32x3", "ieee"],
                        help="the Triton kernels' fp32 dots (triton_common.FP32_DOT; default tf32x3)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.fp32_dot:
        triton_common.FP32_DOT = args.fp32_dot
    torch.manual_seed(0)
    model = build("DenoisePretrainModel").cuda()  # the released configuration, as bench_step.py times it
    convs, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, TensorProductConv):
            key = (str(module.tp.irreps_in1), str(module.tp.irreps_in2), str(module.tp.irreps_out))
            if key not in seen:
                seen.add(key)
                convs.append((name, module))
    backends = [b for b in args.backends.split(",") if b]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; installed: "
          + ", ".join(f"{lib} {'yes' if libraries.available(lib) else 'no'}" for lib in libraries.LIBRARIES))
    print(f"parity, fp32, {args.parity_edges} edges: max over out, dL/dx, dL/dhidden, dL/dW of |a - b| / |a|")
    worst = 0.0
    for name, conv in convs:
        x, y, h, g = inputs(conv, args.parity_edges, torch.float32)
        _, ref = forward_backward(conv, "torch", x, y, h, g)
        cells = []
        for backend in backends:
            ran, res = forward_backward(conv, backend, x, y, h, g)
            if ran != backend:
                cells.append(f"{backend}: skipped (ran {ran})")
                continue
            diff = max(((a - b).norm() / a.norm()).item() for a, b in zip(ref, res))
            worst = max(worst, diff)
            cells.append(f"{backend}: {diff:.1e}")
        print(f"  {name:52s} {conv.tp.weight_numel:6d} weights  " + "  ".join(cells))

    name, conv = max(convs, key=lambda c: c[1].tp.weight_numel)
    print(f"time, {'bf16 autocast' if args.bf16 else 'fp32'}, {args.edges} edges, {name} ({conv.tp.weight_numel} "
          "weights): median forward + backward")
    x, y, h, g = inputs(conv, args.edges, torch.float32)
    for backend in ["torch", *backends]:
        try:
            ran, _ = forward_backward(conv, backend, x, y, h, g, args.bf16)
        except torch.OutOfMemoryError:
            print(f"  {backend:18s} out of memory")
            torch.cuda.empty_cache()
            continue
        if ran != backend:
            print(f"  {backend:18s} skipped (ran {ran})")
            continue
        torch.cuda.reset_peak_memory_stats()
        both = timed(lambda: forward_backward(conv, backend, x, y, h, g, args.bf16), args.repeats)
        with torch.no_grad():  # as inference (embed, predict) runs it
            forward = timed(lambda: forward_only(conv, backend, x, y, h, args.bf16), args.repeats)
        print(f"  {backend:18s} {both:8.2f} ms  forward alone {forward:8.2f} ms  peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"parity gate {GATE:g}: {'pass' if worst <= GATE else 'FAIL'} (worst {worst:.1e})")
    return 0 if worst <= GATE else 1


if __name__ == "__main__":
    sys.exit(main())
