"""Ray Train's overhead on one GPU (issue 7, P2): the epoch wall time of `atomica-ray train --num-workers 1
--use-gpu` against a bare single-process PyTorch loop, same data, model, optimizer and loader.

    python benchmarks/bench_ray_overhead.py --root /tmp/ray-bench --base .bench/demo1k --repeat 6 --epochs 4
                                            [--loader-workers 8] [--device cuda|cpu] [--n-items N]
                                            [--precision fp32|bf16] [--cuda-graphs]

Data: binary_classifier on demo items (`--base` repeated `--repeat` times under new ids, or `--n-items` fresh demo
items). Model: ATOMICA's released configuration (hidden 32/32, edge 32, 4 layers, k 8, PS_300, global message
passing), batches of <= 1000 blocks, fp32 unless `--precision bf16`; `--cuda-graphs` on both sides.

(a) bare: `make_loader` -> `create_model` -> the task's loss -> backward -> optimizer step, no Ray; an epoch is
    timed from building its loader to the last step finished on the device.
(b) ray: `atomica_ray.train.launch` (what `atomica-ray train` runs): Ray is started first (timed apart), then the
    TorchTrainer fits; an epoch is the time between two consecutive end-of-epoch reports, seen as new lines of the
    run's metrics_history.jsonl (polled every 5 ms): its training (the report's `train_time_s`) plus its
    checkpoint and `ray.train.report`.
Epoch 0 of each is warm-up (CUDA context, kernels, worker start) and is not counted. Printed: per-epoch times,
median/min/max of each, the ratio ray / bare epoch by epoch (epoch e has the same batches on both sides) and of
the total time of epochs 1.. (target <= 1.03), and Ray's start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loader import repeat_dataset  # noqa: E402

from atomica_ray.data import make_loader  # noqa: E402
from atomica_ray.data.demo import write_demo_dataset  # noqa: E402
from atomica_ray.tasks import get_task  # noqa: E402
from atomica_ray.train.config import TrainConfig  # noqa: E402
from atomica_ray.models.kernels.cuda_graphs import capture_stats, enable_cuda_graphs  # noqa: E402
from atomica_ray.train.loop import autocast, build_model, data_spec, seed_all, to_device  # noqa: E402
from atomica_ray.train.schedule import build_optimizer  # noqa: E402

RELEASED = dict(atom_hidden_size=32, block_hidden_size=32, edge_size=32, n_layers=4, k_neighbors=8,
                fragmentation_method="PS_300", global_message_passing=True, bottom_global_message_passing=False,
                max_n_vertex_per_gpu=1000, max_n_vertex_per_item=256)


def summary(times: list[float]) -> str:
    return (f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}; "
            f"{len(times)} epochs: {', '.join(f'{t:.2f}' for t in times)})")


def bare_epochs(cfg: TrainConfig, device: torch.device) -> list[float]:
    """Epoch wall times of a plain loop over the same loader, model and optimizer (epoch 0 included)."""
    task = get_task(cfg.task)
    seed_all(cfg.seed)
    model = build_model(cfg, task).to(device).train()
    if cfg.cuda_graphs and device.type == "cuda":  # as the engine does
        enable_cuda_graphs(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg, task.optimizer)
    spec = data_spec(cfg, task, cfg.train_set, train=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for epoch in range(cfg.max_epoch):
        sync()
        t0 = time.perf_counter()
        loader = make_loader(spec, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle, num_workers=cfg.loader_workers,
                             pin_memory=device.type == "cuda")
        loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for batch in loader:
            with autocast(cfg, device):
                loss, _ = task.forward(model, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        sync()
        times.append(time.perf_counter() - t0)
        captures, seconds = capture_stats(model)
        print(f"P2 bare epoch {epoch}: {times[-1]:.2f} s, {len(loader)} steps, mean loss "
              f"{float(loss_sum) / max(len(loader), 1):.4f}; CUDA graph captures so far {captures} ({seconds:.2f} s)",
              flush=True)
    return times


class ReportWatcher(threading.Thread):
    """Records the wall-clock time at which each new line appears in the run's metrics_history.jsonl."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path, self.stamps, self.stop = path, [], threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.stop.is_set():
            try:
                with open(self.path) as f:
                    lines = sum(1 for line in f if line.strip())
            except FileNotFoundError:
                lines = 0
            now = time.perf_counter()
            if lines > seen:
                self.stamps.extend([now] * (lines - seen))
                seen = lines
                gap = f"{now - self.stamps[-2]:.2f} s after the previous" if len(self.stamps) > 1 else "first"
                print(f"P2 ray report {seen - 1} seen ({gap})", flush=True)  # kept even if fit() hangs later
            time.sleep(0.005)


def ray_epochs(cfg: TrainConfig, storage: str) -> tuple[list[float], float, float, float]:
    """(epoch times from the reports, Ray start-up s, fit start -> first report s, whole fit s)."""
    from atomica_ray.train.checkpoint import HISTORY_FILE
    from atomica_ray.train.launch import build_trainer, init_ray, local_cpus_needed

    t0 = time.perf_counter()
    init_ray(None, local_cpus_needed(cfg))
    ray_start = time.perf_counter() - t0
    name = "ray-overhead"
    watcher = ReportWatcher(os.path.join(storage, name, HISTORY_FILE))
    watcher.start()
    trainer = build_trainer(cfg, name, storage)
    t1 = time.perf_counter()
    trainer.fit()
    fit = time.perf_counter() - t1
    time.sleep(0.05)
    watcher.stop.set()
    watcher.join()
    stamps = watcher.stamps
    if len(stamps) != cfg.max_epoch:
        raise RuntimeError(f"expected {cfg.max_epoch} reports in {watcher.path}, saw {len(stamps)}")
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    with open(watcher.path) as f:
        for row in map(json.loads, f):
            print(f"P2 ray epoch {row['epoch']}: training {row['train_time_s']:.2f} s (loader start to last step; "
                  f"the rest of an epoch is validation, checkpoint, report), train_loss {row['train_loss']:.4f}; "
                  f"CUDA graph captures so far "
                  f"{row.get('graph_captures', 0)} ({row.get('graph_capture_s', 0.0):.2f} s)", flush=True)
    return times, ray_start, stamps[0] - t1, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="scratch dir (dataset, Ray run storage)")
    parser.add_argument("--base", help="a demo dataset to repeat (else --n-items demo items are generated)")
    parser.add_argument("--n-items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run; the first is warm-up")
    parser.add_argument("--loader-workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-blocks", type=int, default=1000, help="block budget of a batch (small: CPU smoke run)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the engine's `precision`")
    parser.add_argument("--cuda-graphs", action="store_true", help="the engine's `cuda_graphs: true`")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 0 is warm-up)")

    os.makedirs(args.root, exist_ok=True)
    base = args.base
    if base is None:
        base = os.path.join(args.root, "demo")
        write_demo_dataset(base, args.n_items, seed=0, overwrite=True)
    data = os.path.join(args.root, "train")
    n_items = repeat_dataset(base, data, args.repeat)
    device = torch.device(args.device)
    cfg = TrainConfig(task="binary_classifier", train_set=data, max_epoch=args.epochs, lr=1e-3,
                      loader_workers=args.loader_workers, num_workers=1, use_gpu=device.type == "cuda",
                      progress_bar=False, precision=args.precision, cuda_graphs=args.cuda_graphs,
                      **{**RELEASED, "max_n_vertex_per_gpu": args.batch_blocks})
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"P2 setup: {n_items} items, {args.epochs} epochs, loader_workers={args.loader_workers}, "
          f"precision={args.precision}, device={gpu}",
          flush=True)

    bare = bare_epochs(cfg, device)[1:]
    print(f"P2 bare (epochs 1..): {summary(bare)}", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.skip_ray:
        return
    storage = tempfile.mkdtemp(prefix="ray-store-", dir=args.root)
    try:
        ray, ray_start, first, fit = ray_epochs(cfg, storage)
    except Exception as error:  # say why on a "P2" line: logs of the device run are filtered by that prefix
        import traceback

        print(f"P2 ray FAILED: {type(error).__name__}: {error}\n{traceback.format_exc()}", flush=True)
        raise
    print(f"P2 ray (epochs 1..): {summary(ray)}", flush=True)
    print(f"P2 ray start-up: ray.init {ray_start:.2f} s; fit start -> end of epoch 0 {first:.2f} s "
          f"(bare epoch 0 took the warm-up too); whole fit {fit:.2f} s", flush=True)
    # Epoch e holds the same batches on both sides, and epochs differ (batch sizes, new graph buckets): compare
    # epoch by epoch, and the total.
    paired = [r / b for r, b in zip(ray, bare)]
    print(f"P2 ratio ray/bare per epoch: {', '.join(f'{x:.3f}' for x in paired)}; of the medians "
          f"{statistics.median(ray) / statistics.median(bare):.3f}", flush=True)
    print(f"P2 ratio ray/bare (epochs 1.. in all, {sum(ray):.2f} s / {sum(bare):.2f} s): {sum(ray) / sum(bare):.3f}  "
          f"(target <= 1.03)", flush=True)


if __name__ == "__main__":
    main()
