"""The seven ATOMICA tasks, one short module each, and the registry the engine reads (docs/DESIGN.md).

| task name(s)                                  | module          | model class                |
|-----------------------------------------------|-----------------|----------------------------|
| PDBBind, regression                           | affinity        | AffinityPredictor / RegressionPredictor |
| binary_classifier                             | binary          | ClassifierModel            |
| multiclass_classifier                         | multiclass      | MultiClassClassifierModel  |
| pretrain_torsion, pretrain_gaussian           | pretrain        | DenoisePretrainModel       |
| pretrain_torsion_masking                      | pretrain        | DenoisePretrainModel (+ masking head) |
| masking                                       | masking         | MaskedNodeModel            |
| prot_interface                                | prot_interface  | ProteinInterfaceModel      |
"""

from __future__ import annotations

from atomica_ray.tasks.spec import Task

_MODULES = {
    "PDBBind": ("affinity", "PDBBIND"),
    "regression": ("affinity", "REGRESSION"),
    "binary_classifier": ("binary", "BINARY"),
    "multiclass_classifier": ("multiclass", "MULTICLASS"),
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
