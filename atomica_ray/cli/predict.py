"""`atomica-ray predict`: a trained task model's predictions on a dataset, written to Parquet.

    atomica-ray predict --checkpoint runs/ligand/checkpoint_epoch0009_step00001234 \\
        --data_path test/ --output_path p.parquet

Works for the per-item tasks (PDBBind, regression, binary_classifier, multiclass_classifier); the model class in
config.json says which. Columns: id, prediction (affinity / value / probability of class 1; for multiclass the
predicted class and `probabilities`), and label when the dataset has one.
"""

from __future__ import annotations

import sys
import time

import numpy as np

# predict reads a model and a dataset exactly as embed does
from atomica_ray.cli.embed import add_arguments  # noqa: F401


def has_labels(path: str, kind: str, fragmentation_method, allow_pickle: bool) -> bool:
    from atomica_ray.data import open_dataset

    index = open_dataset(path, allow_pickle=allow_pickle, fragmentation_method=fragmentation_method).index
    if kind == "affinity":
        values = index["affinity"]
    elif kind == "labelled":
        values = np.where(np.isnan(index["label"]), index["affinity"], index["label"])
    else:
        values = index["label"]
    return bool(len(values)) and not np.isnan(values).any()


def run(args) -> int:
    import torch  # here, not at import: `--help` answers without torch

    from atomica_ray.tasks import get_task
    from atomica_ray.train import inference as inf
    from atomica_ray.train.config import TrainConfig
    from atomica_ray.train.loop import to_device

    start = time.perf_counter()
    try:
        config, device, model, model_config = inf.model_from_args(args)
        model_type = model_config["model_type"]
        if model_type not in inf.PREDICTING_TASKS:
            raise ValueError(f"{config}: {model_type} makes no per-item prediction; predict supports "
                             f"{sorted(inf.PREDICTING_TASKS)} (use `atomica-ray embed` for embeddings)")
        task = get_task(inf.PREDICTING_TASKS[model_type])
        frag = inf.fragmentation_of(model_config)
        kind = task.data_kind(TrainConfig(task=task.name, num_classifier_classes=2))
        labelled = has_labels(args.data_path, kind, frag, args.allow_pickle)
        batches = inf.ordered_batches(args.data_path, kind if labelled else "plain", args.budget, frag,
                                      args.allow_pickle)
        multiclass = model_type == "MultiClassClassifierModel"
        with inf.ParquetRows(args.output_path, overwrite=args.overwrite) as out, torch.no_grad():
            for ids, batch in batches:
                batch = to_device(batch, device)
                if not labelled:  # the forward wants a label; its loss is ignored here
                    n = batch["lengths"].shape[0]
                    batch["label"] = torch.zeros(n, dtype=torch.long if multiclass else torch.float32, device=device)
                _, rec = task.forward(model, batch)
                for i, item in enumerate(ids):
                    row = {"id": item}
                    if multiclass:
                        prob = rec["prob"][i]
                        row["prediction"] = int(prob.argmax())
                        row["probabilities"] = inf.as_list(prob)
                    else:
                        row["prediction"] = float(rec[task.prediction_keys[0]][i])
                    if labelled:
                        row["label"] = int(rec["label"][i]) if multiclass else float(rec["label"][i])
                    out.add(row)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        print(f"atomica-ray predict: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote predictions for {out.count} items to {args.output_path} in {time.perf_counter() - start:.1f} s")
    return 0
