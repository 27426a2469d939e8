"""Where a training step's activation memory goes: the tensors autograd saves for backward, by module.

    python benchmarks/memory_breakdown.py --batches .bench/bench_batches.pt [--model DenoisePretrainModel|Classifier]
        [--precision bf16|fp32] [--budget 1000] [--warmup 2] [--depth 4] [--top 12] [--keep-projection]

Builds the model of bench_step.py (ATOMICA's released configuration), runs `--warmup` steps (eager: no CUDA
graphs, whose replays the allocator does not see), then one forward under `torch.autograd.graph.saved_tensors_hooks`
that charges every saved tensor's storage, once, to the innermost module whose forward was running when it was
saved (named to `--depth` levels, e.g. `encoder.encoder.layers.3`). Printed: the bytes saved per module, the largest
saved tensors with their shapes, and, on CUDA, the allocated memory after forward (what backward will start from)
and the peak of the whole step, to compare with the saved total.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batches import prepared  # noqa: E402
from bench_step import Runner, build, loss_of, step_inputs  # noqa: E402

from atomica_ray.models.kernels import tensor_product  # noqa: E402


class SavedTensorTally:
    """Bytes of the storages autograd saves during a forward, charged to the module running at the time."""

    def __init__(self, model: torch.nn.Module, depth: int):
        self.stack: list[str] = ["(model)"]
        self.seen: set[int] = set()
        self.by_module: dict[str, int] = defaultdict(int)
        self.largest: list[tuple[int, str, tuple, torch.dtype]] = []
        self.handles = []
        for name, module in model.named_modules():
            if name:
                short = ".".join(name.split(".")[:depth])
                self.handles.append(module.register_forward_pre_hook(lambda m, a, n=short: self.stack.append(n)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _leave(self, module, args, output) -> None:  # returns None: a forward hook's return value replaces the output
        self.stack.pop()

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen and storage.nbytes() > 0:
            self.seen.add(key)
            self.by_module[self.stack[-1]] += storage.nbytes()
            self.largest.append((storage.nbytes(), self.stack[-1], tuple(t.shape), t.dtype))
        return t

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="/work/shared/atomica_reference/bench_batches.pt")
    parser.add_argument("--model", default="DenoisePretrainModel", choices=["DenoisePretrainModel", "Classifier"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--budget", type=int, default=None, help="re-pack the items into batches of <= N blocks")
    parser.add_argument("--batch", type=int, default=0, help="which of the 8 batches to break down")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the one broken down")
    parser.add_argument("--depth", type=int, default=4, help="module name levels to group by")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--keep-projection", action="store_true",
                        help="hold each projection from forward to backward instead of making it again there")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    tensor_product.RECOMPUTE_PROJECTION = not args.keep_projection
    name = "ClassifierModel" if args.model == "Classifier" else args.model
    device = torch.device(args.device)
    batches = prepared(torch.load(args.batches, weights_only=True)[name], args.budget, device)
    torch.manual_seed(0)
    model = build(name).to(device).train()
    runner = Runner(name, model, batches, args.precision, fused_optimizer=device.type == "cuda", device=device)
    for i in range(args.warmup):
        runner.step(batches[i % len(batches)])
    batch = batches[args.batch]
    runner.optimizer.zero_grad(set_to_none=True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0

    tally = SavedTensorTally(model, args.depth)
    with torch.autograd.graph.saved_tensors_hooks(tally.pack, lambda t: t), runner.autocast:
        loss = loss_of(name, model(**step_inputs(name, batch)))
    tally.remove()
    after_forward = torch.cuda.memory_allocated() if cuda else 0
    loss.backward()
    peak = torch.cuda.max_memory_allocated() if cuda else 0

    mib = 2**20
    total = sum(tally.by_module.values())
    print(f"{name}, {args.precision}, backend {tensor_product.BACKEND}, recompute_projection "
          f"{tensor_product.RECOMPUTE_PROJECTION}, batch {args.batch}: "
          f"{batch['B'].shape[0]} blocks, {batch['A'].shape[0]} atoms")
    print(f"saved for backward: {total / mib:.0f} MiB in {len(tally.seen)} storages")
    if cuda:
        print(f"allocated after forward, above the step's start: {(after_forward - before) / mib:.0f} MiB; "
              f"peak of forward + backward above it: {(peak - before) / mib:.0f} MiB "
              f"(the start holds weights, optimizer state and the batch: {before / mib:.0f} MiB)")
    print(f"\n{'module':<48} {'MiB':>8} {'share':>6}")
    for module, n in sorted(tally.by_module.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{module:<48} {n / mib:>8.1f} {100 * n / total:>5.1f}%")
    print(f"\nlargest saved tensors:\n{'MiB':>8}  {'module':<40} {'dtype':<15} shape")
    for n, module, shape, dtype in sorted(tally.largest, key=lambda r: -r[0])[:args.top]:
        print(f"{n / mib:>8.1f}  {module:<40} {str(dtype):<15} {list(shape)}")


if __name__ == "__main__":
    main()
