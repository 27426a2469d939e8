"""Time one training step (forward + backward + AdamW step) of ATOMICA's released configuration on the reference
batches (ATOMICA's own: dynamic batches of <= 1000 blocks, items cropped to <= 256 blocks).

    python benchmarks/bench_step.py --batches /work/shared/atomica_reference/bench_batches.pt [--model Classifier]
                                    [--impl stacked|e3nn] [--tf32] [--bf16] [--compile] [--warmup 5] [--steps 20]
                                    [--chunk-elements N] [--profile] [--cuda-graphs] [--no-fused-projection]
                                    [--kernel-hidden-grad]

Prints the median step time, blocks/s, atoms/s, peak allocated GPU memory and the median host time of a step (until
`step()` returns, before the final sync: when it is close to the step time, the step is bound by Python and kernel
launches, not by the GPU). `--bf16` is the engine's `precision: bf16` (autocast; the Triton contraction runs),
`--cuda-graphs` its `cuda_graphs: true`. ATOMICA's original code on one H100 (float32, TF32 off): 925 ms
(DenoisePretrainModel), 968 ms (ClassifierModel) per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from atomica_ray.models import ClassifierModel, DenoisePretrainModel
from atomica_ray.models import fused_contraction, tensor_product
from atomica_ray.models.cuda_graphs import enable_cuda_graphs
from atomica_ray.models.equivariant import TensorProductConv

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="/work/shared/atomica_reference/bench_batches.pt")
    parser.add_argument("--model", default="DenoisePretrainModel", choices=["DenoisePretrainModel", "Classifier"])
    parser.add_argument("--impl", default="stacked", choices=["stacked", "e3nn"])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (off in ATOMICA's reference)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as `precision: bf16` trains")
    parser.add_argument("--compile", action="store_true", help="torch.compile(model, dynamic=True)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the encoder stacks from CUDA graphs (`cuda_graphs: true`); warm up over every "
                             "batch once (--warmup 8) so that each size bucket is captured before timing")
    parser.add_argument("--no-fused", action="store_true", help="cuBLAS contraction instead of the Triton kernels")
    parser.add_argument("--no-fused-projection", action="store_true",
                        help="torch's outer @ cg projections instead of the Triton projection kernels")
    parser.add_argument("--kernel-hidden-grad", action="store_true",
                        help="dL/dhidden inside the Triton backward instead of one cuBLAS matmul")
    parser.add_argument("--edge-tile", type=int, default=None, help="edges per Triton program")
    parser.add_argument("--warps", type=int, default=None, help="warps per Triton program")
    parser.add_argument("--chunk-elements", type=int, default=None,
                        help="per-edge weight elements held at once (tensor_product.WEIGHT_CHUNK_ELEMENTS)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print the top kernels of one step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    name = "ClassifierModel" if args.model == "Classifier" else args.model
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    TensorProductConv.use_e3nn = args.impl == "e3nn"
    tensor_product.USE_FUSED = not args.no_fused
    tensor_product.USE_FUSED_PROJECTION = not args.no_fused_projection
    tensor_product.KERNEL_HIDDEN_GRAD = args.kernel_hidden_grad
    fused_contraction.EDGE_TILE = args.edge_tile or fused_contraction.EDGE_TILE
    fused_contraction.NUM_WARPS = args.warps or fused_contraction.NUM_WARPS
    if args.chunk_elements:
        tensor_product.WEIGHT_CHUNK_ELEMENTS = args.chunk_elements
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(name).to(device).train()
    if args.cuda_graphs:
        enable_cuda_graphs(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    batches = torch.load(args.batches, weights_only=True)[name]
    batches = [{k: v.to(device) for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(batch):
        with autocast:
            loss = loss_of(name, forward(**step_inputs(name, batch)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, host, blocks, atoms = [], [], 0, 0
    for i in range(args.steps):
        batch = batches[i % len(batches)]
        sync()
        t0 = time.perf_counter()
        step(batch)
        host.append(time.perf_counter() - t0)  # Python + launches (+ the step's own host syncs)
        sync()
        times.append(time.perf_counter() - t0)
        blocks += batch["B"].shape[0]
        atoms += batch["A"].shape[0]
    total = sum(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name} impl={args.impl} tf32={args.tf32} bf16={args.bf16} compile={args.compile} "
          f"cuda_graphs={args.cuda_graphs} warm-up {args.warmup} steps {warmup_s:.1f} s "
          f"chunk={tensor_product.WEIGHT_CHUNK_ELEMENTS} fused={tensor_product.USE_FUSED} "
          f"fused_projection={tensor_product.USE_FUSED_PROJECTION} kernel_hidden_grad={args.kernel_hidden_grad} "
          f"tile={fused_contraction.EDGE_TILE}x{fused_contraction.NUM_WARPS}w device={gpu}")
    print(f"median step {1000 * statistics.median(times):.1f} ms  (min {1000 * min(times):.1f}, "
          f"max {1000 * max(times):.1f})  blocks/s {blocks / total:.0f}  atoms/s {atoms / total:.0f}  "
          f"peak allocated {peak:.2f} GiB  host {1000 * statistics.median(host):.1f} ms")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            step(batches[0])
            sync()
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=40))
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=25))
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1000
        print(f"profiled step: {len(kernels)} device kernels/copies, {busy:.1f} ms of device time")


if __name__ == "__main__":
    main()
