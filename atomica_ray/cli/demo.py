"""`atomica-ray demo`: the README's main command. Makes the built-in demo data, trains a small model on a local Ray
with 2 CPU workers, then prints its validation metrics next to a constant predictor's, and exits non-zero unless
the model is clearly better.

Tasks (`--task`):
- binary_classifier (default; ATOMICA-Ligand's task): does the partner touch the protein? Constant predictor: the
  training positive rate. Passes if val BCE <= 90% of the constant's and AUROC >= 0.75. Two message-passing
  layers: in our runs one layer never learned this label, two learned it in ~20 epochs (~300 steps).
- PDBBind: the demo affinity (a smooth count of partner atoms in contact with the protein). Constant
  predictor: the training mean. Passes if val RMSE <= 80% of the constant's and Pearson >= 0.5.
Items are cropped to the 16 blocks around the interface (`max_n_vertex_per_item`, as ATOMICA's pretraining
crops to 256): the signal is there, and steps are several times faster.

    atomica-ray demo [--out DIR] [--epochs E] [--task PDBBind|binary_classifier]
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# (metric, constant-predictor ratio it must reach, second metric, its minimum)
CRITERIA = {"PDBBind": ("val_rmse", 0.8, "val_pearson", 0.5), "binary_classifier": ("val_bce", 0.9, "val_auroc", 0.75)}


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="atomica-ray-demo", help="directory for the data and the run")
    parser.add_argument("--task", choices=sorted(CRITERIA), default="binary_classifier")
    parser.add_argument("--epochs", type=int, default=None, help="default: 25 (binary_classifier), 60 (PDBBind)")
    parser.add_argument("--n-train", type=int, default=320)
    parser.add_argument("--n-valid", type=int, default=96)
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="use this Ray cluster instead of a new local one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config key")


def demo_config(data: dict, args):
    from atomica_ray.train.config import TrainConfig

    binary = args.task == "binary_classifier"
    cfg = TrainConfig(
        task=args.task, train_set=data["train"], valid_set=data["valid"], fragmentation_method="PS_300",
        atom_hidden_size=16, block_hidden_size=16, edge_size=16, n_layers=2 if binary else 1, k_neighbors=8,
        global_message_passing=True, max_n_vertex_per_gpu=160, max_n_vertex_per_item=16, lr=1e-3,
        max_epoch=args.epochs or (25 if binary else 60), num_workers=args.num_workers, seed=args.seed,
        progress_bar=False, save_topk=1,
    )
    return cfg.with_overrides(args.overrides) if args.overrides else cfg


def constant_predictor(task: str, train: np.ndarray, valid: np.ndarray) -> dict:
    """Validation metrics of always predicting the training set's mean (positive rate)."""
    from atomica_ray.tasks import metrics as M

    if task == "binary_classifier":
        return {"val_bce": M.bce(np.full(len(valid), train.mean()), valid), "val_auroc": 0.5}
    return {"val_rmse": M.rmse(np.full(len(valid), train.mean()), valid), "val_pearson": 0.0}


def run(args) -> int:
    from atomica_ray.data import open_dataset
    from atomica_ray.data.demo import write_demo_splits
    from atomica_ray.train.launch import run as fit

    start = time.perf_counter()
    out = Path(args.out).resolve()
    data = {"train": str(out / "data" / "train"), "valid": str(out / "data" / "valid")}
    if not all(os.path.isdir(p) for p in data.values()):
        print(f"writing demo data ({args.n_train} training, {args.n_valid} validation items) to {out / 'data'}")
        data = write_demo_splits(str(out / "data"), args.n_train, args.n_valid, seed=args.seed)
    else:
        print(f"using the demo data in {out / 'data'}")
    cfg = demo_config(data, args)
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {cfg.task} for {cfg.max_epoch} epochs on {cfg.num_workers} Ray CPU workers "
          f"(run {out / 'runs' / name})")
    import ray.train

    try:
        result = fit(cfg, name=name, storage_path=str(out / "runs"), address=args.address)
    except ray.train.TrainingFailedError as error:
        print(f"atomica-ray demo: training failed: {error}", file=sys.stderr)
        return 1

    column = "affinity" if cfg.task == "PDBBind" else "label"
    train = open_dataset(data["train"], fragmentation_method="PS_300").index[column]
    valid = open_dataset(data["valid"], fragmentation_method="PS_300").index[column]
    metric, ratio, second, minimum = CRITERIA[cfg.task]
    const = constant_predictor(cfg.task, train, valid)
    m = result.metrics or {}
    # the best checkpoint's metrics (Ray keeps them), not only the last epoch's
    if result.best_checkpoints:
        best = min(result.best_checkpoints, key=lambda cm: cm[1].get(metric, math.inf))[1]
        m = best if best.get(metric) is not None else m
    model = {metric: m.get(metric, math.nan), second: m.get(second, math.nan)}
    print()
    print(f"{'validation (' + str(len(valid)) + ' items)':<36}{metric:>12}{second:>12}")
    print(f"{'model, best epoch ' + str(m.get('epoch', '?')):<36}{model[metric]:12.4f}{model[second]:12.4f}")
    print(f"{'constant %.3f (training mean)' % train.mean():<36}{const[metric]:12.4f}{const[second]:12.4f}")
    print(f"\nrun directory: {result.path}   ({time.perf_counter() - start:.0f} s)")
    if model[metric] <= ratio * const[metric] and model[second] >= minimum:
        print(f"the model learned: {metric} {model[metric]:.4f} <= {ratio} x {const[metric]:.4f}, "
              f"{second} {model[second]:.3f} >= {minimum}")
        return 0
    print(f"atomica-ray demo: the model is not clearly better than the constant predictor (needs {metric} <= "
          f"{ratio} x constant and {second} >= {minimum})", file=sys.stderr)
    return 1
