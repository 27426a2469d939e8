"""Time one training step (forward + backward + AdamW step) of ATOMICA's released configuration on the reference
batches (ATOMICA's own: dynamic batches of <= 1000 blocks, items cropped to <= 256 blocks), and, given a checkout
of ATOMICA's code, the same step of ATOMICA's original model side by side.

    python benchmarks/bench_step.py --batches .bench/bench_batches.pt [--model DenoisePretrainModel|Classifier|both]
        [--settings fp32,tf32,bf16,bf16+graphs] [--atomica-src PATH] [--budget BLOCKS] [--warmup 8] [--steps 24]
        [--backend auto|torch|triton|cuequivariance|openequivariance] [--profile] [--count-flops]
        [kernel knobs: --edge-tile --warps --warps-bwd --columns --stages --kernel-hidden-grad --no-fused-projection
         --keep-projection]

A setting is a precision (fp32: TF32 off, as ATOMICA's reference; tf32; bf16: autocast, the engine's `precision:
bf16`) with `+graphs` for the engine's `cuda_graphs: true` and `+compile` for torch.compile of the submodules
outside the encoders (embeddings, heads). Each setting builds a fresh model (seed 0). With `--cuda-graphs` every
setting gets `+graphs` (older command lines). Per setting: the median step time, blocks/s, atoms/s, GPU memory and
the median host time of a step (until `step()` returns, before the final sync: when it is close to the step time,
the step is bound by Python and kernel launches). Memory, counted above what earlier runs of the same process left
allocated: the peak allocated in the timed steps, the same with the warm-up steps (where CUDA graphs are captured)
included, and the peak reserved (with CUDA graphs the figure to read: a replay writes into its graphs' pool, which
the allocator counts as allocated only while capturing).

With `--atomica-src PATH` (a checkout of github.com/mims-harvard/ATOMICA; see atomica_original.py for the
stand-ins its imports need) ATOMICA's model runs fp32 and TF32 on the same batches first (`--atomica-steps`, default
24), and a table of both sides and their ratios ends the output. `--budget N` re-packs the reference batches' items
into batches of at most N blocks (batches.py). `--profile` prints the top kernels of one step, the GPU-busy share
of its wall time (union of kernel intervals, kernels inside CUDA graphs included) and writes a Chrome trace where
`--trace-dir` says. `--count-flops` counts one step's matmul-class FLOPs (torch.utils.flop_counter: mm, addmm,
bmm, ...) for ATOMICA's model and ours; ours on the torch backend, which does the same products as the Triton
kernels (these are invisible to the counter).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time

import torch

from atomica_ray.models import ClassifierModel, DenoisePretrainModel
from atomica_ray.models.kernels import enable_cuda_graphs, fused_contraction, fused_projection, tensor_product

RELEASED = dict(atom_hidden_size=32, block_hidden_size=32, edge_size=32, k_neighbors=8, n_layers=4, dropout=0.0,
                fragmentation_method="PS_300", global_message_passing=True, bottom_global_message_passing=False)
PRETRAIN = dict(atom_noise=False, translation_noise=True, rotation_noise=True, torsion_noise=True,
                num_masked_block_classes=436, rotation_weight=0.1)


def build(model_name: str):
    if model_name == "DenoisePretrainModel":
        return DenoisePretrainModel(**RELEASED, **PRETRAIN)
    return ClassifierModel(**RELEASED, num_pred_layers=3, nonlinearity="relu", pred_dropout=0.0, pred_hidden_size=32)


def step_inputs(model_name: str, batch: dict) -> dict:
    inputs = dict(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                  lengths=batch["lengths"], segment_ids=batch["segment_ids"])
    if model_name == "DenoisePretrainModel":
        inputs.update(receptor_segment=batch["noisy_segment"], tr_score=batch["tr_score"], tr_eps=batch["tr_eps"],
                      rot_score=batch["rot_score"], tor_edges=batch["tor_edges"], tor_score=batch["tor_score"],
                      tor_batch=batch["tor_batch"], masked_blocks=batch["masked_blocks"],
                      masked_labels=batch["masked_labels"])
    else:
        inputs["label"] = batch["label"]
    return inputs


def loss_of(model_name: str, out):
    return out.loss if model_name == "DenoisePretrainModel" else out[0]


def set_precision(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def compile_outside_kernels(model) -> None:
    """torch.compile of what runs around the encoders' layer stacks: every submodule of the model that is not an
    encoder (whose layer stacks hold the custom kernels and CUDA graphs), each compiled on its own."""
    from atomica_ray.models.interaction import ATOMICAEncoder

    for name, child in list(model.named_children()):
        if isinstance(child, ATOMICAEncoder) or any(isinstance(m, ATOMICAEncoder) for m in child.modules()):
            continue
        if any(p.requires_grad for p in child.parameters()):
            setattr(model, name, torch.compile(child, dynamic=True))


class Runner:
    """One model's training steps on a list of batches, timed."""

    def __init__(self, name, model, batches, precision, fused_optimizer, device, base_bytes: int = 0):
        self.name, self.model, self.batches, self.device = name, model, batches, device
        self.base_bytes = base_bytes  # allocated before this model was built (a previous model's leftovers)
        self.precision = precision
        kwargs = dict(fused=True) if fused_optimizer and device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(self, batch) -> None:
        set_precision(self.precision)
        with self.autocast:
            loss = loss_of(self.name, self.model(**step_inputs(self.name, batch)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, warmup: int, steps: int) -> dict:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(warmup):
            self.step(self.batches[i % len(self.batches)])
        self.sync()
        warmup_s = time.perf_counter() - t0
        warmup_peak = torch.cuda.max_memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, host, blocks, atoms = [], [], 0, 0
        for i in range(steps):
            batch = self.batches[i % len(self.batches)]
            self.sync()
            t0 = time.perf_counter()
            self.step(batch)
            host.append(time.perf_counter() - t0)  # Python + launches (+ the step's own host syncs)
            self.sync()
            times.append(time.perf_counter() - t0)
            blocks += batch["B"].shape[0]
            atoms += batch["A"].shape[0]
        total = sum(times)
        gib = lambda n: (n - self.base_bytes) / 2**30 if cuda else float("nan")  # noqa: E731
        # With CUDA graphs, "allocated" misses what a replay writes into the graphs' pool (the allocator sees it at
        # capture only): the reserved peak, which holds the pools, is the memory the step really takes.
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        return dict(median_ms=1000 * statistics.median(times), min_ms=1000 * min(times), max_ms=1000 * max(times),
                    host_ms=1000 * statistics.median(host), blocks_s=blocks / total, atoms_s=atoms / total,
                    peak_gib=gib(peak), peak_with_warmup_gib=gib(max(peak, warmup_peak)),
                    reserved_gib=gib(torch.cuda.max_memory_reserved()) if cuda else float("nan"),
                    warmup_s=warmup_s, mean_blocks=blocks / steps)


def profile_step(runner: Runner, trace_path: str | None) -> dict:
    """Top kernels of one step (the first batch), GPU-busy share of its wall time."""
    from torch.profiler import ProfilerActivity, profile

    device = runner.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    runner.sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        runner.step(runner.batches[0])
        runner.sync()
        wall = time.perf_counter() - t0
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))
    if trace_path:
        prof.export_chrome_trace(trace_path)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end, first, last = 0.0, -1.0, None, None
    for s, t in kernels:
        first = s if first is None else first
        last = t if last is None else max(last, t)
        if t > end:
            busy += t - max(s, end)
            end = t
    span = (last - first) / 1000 if kernels else 0.0
    summed = sum(t - s for s, t in kernels) / 1000
    result = dict(wall_ms=1000 * wall, kernels=len(kernels), kernel_ms=summed, busy_ms=busy / 1000,
                  busy_share=busy / 1000 / (1000 * wall) if wall else float("nan"), device_span_ms=span)
    print(f"profiled step: wall {result['wall_ms']:.1f} ms, {len(kernels)} kernels/copies, {summed:.1f} ms of "
          f"kernels, GPU busy {result['busy_ms']:.1f} ms = {100 * result['busy_share']:.0f}% of the wall")
    return result


def allocated(device) -> int:
    """Bytes still allocated from earlier runs in this process (after freeing what can be freed): the peak of a
    run is reported above this."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def count_flops(step, batch) -> float:
    """Matmul-class FLOPs of one step (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return counter.get_total_flops()


def configure_kernels(args) -> None:
    backend = "torch" if args.no_fused else args.backend
    tensor_product.set_backend(backend)
    tensor_product.USE_FUSED_PROJECTION = not args.no_fused_projection
    tensor_product.KERNEL_HIDDEN_GRAD = args.kernel_hidden_grad
    tensor_product.RECOMPUTE_PROJECTION = not args.keep_projection
    for module, attr, value in ((fused_contraction, "EDGE_TILE", args.edge_tile),
                                (fused_contraction, "NUM_WARPS", args.warps),
                                (fused_contraction, "NUM_WARPS_BWD", args.warps_bwd),
                                (fused_contraction, "COLUMNS", args.columns),
                                (fused_contraction, "NUM_STAGES", args.stages),
                                (fused_projection, "EDGE_TILE", args.projection_tile)):
        if value:
            setattr(module, attr, value)
    fused_contraction.SPLIT_BACKWARD = not args.single_backward
    if args.chunk_elements:
        tensor_product.WEIGHT_CHUNK_ELEMENTS = args.chunk_elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="/work/shared/atomica_reference/bench_batches.pt")
    parser.add_argument("--model", default="DenoisePretrainModel",
                        choices=["DenoisePretrainModel", "Classifier", "both"])
    parser.add_argument("--settings", default=None,
                        help="comma-separated: fp32, tf32, bf16, each with optional +graphs / +compile "
                             "(default: from --bf16 / --tf32 / --cuda-graphs / --compile)")
    parser.add_argument("--impl", default="stacked", choices=["stacked", "e3nn"])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (off in ATOMICA's reference)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as `precision: bf16` trains")
    parser.add_argument("--compile", action="store_true", help="torch.compile of the parts outside the kernels")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the encoder stacks from CUDA graphs (`cuda_graphs: true`); warm up over every "
                             "batch once (--warmup 8) so that each size bucket is captured before timing")
    parser.add_argument("--backend", default="auto", choices=list(tensor_product.BACKENDS))
    parser.add_argument("--no-fused", action="store_true", help="= --backend torch")
    parser.add_argument("--no-fused-projection", action="store_true",
                        help="torch's outer @ cg projections instead of the Triton projection kernels")
    parser.add_argument("--kernel-hidden-grad", action="store_true",
                        help="dL/dhidden inside the Triton backward instead of one cuBLAS matmul")
    parser.add_argument("--keep-projection", action="store_true",
                        help="hold each projection from forward to backward instead of making it again there")
    parser.add_argument("--single-backward", action="store_true",
                        help="the contraction's backward as one kernel (dL/dT and dL/dw together) instead of two")
    parser.add_argument("--edge-tile", type=int, default=None, help="edges per contraction program")
    parser.add_argument("--warps", type=int, default=None, help="warps per contraction program (forward)")
    parser.add_argument("--warps-bwd", type=int, default=None, help="warps per contraction program (backward)")
    parser.add_argument("--columns", type=int, default=None, help="weight columns per group product (UT W)")
    parser.add_argument("--stages", type=int, default=None, help="software-pipelining stages of the group loop")
    parser.add_argument("--projection-tile", type=int, default=None, help="edges per projection program")
    parser.add_argument("--chunk-elements", type=int, default=None,
                        help="per-edge weight elements held at once (tensor_product.WEIGHT_CHUNK_ELEMENTS)")
    parser.add_argument("--optimizer", default="fused", choices=["fused", "foreach"],
                        help="AdamW's implementation on CUDA (the engine's is fused)")
    parser.add_argument("--budget", type=int, default=None, help="re-pack the items into batches of <= N blocks")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--atomica-src", default=None, help="checkout of ATOMICA's code: time it side by side")
    parser.add_argument("--atomica-steps", type=int, default=24)
    parser.add_argument("--atomica-warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one step of each setting")
    parser.add_argument("--trace-dir", default=None, help="write each profiled step's Chrome trace here")
    parser.add_argument("--count-flops", action="store_true", help="matmul-class FLOPs of one step (batch 0)")
    parser.add_argument("--json", default=None, help="append one JSON line per result to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from atomica_ray.models.equivariant import TensorProductConv

    TensorProductConv.use_e3nn = args.impl == "e3nn"
    configure_kernels(args)
    device = torch.device(args.device)
    names = ["DenoisePretrainModel", "ClassifierModel"] if args.model == "both" else \
        ["ClassifierModel" if args.model == "Classifier" else args.model]
    if args.settings:
        settings = args.settings.split(",")
    else:
        settings = ["bf16" if args.bf16 else "tf32" if args.tf32 else "fp32"]
        settings = [settings[0] + ("+graphs" if args.cuda_graphs else "") + ("+compile" if args.compile else "")]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    try:
        import triton
    except ImportError:
        triton = None

    versions = dict(torch=torch.__version__, cuda=torch.version.cuda, triton=getattr(triton, "__version__", None),
                    e3nn=__import__("e3nn").__version__)
    print(f"device {gpu}; {' '.join(f'{k} {v}' for k, v in versions.items())}; backend {tensor_product.BACKEND}; "
          f"contraction tile {fused_contraction.EDGE_TILE} edges x {fused_contraction.COLUMNS} columns, warps "
          f"{fused_contraction.NUM_WARPS}/{fused_contraction.NUM_WARPS_BWD}, stages {fused_contraction.NUM_STAGES}, "
          f"split backward {fused_contraction.SPLIT_BACKWARD}, "
          f"kernel_hidden_grad {tensor_product.KERNEL_HIDDEN_GRAD}, recompute_projection "
          f"{tensor_product.RECOMPUTE_PROJECTION}, optimizer {args.optimizer}", flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from batches import prepared

    atomica_models = None
    if args.atomica_src:
        import atomica_original

        atomica_models = atomica_original.load(args.atomica_src)
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['model']} {row['code']} {row['setting']}: median step {row['median_ms']:.1f} ms (min "
              f"{row['min_ms']:.1f}, max {row['max_ms']:.1f}) blocks/s {row['blocks_s']:.0f} atoms/s "
              f"{row['atoms_s']:.0f} peak allocated {row['peak_gib']:.2f} GiB (with warm-up and captures "
              f"{row['peak_with_warmup_gib']:.2f}, reserved {row['reserved_gib']:.2f}) host {row['host_ms']:.1f} ms "
              f"(warm-up {row['warmup_s']:.1f} s, {row['mean_blocks']:.0f} blocks/batch)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**row, "device": gpu, **versions}) + "\n")

    all_batches = torch.load(args.batches, weights_only=True)
    for name in names:
        batches = prepared(all_batches[name], args.budget, device)
        if atomica_models is not None:
            for precision in ("fp32", "tf32"):
                torch.manual_seed(0)
                try:
                    base = allocated(device)
                    model = atomica_original.build(atomica_models, name, RELEASED, PRETRAIN).to(device).train()
                    runner = Runner(name, model, batches, precision, fused_optimizer=False, device=device,
                                    base_bytes=base)
                    result = runner.run(args.atomica_warmup, args.atomica_steps)
                    report(dict(model=name, code="ATOMICA", setting=precision, budget=args.budget, **result))
                    if args.count_flops and precision == "fp32":
                        flops = count_flops(runner.step, batches[0])
                        print(f"{name} ATOMICA matmul-class FLOPs of one step (batch 0): {flops / 1e12:.3f} TFLOP")
                        rows[-1]["tflop"] = flops / 1e12
                except Exception as error:  # its code is not ours: report and go on with ours
                    import traceback

                    traceback.print_exc()
                    print(f"{name} ATOMICA {precision}: failed: {error!r}")
                model = runner = None
                torch.cuda.empty_cache() if device.type == "cuda" else None
        for setting in settings:
            precision, *flags = setting.split("+")
            torch.manual_seed(0)
            base = allocated(device)
            model = build(name).to(device).train()
            if "graphs" in flags:
                enable_cuda_graphs(model)
            if "compile" in flags:
                compile_outside_kernels(model)
            runner = Runner(name, model, batches, precision, fused_optimizer=args.optimizer == "fused", device=device,
                            base_bytes=base)
            result = runner.run(args.warmup, args.steps)
            row = dict(model=name, code="atomica-ray", setting=setting, budget=args.budget, **result)
            if args.profile:
                trace = (os.path.join(args.trace_dir, f"trace_{name}_{setting.replace('+', '_')}.json")
                         if args.trace_dir else None)
                row["profile"] = profile_step(runner, trace)
            report(row)
            if args.count_flops and precision == "fp32" and "graphs" not in flags:
                backend = tensor_product.BACKEND
                tensor_product.set_backend("torch")
                flops = count_flops(runner.step, batches[0])
                tensor_product.set_backend(backend)
                print(f"{name} atomica-ray matmul-class FLOPs of one step (batch 0, torch backend): "
                      f"{flops / 1e12:.3f} TFLOP")
            del model, runner
            torch.cuda.empty_cache() if device.type == "cuda" else None

    print()
    print(f"{'model':<22} {'code':<12} {'setting':<18} {'median ms':>10} {'vs ATOMICA fp32':>16} "
          f"{'vs ATOMICA same':>16} {'peak GiB':>9} {'reserved':>9} {'host ms':>8}")
    for row in rows:
        ref = {r["setting"]: r["median_ms"] for r in rows if r["model"] == row["model"] and r["code"] == "ATOMICA"}
        same = ref.get("tf32" if row["setting"].startswith("tf32") else "fp32")
        fp32 = ref.get("fp32")
        ratio = lambda r: f"{r / row['median_ms']:.1f}x" if r else "-"  # noqa: E731
        print(f"{row['model']:<22} {row['code']:<12} {row['setting']:<18} {row['median_ms']:>10.1f} "
              f"{ratio(fp32):>16} {ratio(same):>16} {row['peak_gib']:>9.2f} {row['reserved_gib']:>9.2f} "
              f"{row['host_ms']:>8.1f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
