"""Model classes by ATOMICA name, and ATOMICA's task -> model mapping (`models/__init__.py: create_model`)."""

from __future__ import annotations

from .affinity import AffinityPredictor
from .multilabel import MultiLabelClassifierModel
from .residue import ResidueClassifierModel
from .classifier import ClassifierModel, MultiClassClassifierModel, RegressionPredictor
from .masking import MaskedNodeModel
from .prediction import PredictionModel
from .pretrain import DenoisePretrainModel, DenoisePretrainModelWithBlockEmbedding
from .prot_interface import ProteinInterfaceModel

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (DenoisePretrainModel, DenoisePretrainModelWithBlockEmbedding, PredictionModel, AffinityPredictor,
                RegressionPredictor, ClassifierModel, MultiClassClassifierModel, MaskedNodeModel,
                ProteinInterfaceModel, ResidueClassifierModel, MultiLabelClassifierModel)
}

TASK_MODELS = {
    "pretrain_torsion": "DenoisePretrainModel",
    "pretrain_torsion_masking": "DenoisePretrainModel",
    "pretrain_gaussian": "DenoisePretrainModel",
    "PDBBind": "AffinityPredictor",
    "regression": "RegressionPredictor",
    "binary_classifier": "ClassifierModel",
    "RNAScore_binary": "ClassifierModel",
    "multiclass_classifier": "MultiClassClassifierModel",
    "masking": "MaskedNodeModel",
    "prot_interface": "ProteinInterfaceModel",
    "residue_binary_classifier": "ResidueClassifierModel",
    "multilabel_classifier": "MultiLabelClassifierModel",
}

_BLOCK_FEATURE_SIZES = ("block_embedding_size", "block_embedding0_size", "block_embedding1_size")
_BLOCK_FEATURE_ARGS = _BLOCK_FEATURE_SIZES + ("num_projector_layers", "projector_hidden_size", "projector_dropout")
_NOISE_FLAGS = ("atom_noise", "translation_noise", "rotation_noise", "torsion_noise")


def model_class_for_task(task: str, **kwargs) -> str:
    if "pretrain" in task.lower():
        with_features = any(kwargs.get(k) for k in _BLOCK_FEATURE_SIZES)
        return "DenoisePretrainModelWithBlockEmbedding" if with_features else "DenoisePretrainModel"
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; ATOMICA's tasks are {sorted(TASK_MODELS)}")
    return TASK_MODELS[task]


def build_model(model_type: str, kwargs: dict):
    """An instance of the ATOMICA class `model_type` from its constructor arguments (for ProteinInterfaceModel:
    those of the PredictionModel it wraps)."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[model_type]
    try:
        if cls is ProteinInterfaceModel:
            return ProteinInterfaceModel(PredictionModel(**kwargs))
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"{model_type}: bad constructor arguments ({err}); given {sorted(kwargs)}") from err


def create_model(task: str, **kwargs):
    """A fresh model for an ATOMICA task name, from ATOMICA's constructor arguments.

    New models use the fixed behaviour (`unk_is_global=False`, `attention_mask=True`) unless told otherwise.
    Noise levels may be given as numbers, as ATOMICA's command line does (non-zero = on)."""
    model_type = model_class_for_task(task, **kwargs)
    kwargs = dict(kwargs)
    if model_type.startswith("DenoisePretrainModel"):
        for flag in _NOISE_FLAGS:
            if flag in kwargs and not isinstance(kwargs[flag], bool):
                kwargs[flag] = kwargs[flag] != 0
        if model_type == "DenoisePretrainModel":
            for key in _BLOCK_FEATURE_ARGS:  # present but unused (None sizes), as ATOMICA's CLI passes them
                kwargs.pop(key, None)
    return build_model(model_type, kwargs)
