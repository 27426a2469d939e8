"""Throughput of `atomica-ray process`: structures per second per core, in one process and on Ray tasks.

    python benchmarks/bench_process.py                       # the real files of tests/data (index rows x --repeat)
    python benchmarks/bench_process.py --index my.csv --repeat 1 --fragmentation_method PS_300

Each row of the index is one structure (file read, chains assembled, blocks, interface, item, validation). The
rows are repeated `--repeat` times so a run lasts long enough to time. Prints, per mode:
  serial   this process alone (no Ray): structures/s = structures/s per core
  ray      Ray tasks on a local Ray of `--num-cpus` CPUs (default: all cores), the path `atomica-ray process`
           takes: structures/s and structures/s per core (Ray's start is not timed; the first pass over the
           rows warms the workers and is not timed either)
The machine's 1-minute load average is printed with the figures: on a shared machine it explains the spread.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=str(ROOT / "tests/data/atomica_process_pdbs/index.csv"))
    parser.add_argument("--repeat", type=int, default=20, help="passes over the index rows (default 20)")
    parser.add_argument("--fragmentation_method", default="none", choices=["none", "PS_300", "PS_500"])
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--modes", default="serial,ray")
    args = parser.parse_args()

    from atomica_ray.structures.index import read_rows
    from atomica_ray.structures.parallel import process_rows, process_rows_on_ray
    from atomica_ray.structures.rows import Options

    options = Options(None if args.fragmentation_method == "none" else args.fragmentation_method)
    rows = read_rows(args.index) * args.repeat
    n_atoms = None
    print(f"{len(rows)} structures ({args.repeat} x {args.index}), fragmentation {args.fragmentation_method}, "
          f"{os.cpu_count()} cores")

    def run(results) -> float:
        nonlocal n_atoms
        start = time.perf_counter()
        atoms = 0
        for res in results:
            assert res.error is None, res.error
            atoms += sum(len(r["A"]) for r in res.records)
        n_atoms = atoms
        return time.perf_counter() - start

    if "serial" in args.modes:
        list(process_rows(rows[:len(rows) // args.repeat], options))  # imports, vocabularies
        seconds = run(process_rows(rows, options))
        print(f"serial: {len(rows) / seconds:.1f} structures/s on 1 core ({seconds:.2f} s, {n_atoms} item atoms; "
              f"load {os.getloadavg()[0]:.1f})")
    if "ray" in args.modes:
        import ray

        from atomica_ray.train.launch import init_ray

        init_ray(num_cpus=args.num_cpus)
        cpus = int(ray.cluster_resources()["CPU"])
        run(process_rows_on_ray(rows, options, progress=False))  # workers started and warmed
        seconds = run(process_rows_on_ray(rows, options, progress=False))
        print(f"ray:    {len(rows) / seconds:.1f} structures/s on {cpus} CPUs = {len(rows) / seconds / cpus:.1f} "
              f"structures/s per core ({seconds:.2f} s; load {os.getloadavg()[0]:.1f})")
        ray.shutdown()


if __name__ == "__main__":
    main()
