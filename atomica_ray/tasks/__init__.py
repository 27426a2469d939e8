"""The ATOMICA tasks, one short module each, and the registry the engine reads (docs/DESIGN.md).

| task name(s)                                  | module          | model class                |
|-----------------------------------------------|-----------------|----------------------------|
| PDBBind, regression                           | affinity        | AffinityPredictor / RegressionPredictor |
| binary_classifier                             | binary          | ClassifierModel            |
| multiclass_classifier                         | multiclass      | MultiClassClassifierModel  |
| residue_binary_classifier                     | residue         | ResidueClassifierModel     |
| multilabel_classifier                         | multilabel      | MultiLabelClassifierModel  |
| pretrain_torsion, pretrain_gaussian           | pretrain        | DenoisePretrainModel       |
| pretrain_torsion_masking                      | pretrain        | DenoisePretrainModel (+ masking head) |
| masking                                       | masking         | MaskedNodeModel            |
| prot_interface                                | prot_interface  | ProteinInterfaceModel      |
"""

from __future__ import annotations

import dataclasses

from atomica_ray.tasks.spec import Config, Task

_MODULES = {
    "PDBBind": ("affinity", "PDBBIND"),
    "regression": ("affinity", "REGRESSION"),
    "binary_classifier": ("binary", "BINARY"),
    "multiclass_classifier": ("multiclass", "MULTICLASS"),
    "residue_binary_classifier": ("residue", "RESIDUE"),
    "multilabel_classifier": ("multilabel", "MULTILABEL"),
    "pretrain_torsion": ("pretrain", "PRETRAIN_TORSION"),
    "pretrain_gaussian": ("pretrain", "PRETRAIN_GAUSSIAN"),
    "pretrain_torsion_masking": ("pretrain", "PRETRAIN_TORSION_MASKING"),
    "masking": ("masking", "MASKING"),
    "prot_interface": ("prot_interface", "PROT_INTERFACE"),
}

TASKS = tuple(_MODULES)  # task names, as ATOMICA's --task spells them


def get_task(name: str) -> Task:
    """The Task record of a task name (imported on demand: the task modules import torch)."""
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    import importlib

    module, attr = _MODULES[name]
    return getattr(importlib.import_module(f"atomica_ray.tasks.{module}"), attr)


def selection(task: Task, cfg: Config) -> tuple[str, str]:
    """(metric, mode) that checkpoints, early stopping and sweeps rank this run by: `cfg.selection_metric` when
    set (its direction from `metrics.mode_of`), else the task's default for this config."""
    from atomica_ray.tasks.metrics import mode_of

    override = getattr(cfg, "selection_metric", None)
    if override:
        if task.metric_names and override not in task.metric_names:
            raise ValueError(f"selection_metric {override!r} is not reported by task {task.name}; choose one of "
                             f"{list(task.metric_names)}")
        return override, mode_of(override)
    if task.select is not None:
        metric = task.select(cfg)
        return metric, mode_of(metric)
    return task.selection_metric, task.mode


def task_for(cfg: Config) -> Task:
    """The task of a run config, with the selection metric and mode this config asks for."""
    task = get_task(cfg.task)
    metric, mode = selection(task, cfg)
    return dataclasses.replace(task, selection_metric=metric, mode=mode)
