"""Embedding throughput (issue 16, item 4): structures/s of batched, batch-independent embedding against
batch-of-one (ATOMICA's default `batch_size 1`) on the same items, with the outputs compared.

    python benchmarks/bench_embed.py --items .bench/bench_batches.pt            # ATOMICA's reference items
    python benchmarks/bench_embed.py --demo 2000                                # built-in demo items

The released configuration (hidden 32, edge 32, 4 layers, k 8, PS_300, global message passing) with ATOMICA's
numerics (attention mask off, UNK blocks global) and random weights. Every mode runs the code an embed worker runs
(inference/embed.py: packing by the budgets, representations, Arrow rows on the host); only Ray is left out.
Rows printed: batch-of-one fp32, batched fp32 per `--fp32-backends`, batched bf16 (Triton kernels), and batched
fp32 on the items repeated 4x (peak memory follows the budget, not the dataset). Each batched row is timed in
steady state, after one untimed pass over the items (a cold process also compiles the Triton kernels' variants
for the sizes it meets: seconds, once). Outputs: max |diff| of batched vs batch-of-one
(fp32: the contract is <= 1e-5, relative to each vector's scale for z) and bf16 vs fp32 (max relative diff and
the smallest cosine). `--check-graphs` also checks that the encoder returns its full node irreps on the CUDA-graph
path (training mode) as on the eager one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atomica_ray import representations as R  # noqa: E402
from atomica_ray.inference.embed import Embedder  # noqa: E402
from atomica_ray.inference.runner import Job  # noqa: E402
from atomica_ray.models import PredictionModel  # noqa: E402
from atomica_ray.models.backbone import set_batch_independent  # noqa: E402
from atomica_ray.models.kernels import set_backend  # noqa: E402

RELEASED = dict(atom_hidden_size=32, block_hidden_size=32, edge_size=32, k_neighbors=8, n_layers=4,
                global_message_passing=True, bottom_global_message_passing=False, fragmentation_method="PS_300")
ATOMICA_NUMERICS = dict(unk_is_global=True, attention_mask=False, direction_eps=0.0)


def items_from_batches(path: str) -> list[dict]:
    """ATOMICA-format batches split back into items."""
    data = torch.load(path, weights_only=True)
    batches = data["ClassifierModel"] if isinstance(data, dict) else data
    items = []
    for batch in batches:
        blocks = batch["lengths"].tolist()
        atoms = [int(a.sum()) for a in torch.split(batch["block_lengths"], blocks)]
        b0 = a0 = 0
        for nb, na in zip(blocks, atoms):
            items.append({"id": f"item{len(items)}", "X": batch["X"][a0:a0 + na].numpy().astype(np.float32),
                          "A": batch["A"][a0:a0 + na].numpy(), "atom_positions": np.zeros(na, np.int64),
                          "B": batch["B"][b0:b0 + nb].numpy(), "block_lengths": batch["block_lengths"][b0:b0 + nb].numpy(),
                          "segment_ids": batch["segment_ids"][b0:b0 + nb].numpy()})
            b0, a0 = b0 + nb, a0 + na
    return items


def demo_items(n: int) -> list[dict]:
    from atomica_ray.data.demo import make_item
    from atomica_ray.data.items import validate_item
    from atomica_ray.data.vocab import get_vocab

    n_types = len(get_vocab("PS_300"))
    return [validate_item(make_item(0, i, True), "demo", i, n_types) for i in range(n)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(embedder: Embedder, items: list[dict]) -> tuple[float, dict, int]:
    """(seconds, rows by id, batches) of embedding `items` with the embedder's budgets."""
    sync()
    start = time.perf_counter()
    tables = list(embedder.tables(items))  # Arrow rows on the host, as a worker writes them
    sync()
    seconds = time.perf_counter() - start
    rows = {row["id"]: row for table in tables for row in table.to_pylist()}
    return seconds, rows, len(tables)


def compare(a: dict, b: dict, columns) -> dict:
    """Per column: max |a - b| relative to max(1, max |a|) over all items, and the smallest cosine."""
    out = {}
    for column in columns:
        worst, cosine = 0.0, 1.0
        for key, row in a.items():
            x = np.asarray(row[column], dtype=np.float64).reshape(-1)
            y = np.asarray(b[key][column], dtype=np.float64).reshape(-1)
            worst = max(worst, np.abs(x - y).max() / max(1.0, np.abs(x).max()))
            cosine = min(cosine, float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30)))
        out[column] = (worst, cosine)
    return out


def profile(embedder: Embedder, items: list[dict], label: str) -> None:
    """GPU busy share of the wall (union of kernel intervals) and the top kernels by GPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run(embedder, items[:32])
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        seconds, _, batches = run(embedder, items)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for a, b in kernels:  # union of intervals, microseconds
        if b > end:
            busy += b - max(a, end)
            end = b
    print(f"profile {label}: {len(items)} items, {batches} batches, wall {seconds * 1e3:.0f} ms, GPU busy "
          f"{busy / 1e3:.0f} ms ({100 * busy / 1e6 / seconds:.0f}%)")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))


def check_graphs(model, items) -> float:
    """Max relative |diff| of the full node irreps, CUDA-graph path vs eager (training mode, dropout 0)."""
    from atomica_ray.data.collate import collate, to_device
    from atomica_ray.models.kernels.cuda_graphs import enable_cuda_graphs

    batch = to_device(collate(items[:8], "plain"), torch.device("cuda"))
    args = [batch[k] for k in ("X", "B", "A", "block_lengths", "lengths", "segment_ids")]
    model.train()
    with torch.enable_grad():
        eager = model._encode(*args, return_irreps=True)
        enable_cuda_graphs(model, True)
        for _ in range(3):  # capture, then replay
            graphed = model._encode(*args, return_irreps=True)
        enable_cuda_graphs(model, False)
    model.eval()
    worst = 0.0
    for name in ("atom_irreps", "block_irreps"):
        x, y = getattr(eager, name).detach(), getattr(graphed, name).detach()
        worst = max(worst, ((x - y).abs().max() / x.abs().max().clamp(min=1)).item())
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", help="ATOMICA batches (.pt, e.g. bench_batches.pt) to split into items")
    parser.add_argument("--demo", type=int, default=0, help="use N built-in demo items instead")
    parser.add_argument("--names", default="h_block,h_graph,z_graph", help="representations to compute")
    parser.add_argument("--pool", default="mean_std_global")
    parser.add_argument("--block-budget", type=int, default=4000)
    parser.add_argument("--atom-budget", type=int, default=40000)
    parser.add_argument("--more-budgets", default="", help="comma-separated block budgets also run batched (fp32 and "
                        "bf16; atom budget 10x), e.g. 16000")
    parser.add_argument("--fp32-backends", default="torch",
                        help="tensor-product backends of the batched fp32 rows (comma-separated: torch, triton, ...); "
                        "batch-of-one always runs the torch backend (strict fp32 cuBLAS), the reference")
    parser.add_argument("--check-graphs", action="store_true")
    parser.add_argument("--profile", type=int, default=0,
                        help="profile batched fp32 (last of --fp32-backends) and bf16 on the first N items: GPU busy "
                        "share of the wall and the kernels taking the most GPU time")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on the CPU (no figures worth keeping)")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.cpu):
        raise SystemExit("needs a CUDA device (or --cpu for a smoke run)")
    items = items_from_batches(args.items) if args.items else demo_items(args.demo or 1000)
    columns = [c for c, _ in R.parse(args.names)]
    torch.manual_seed(0)
    device = torch.device("cpu" if args.cpu else "cuda")
    model = set_batch_independent(PredictionModel(**RELEASED, **ATOMICA_NUMERICS).to(device).eval())

    def embedder(precision: str, budget: int, atoms: int | None) -> Embedder:
        job = Job("embed", "", "", "", precision=precision, block_budget=budget, atom_budget=atoms,
                  options={"columns": R.parse(args.names), "pool": args.pool, "segment": None})
        return Embedder(job, model, device)

    n_blocks = sum(len(it["B"]) for it in items)
    n_atoms = sum(len(it["A"]) for it in items)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {gpu}, torch {torch.__version__}")
    print(f"items: {len(items)} ({n_blocks} blocks, {n_atoms} atoms; largest {max(len(it['B']) for it in items)} "
          f"blocks); names: {args.names} (pool {args.pool}); budgets: {args.block_budget} blocks, "
          f"{args.atom_budget} atoms")
    warm = items[:16]
    for precision in ("fp32", "bf16"):  # CUDA init, cuBLAS heuristics, Triton compilation
        run(embedder(precision, args.block_budget, args.atom_budget), warm)
        run(embedder(precision, 1, None), warm[:4])

    fp32_backends = [b for b in args.fp32_backends.split(",") if b]
    for backend in fp32_backends:  # each backend's compilation / heuristics
        set_backend(backend)
        run(embedder("fp32", args.block_budget, args.atom_budget), warm)
    results = {}
    runs = [("batch-of-one fp32", "fp32", 1, None, items, "torch")]
    for backend in fp32_backends:
        suffix = "" if backend == "torch" else f" ({backend})"
        runs.append((f"batched fp32{suffix}", "fp32", args.block_budget, args.atom_budget, items, backend))
    runs += [("batched bf16", "bf16", args.block_budget, args.atom_budget, items, "auto"),
             ("batched fp32, items x4", "fp32", args.block_budget, args.atom_budget,
              [dict(it, id=f"{it['id']}/{k}") for k in range(4) for it in items], fp32_backends[-1])]
    for label, precision, budget, atoms, data, backend in runs:
        set_backend(backend)
        if budget > 1:  # steady state: Triton compiles a kernel per alignment / divisibility of new sizes once
            run(embedder(precision, budget, atoms), items)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds, rows, batches = run(embedder(precision, budget, atoms), data)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        results[label] = (seconds, rows)
        print(f"{label:24s} {len(data) / seconds:9.1f} structures/s  {seconds:7.2f} s  {batches:5d} batches  "
              f"peak {peak:6.2f} GiB")
    set_backend(fp32_backends[-1])
    for budget in [int(b) for b in args.more_budgets.split(",") if b]:
        for precision in ("fp32", "bf16"):
            label = f"batched {precision}, budget {budget}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            run(embedder(precision, budget, 10 * budget), items)  # steady state, as above
            seconds, rows, batches = run(embedder(precision, budget, 10 * budget), items)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            results[label] = (seconds, rows)
            print(f"{label:24s} {len(items) / seconds:9.1f} structures/s  {seconds:7.2f} s  {batches:5d} batches  "
                  f"peak {peak:6.2f} GiB")
    one = results["batch-of-one fp32"]
    for label in [k for k in results if k.startswith("batched") and "x4" not in k]:
        seconds, rows = results[label]
        print(f"speed-up {label} vs batch-of-one: {one[0] / seconds:.1f}x")
    for label in [k for k in results if k.startswith("batched fp32") and "x4" not in k]:
        print(f"{label} vs batch-of-one fp32 (max |diff| / max(1, max |x|), min cosine; items beyond 1e-5):")
        for column, (diff, cosine) in compare(one[1], results[label][1], columns).items():
            beyond = sum(compare({k: v}, results[label][1], [column])[column][0] > 1e-5 for k, v in one[1].items())
            print(f"  {column:10s} {diff:.2e}  {cosine:.8f}  {beyond}")
    print("batched bf16 vs batch-of-one fp32:")
    for column, (diff, cosine) in compare(one[1], results["batched bf16"][1], columns).items():
        print(f"  {column:10s} {diff:.2e}  {cosine:.8f}")
    if args.profile and device.type == "cuda":
        for precision in ("fp32", "bf16"):
            set_backend(fp32_backends[-1] if precision == "fp32" else "auto")
            profile(embedder(precision, args.block_budget, args.atom_budget), items[:args.profile], precision)
    if args.check_graphs and device.type == "cuda":
        print(f"full node irreps, CUDA graphs vs eager: max relative |diff| {check_graphs(model, items):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
