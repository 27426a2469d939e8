"""`atomica-ray predict`: a trained task model's predictions on a dataset, on a Ray Data pipeline.

    atomica-ray predict --checkpoint runs/ligand --data_path test/ --output_path p.parquet        # best checkpoint
    atomica-ray predict --checkpoint runs/ligand --which latest --data_path test/ --output_path p.parquet

Works for the per-item tasks (PDBBind, regression, binary_classifier, multiclass_classifier); the model class in
config.json says which. Columns: id, prediction (affinity / value / probability of class 1; for multiclass the
predicted class and `probabilities`), and label when the dataset has one for every item. Predictions do not
depend on how items are batched.
"""

from __future__ import annotations

import numpy as np


def add_arguments(parser) -> None:
    from atomica_ray.inference.pipeline import add_arguments as common

    common(parser, "a .parquet file, or a directory of Parquet parts (resumable either way)")


def has_labels(dataset, kind: str) -> bool:
    index = dataset.index
    if kind in ("residue", "multilabel"):  # list labels: a length per item, -1 where absent
        counts = index["n_block_labels" if kind == "residue" else "n_label_vector"]
        return bool(len(counts)) and bool((np.asarray(counts) >= 0).all())
    if kind == "affinity":
        values = index["affinity"]
    elif kind == "labelled":
        values = np.where(np.isnan(index["label"]), index["affinity"], index["label"])
    else:
        values = index["label"]
    return bool(len(values)) and not np.isnan(values).any()


def run(args) -> int:
    from atomica_ray.inference.pipeline import run_command

    return run_command("predict", args, lambda: predict(args))


def predict(args) -> int:
    from atomica_ray.data.loader import FIELDS_USED
    from atomica_ray.inference import checkpoints
    from atomica_ray.inference.pipeline import execute
    from atomica_ray.tasks import get_task
    from atomica_ray.train.config import TrainConfig

    files = checkpoints.resolve(args.checkpoint, args.model_config, args.model_weights, args.which)
    model_type = checkpoints.read_config(files).get("model_type")
    if model_type not in checkpoints.PREDICTING_TASKS:
        raise ValueError(f"{files.config}: {model_type} makes no per-item prediction; predict supports "
                         f"{sorted(checkpoints.PREDICTING_TASKS)} (use `atomica-ray embed` for embeddings)")
    task = get_task(checkpoints.PREDICTING_TASKS[model_type])
    kind = task.data_kind(TrainConfig(task=task.name, num_classifier_classes=2))
    options = {"task": task.name, "kind": kind}

    def check(dataset, model_config):
        options["labelled"] = has_labels(dataset, kind)

    return execute(args, "predict", options, fields=FIELDS_USED[kind], check=check, verb="predicted")
