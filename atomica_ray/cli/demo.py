"""`atomica-ray demo`: the README's main command. Makes the built-in demo data, trains a small binary classifier
(ATOMICA-Ligand's task: does the partner touch the protein?) on a local Ray with 2 CPU workers, then prints its
validation metrics next to a constant predictor's (the training set's positive rate). Exits non-zero unless the
model is clearly better: val BCE at most 90% of the constant predictor's, and val AUROC at least 0.75.

    atomica-ray demo [--out DIR] [--epochs E]
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np

BCE_RATIO = 0.9  # the model's val BCE must be at most this fraction of the constant predictor's
MIN_AUROC = 0.75


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="atomica-ray-demo", help="directory for the data and the run")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=320)
    parser.add_argument("--n-valid", type=int, default=96)
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="use this Ray cluster instead of a new local one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config key")


def demo_config(data: dict, args):
    from atomica_ray.train.config import TrainConfig

    cfg = TrainConfig(
        task="binary_classifier", train_set=data["train"], valid_set=data["valid"], fragmentation_method="PS_300",
        atom_hidden_size=16, block_hidden_size=16, edge_size=16, n_layers=2, k_neighbors=8,
        global_message_passing=True, max_n_vertex_per_gpu=400, lr=2e-3, final_lr=2e-4, max_epoch=args.epochs,
        num_workers=args.num_workers, seed=args.seed, progress_bar=False, save_topk=1,
    )
    return cfg.with_overrides(args.overrides) if args.overrides else cfg


def constant_bce(train_labels: np.ndarray, valid_labels: np.ndarray) -> float:
    """BCE on the validation set of always predicting the training set's positive rate."""
    from atomica_ray.train.metrics import bce

    return bce(np.full(len(valid_labels), train_labels.mean()), valid_labels)


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

    train_labels = open_dataset(data["train"], fragmentation_method="PS_300").index["label"]
    valid_labels = open_dataset(data["valid"], fragmentation_method="PS_300").index["label"]
    baseline = constant_bce(train_labels, valid_labels)
    m = result.metrics or {}
    bce, auroc, auprc = m.get("val_bce", math.nan), m.get("val_auroc", math.nan), m.get("val_auprc", math.nan)
    rate = float(valid_labels.mean())
    print()
    print(f"{'validation (' + str(len(valid_labels)) + ' items)':<34}{'BCE':>8}{'AUROC':>8}{'AUPRC':>8}")
    print(f"{'model, epoch ' + str(m.get('epoch', '?')):<34}{bce:8.4f}{auroc:8.4f}{auprc:8.4f}")
    print(f"{'constant p=%.3f (train pos. rate)' % train_labels.mean():<34}{baseline:8.4f}{0.5:8.4f}{rate:8.4f}")
    print(f"\nrun directory: {result.path}   ({time.perf_counter() - start:.0f} s)")
    if bce <= BCE_RATIO * baseline and auroc >= MIN_AUROC:
        print(f"the model learned: BCE {bce:.4f} <= {BCE_RATIO} x {baseline:.4f} and AUROC {auroc:.3f} >= {MIN_AUROC}")
        return 0
    print(f"atomica-ray demo: the model is not clearly better than the constant predictor (needs BCE <= "
          f"{BCE_RATIO} x constant and AUROC >= {MIN_AUROC})", file=sys.stderr)
    return 1
