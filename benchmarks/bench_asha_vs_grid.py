"""ASHA + Optuna against the full grid over the same search space, on a fixed small task.

    python benchmarks/bench_asha_vs_grid.py [--seed 0] [--num-samples 8] [--max-epoch 8] [--num-cpus 2] [--out DIR]

Task: PDBBind-style affinity regression (val_rmse, lower is better) on the built-in demo data (96 train / 128
valid items, seed 0), a small model (hidden 16, one layer). Space: lr in {1e-4, 3e-4, 1e-3, 3e-3} x k_neighbors in
{4, 8} x dropout in {0, 0.2} (16 points). The grid trains every point for max_epoch epochs; ASHA (grace period 2
epochs, reduction factor 3, max_t = max_epoch) stops weak trials of an Optuna (TPE) search that samples the same 16
points. Both run on one local Ray with the same concurrency (its logical CPUs / 2 per trial; with the default 2, one
trial at a time, so a run is reproducible). --seed seeds training and the searcher.

Prints, per sweep, the best val_rmse reached (any trial, any epoch) and the trial-epochs spent, then the ratios.
Target: ASHA within 1% of the grid's best, with <= 35% of its trial-epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


SPACE = {
    "params": {"lr": {"grid": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}, "k_neighbors": {"grid": [4, 8]},
               "dropout": {"grid": [0.0, 0.2]}},
    "asha": {"grace_period": 2, "reduction_factor": 3},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=8, help="ASHA + Optuna trials")
    ap.add_argument("--max-epoch", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray (2 per trial)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="working directory (default: a new temporary one)")
    args = ap.parse_args()

    from atomica_ray.data.demo import write_demo_splits
    from atomica_ray.tune.results import load_trials, summarize
    from atomica_ray.tune.space import parse_space
    from atomica_ray.train.launch import init_ray, shutdown_ray
    from atomica_ray.tune.sweep import resolve_settings, run_sweep

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-asha-"))
    out.mkdir(parents=True, exist_ok=True)
    data = write_demo_splits(str(out / "demo"), n_train=96, n_valid=128, seed=0, overwrite=True)
    base = {
        "task": "PDBBind", "train_set": data["train"], "valid_set": data["valid"], "max_epoch": args.max_epoch,
        "fragmentation_method": "PS_300", "atom_hidden_size": 16, "block_hidden_size": 16, "edge_size": 8,
        "n_layers": 1, "max_n_vertex_per_gpu": 400, "grad_clip": 1.0, "tensorboard": False, "seed": args.seed,
    }
    space = parse_space(SPACE, "bench_asha_vs_grid.SPACE")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = {
        "grid": dict(scheduler="fifo", search="grid", num_samples=1),
        "asha_optuna": dict(scheduler="asha", search="optuna", num_samples=args.num_samples),
    }
    init_ray(None, args.num_cpus)
    summary = {}
    try:
        for label, how in runs.items():
            settings = resolve_settings(base, space, name=f"{label}-{stamp}", storage_path=str(out / "runs"),
                                        gpus_per_trial=0, workers_per_trial=1, max_concurrent=None, seed=args.seed,
                                        **how)
            t0 = time.time()
            run_sweep(settings)
            wall = time.time() - t0
            best = summarize(settings.experiment_dir, export=False)
            trials = load_trials(settings.experiment_dir)
            summary[label] = {
                "trials": len(trials), "trial_epochs": sum(t.epochs for t in trials), "best_val_rmse": best["value"],
                "best_params": best["params"], "wall_s": round(wall, 1), "dir": settings.experiment_dir,
            }
            print(f"{label}: best val_rmse {best['value']:.4f} {best['params']}, {summary[label]['trials']} trials, "
                  f"{summary[label]['trial_epochs']} trial-epochs, {wall:.0f} s", flush=True)
    finally:
        shutdown_ray()
    g, a = summary["grid"], summary["asha_optuna"]
    gap = (a["best_val_rmse"] - g["best_val_rmse"]) / g["best_val_rmse"]
    frac = a["trial_epochs"] / g["trial_epochs"]
    summary["asha_vs_grid"] = {"metric_gap": gap, "trial_epoch_fraction": frac,
                               "target_met": gap <= 0.01 and frac <= 0.35}
    print(f"ASHA+Optuna vs grid: best val_rmse {gap * 100:+.2f}% (target <= +1%), trial-epochs {frac * 100:.0f}% "
          f"(target <= 35%): {'met' if summary['asha_vs_grid']['target_met'] else 'NOT met'}")
    (out / "bench_asha_vs_grid.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
