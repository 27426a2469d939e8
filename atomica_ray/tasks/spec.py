"""What a task tells the engine: one small record of plain functions, no base class.

A task's `forward(model, batch)` returns `(loss, records)`: the loss to back-propagate and a dict of detached
tensors whose first dimension counts whatever the metrics average over (items, masked blocks, or one row per
batch). The engine concatenates `records` over the validation set of every rank and hands the numpy arrays to
`metrics(records) -> {name: float}`.

Tasks sit below the engine: they never import `atomica_ray.train`. A task reads its settings from the run's
config object by attribute (`cfg.num_pred_layers`, ...), whatever class it is (tests/test_tasks_layering.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np
    import torch

Records = dict[str, "np.ndarray"]
Config = Any  # the run's settings (the engine's TrainConfig); tasks read attributes of it, nothing else


@dataclass(frozen=True)
class Task:
    name: str
    model_class: str  # ATOMICA class name (config.json "model_type")
    data_kind: Callable[[Config], str]  # DataSpec.kind for this config
    model_kwargs: Callable[[Config], dict[str, Any]]  # head/noise arguments on top of the encoder's
    forward: Callable[["torch.nn.Module", dict], tuple["torch.Tensor", dict[str, "torch.Tensor"]]]
    metrics: Callable[[Records], dict[str, float]]
    selection_metric: str  # reported key the checkpoints and early stopping rank by (the default; see `selection`)
    mode: str  # "min" | "max"
    optimizer: str  # "adam" | "adamw" (ATOMICA's trainer for the task)
    scheduler: str  # "exp_decay" | "cosine_restarts"
    prediction_keys: tuple[str, ...] = ()  # records written by `atomica-ray predict` (besides label)
    metric_names: tuple[str, ...] = ()  # every key `metrics` reports (what --selection_metric may name)
    # the default selection metric for this config, when it depends on it (e.g. --multiclass_metric); None: fixed
    select: Callable[[Config], str] | None = None
    # called once on every worker with the fresh (or restored) model and the training set before training, for
    # state derived from the training labels that the checkpoint does not hold (e.g. --weighted_loss weights)
    prepare: Callable[[Any, Config, Any], None] | None = None
    label_kind: str = "scalar"  # "scalar" | "block" (one 0/1 per non-global block) | "vector" (num_classes floats)
    # The driver's check of a dataset's labels before Ray starts: (labels [n_items] as the data kind reads them,
    # cfg) -> None, or (index of the first bad item, what is wrong with its label). None: any number will do.
    check_labels: Callable[["np.ndarray", Config], tuple[int, str] | None] | None = None


def labels_within(low: float, high: float, what: str):
    """A `check_labels` for labels that must lie in [low, high]."""

    def check(labels, cfg):
        import numpy as np

        bad = np.flatnonzero((labels < low) | (labels > high))
        return (int(bad[0]), f"{labels[bad[0]]:g} is not {what}") if len(bad) else None

    return check


def per_class_head(cfg: Config) -> dict[str, Any]:
    """The head arguments of the multi-class and multi-label classifiers: classes, and the focal loss if asked."""
    kwargs: dict[str, Any] = dict(num_classes=cfg.num_classifier_classes)
    if cfg.use_focal_loss:
        kwargs.update(loss_type="focal", focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha)
    return kwargs


def per_class_selection(cfg: Config) -> str:
    """What the multi-class and multi-label classifiers select by (`multiclass_metric`, as current ATOMICA)."""
    return "val_f1_macro" if cfg.multiclass_metric == "f1_macro" else "val_delta_auprc"


def encoder_kwargs(cfg: Config) -> dict[str, Any]:
    """The constructor arguments every ATOMICA model shares."""
    return dict(
        atom_hidden_size=cfg.atom_hidden_size,
        block_hidden_size=cfg.block_hidden_size,
        edge_size=cfg.edge_size,
        k_neighbors=cfg.k_neighbors,
        n_layers=cfg.n_layers,
        dropout=cfg.dropout,
        bottom_global_message_passing=cfg.bottom_global_message_passing,
        global_message_passing=cfg.global_message_passing,
        fragmentation_method=cfg.fragmentation_method,
    )


def structure_inputs(batch: dict) -> dict:
    """The encoder inputs of a batch, under the model's argument names."""
    inputs = dict(
        Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
        lengths=batch["lengths"], segment_ids=batch["segment_ids"],
    )
    for key in ("block_embeddings", "block_embeddings0", "block_embeddings1"):
        if key in batch:
            inputs[key] = batch[key]
    return inputs
