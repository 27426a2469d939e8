"""Loader throughput and time to first batch (issue 7, P3).

    python benchmarks/bench_loader.py --root /tmp/loader-bench [--base .bench/demo1k] [--repeat 100]
                                      [--workers 1 4 8 15] [--kinds pretrain_masked_torsion labelled]

Builds a large Parquet dataset by repeating the demo items (`--base`, else `--n-items` fresh demo items) `--repeat`
times under new ids (1000 x 100 = 100k items; item sizes and content are realistic, only the count matters here).
Then, per data kind (`pretrain_masked_torsion`: pretraining noise + masking on; `labelled`: fine-tuning):
- the trainer's one-time set-up before epoch 0, `prepare_tables` (noise tables: built and cached on a machine's
  first use, loaded afterwards), timed apart;
- time to first batch of an epoch (loader built from scratch: epoch plan + worker start + first batch), epochs 0
  and 1 (the first one pays the cold page cache);
- batches/s with N loader worker processes, after two batches of warm-up, over `--batches` batches,
  in 5 windows (median, min, max).
Batches are ATOMICA's: <= 1000 blocks, items cropped to <= 256 blocks. Each figure is printed as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import pyarrow as pa
import pyarrow.parquet as pq

from atomica_ray.data import DataSpec, make_loader
from atomica_ray.data.demo import write_demo_dataset
from atomica_ray.data.loader import prepare_tables
from atomica_ray.data.torus import cache_dir
from atomica_ray.data.parquet import INDEX_COLUMNS, write_index


def repeat_dataset(base: str, out: str, repeat: int) -> int:
    """Write the items of dataset `base` `repeat` times (ids suffixed `_r<k>`) as one Parquet dataset at `out`."""
    table = pq.read_table(os.path.join(base, "items.parquet"))
    with open(os.path.join(base, "dataset.json")) as f:
        meta = json.load(f)
    os.makedirs(out, exist_ok=True)
    id_col = table.schema.get_field_index("id")
    ids = table.column("id").to_pylist()
    path = os.path.join(out, "items.parquet")
    with pq.ParquetWriter(path, table.schema, compression="zstd") as writer:
        for r in range(repeat):
            copy = table.set_column(id_col, table.schema.field(id_col), pa.array([f"{x}_r{r}" for x in ids]))
            writer.write_table(copy, row_group_size=32)
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    meta["n_items"] = n
    meta["files"] = [{"name": "items.parquet", "n_items": n,
                      "row_groups": [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]}]
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(meta, f)
    write_index(pq.read_table(path, columns=list(INDEX_COLUMNS)), out)
    return n


def first_batch(spec: DataSpec, epoch: int, workers: int) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    loader = make_loader(spec, seed=0, epoch=epoch, num_workers=workers)
    it = iter(loader)
    batch = next(it)
    dt = time.perf_counter() - t0
    del it
    return dt, len(loader), batch


def throughput(spec: DataSpec, workers: int, n_batches: int, n_windows: int = 5) -> list[float]:
    """batches/s in `n_windows` consecutive windows of the timed batches (for median, min, max)."""
    loader = make_loader(spec, seed=0, epoch=2, num_workers=workers, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it), next(it)  # workers started and their queues filling
    stamps = [time.perf_counter()]
    for _ in it:
        stamps.append(time.perf_counter())
        if len(stamps) > n_batches:
            break
    del it
    per = max(1, (len(stamps) - 1) // n_windows)
    return [per / (stamps[i + per] - stamps[i]) for i in range(0, len(stamps) - per, per)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="scratch dir for the datasets")
    parser.add_argument("--base", help="a demo dataset to repeat (else --n-items demo items are generated)")
    parser.add_argument("--n-items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 15])
    parser.add_argument("--first-batch-workers", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300, help="timed batches per setting (1 worker: a fifth)")
    parser.add_argument("--kinds", nargs="+", default=["pretrain_masked_torsion", "labelled"])
    args = parser.parse_args()

    base = args.base
    if base is None:
        base = os.path.join(args.root, "demo")
        t0 = time.perf_counter()
        write_demo_dataset(base, args.n_items, seed=0, overwrite=True)
        print(f"demo items: {args.n_items} in {time.perf_counter() - t0:.1f} s", flush=True)
    big = os.path.join(args.root, "big")
    t0 = time.perf_counter()
    n = repeat_dataset(base, big, args.repeat)
    print(f"dataset: {n} items at {big} ({time.perf_counter() - t0:.1f} s to write)", flush=True)

    for kind in args.kinds:
        spec = DataSpec(big, kind=kind, max_n_vertex_per_gpu=1000, max_n_vertex_per_item=256)
        t0 = time.perf_counter()
        prepare_tables(spec)  # what the trainer does once, before its first epoch
        print(f"P3 set-up kind={kind}: noise tables ready in {time.perf_counter() - t0:.2f} s (cache "
              f"{cache_dir()})", flush=True)
        for epoch in (0, 1):
            dt, n_batches, b = first_batch(spec, epoch, args.first_batch_workers)
            print(f"P3 first-batch kind={kind} epoch={epoch} workers={args.first_batch_workers}: {dt:.2f} s "
                  f"({n_batches} batches in the epoch; batch of {int(b['lengths'].sum())} blocks, "
                  f"{len(b['A'])} atoms)", flush=True)
        for workers in args.workers:
            budget = max(10, args.batches // 5) if workers <= 1 else args.batches
            rates = throughput(spec, workers, budget)
            print(f"P3 throughput kind={kind} workers={workers}: median {statistics.median(rates):.1f} batches/s "
                  f"(min {min(rates):.1f}, max {max(rates):.1f}; {len(rates)} windows over {budget} batches)",
                  flush=True)


if __name__ == "__main__":
    main()
