"""Time the tensor products of the released configuration alone, forward and backward, per backend and kernel tile
(GPU). The layers are the atom-level encoder's (ns = 32, nv = 16, sh up to l = 2, 128 edge features) on E random
edges; E = 85344 is the atom-level edge count of reference batch 0 (DenoisePretrainModel).

    python benchmarks/bench_contraction.py [--edges 85344] [--bf16] [--backend auto|torch|triton|cuequivariance|...]
                                           [--configs 64,4,8,128,2,0,1 64,4,8,128,2,0,0 ...]

A config is EDGE_TILE, NUM_WARPS, NUM_WARPS_BWD, COLUMNS, NUM_STAGES, KERNEL_HIDDEN_GRAD[, SPLIT_BACKWARD]
(fused_contraction.py, tensor_product.py; NUM_STAGES also sets fp32's NUM_STAGES_TF32X3); "default" keeps the
module's values. A config whose tiles do not fit is named and skipped (the backend printed says which path ran). Prints, per layer and config, the
median forward and backward time (CUDA events, 20 repetitions after 3 warm-ups) and the forward's rate in TFLOP/s
of weight-generation matmul work (2 E H numel). `--check` adds the relative difference of the output and gradients
to the fp32 torch path on the same inputs. Runs against older trees too (`atomica_ray.models.tensor_product`), for
A/B rows.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.interaction import irreps_sequence

try:
    from atomica_ray.models.kernels import fused_contraction as fc
    from atomica_ray.models.kernels import tensor_product as tpm
except ImportError:  # a tree before models/kernels/
    from atomica_ray.models import fused_contraction as fc
    from atomica_ray.models import tensor_product as tpm


def configure(config: str, backend: str) -> str:
    if hasattr(tpm, "set_backend"):
        tpm.set_backend(backend)
    else:
        tpm.USE_FUSED = backend != "torch"
    if config == "default":
        return "default"
    be, nw, nwb, cols, stages, hg, *split = (int(v) for v in config.split(","))
    if hasattr(fc, "SPLIT_BACKWARD"):
        fc.SPLIT_BACKWARD = bool(split[0]) if split else True
    fc.EDGE_TILE, fc.NUM_WARPS = be, nw
    for name, value in (("NUM_WARPS_BWD", nwb), ("COLUMNS", cols), ("NUM_STAGES", stages),
                        ("NUM_STAGES_TF32X3", stages)):
        if hasattr(fc, name):
            setattr(fc, name, value)
    tpm.KERNEL_HIDDEN_GRAD = bool(hg)
    return config


def timed(fn, reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, default=85344)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--layers", default="0,1,2,3", help="which atom-level layers (0-3)")
    parser.add_argument("--configs", nargs="+", default=["default"])
    parser.add_argument("--check", action="store_true",
                        help="also print ||out - ref|| / ||ref|| of the output and gradients against the torch "
                             "backend in fp32 (TF32 off) on the same inputs")
    args = parser.parse_args()
    seq = irreps_sequence(32, 16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    e = args.edges
    totals = {}
    for layer in (int(v) for v in args.layers.split(",")):
        irreps_in, irreps_out = seq[min(layer, 3)], seq[min(layer + 1, 3)]
        for config in args.configs:
            name = configure(config, args.backend)
            torch.manual_seed(0)
            conv = TensorProductConv(irreps_in, "1x0e + 1x1o + 1x2e", irreps_out, 128, 128).cuda()
            x = torch.randn(e, conv.tp.irreps_in1.dim, device="cuda", generator=gen, requires_grad=True)
            y = torch.randn(e, 9, device="cuda", generator=gen)
            h = torch.randn(e, 128, device="cuda", generator=gen, requires_grad=True)
            g = torch.randn(e, conv.tp.irreps_out.dim, device="cuda", generator=gen)
            linear = conv.fc[3]
            params = [x, h, linear.weight, linear.bias]

            def forward():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
                    # as in training: under autocast the hidden features come out of a Linear in bf16
                    return conv.stacked_tp(x, y, h.to(torch.bfloat16) if args.bf16 else h, linear)

            try:
                fwd = timed(forward)
                out = forward()
                bwd = timed(lambda: torch.autograd.grad(out, params, g, retain_graph=True))
            except Exception as error:  # a tile too large for shared memory, registers
                print(f"layer {layer} config {name}: {type(error).__name__}: {str(error)[:160]}", flush=True)
                continue
            if args.check:
                got = [out.float(), *(t.float() for t in torch.autograd.grad(out, params, g, retain_graph=True))]
                backend_now = tpm.BACKEND if hasattr(tpm, "BACKEND") else None
                configure("default", "torch")
                tf32 = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = False
                ref_out = conv.stacked_tp(x, y, h, linear)
                ref = [ref_out, *torch.autograd.grad(ref_out, params, g)]
                torch.backends.cuda.matmul.allow_tf32 = tf32
                if backend_now is not None:
                    tpm.set_backend(backend_now)
                rel = [((a - b).norm() / b.norm()).item() for a, b in zip(got, ref)]
                print(f"layer {layer} config {name}: rel. difference to fp32 torch out/x/hidden/W/b "
                      + " ".join(f"{r:.1e}" for r in rel), flush=True)
            del out
            flop = 2 * e * 128 * conv.tp.weight_numel
            backend = conv.stacked_tp.backend_for(h.to(torch.bfloat16) if args.bf16 else h) \
                if hasattr(conv.stacked_tp, "backend_for") else "?"
            print(f"layer {layer} numel {conv.tp.weight_numel:>5} E {e} {backend:<8} config {name:<18} "
                  f"fwd {fwd:7.2f} ms ({flop / fwd / 1e9:5.0f} TFLOP/s)  bwd {bwd:7.2f} ms  total {fwd + bwd:7.2f} ms",
                  flush=True)
            totals[name] = totals.get(name, 0.0) + fwd + bwd
    for name, total in totals.items():
        print(f"TOTAL config {name:<18} fwd+bwd over the layers {total:8.2f} ms")


if __name__ == "__main__":
    main()
