"""ATOMICA-compatible models: the two-level E(3)-equivariant encoder, every ATOMICA model class, and checkpoint
import / export (docs/DESIGN.md, "Models -> engine")."""

from .affinity import AffinityPredictor
from .backbone import ATOMICA_BEHAVIOUR, FIXED_BEHAVIOUR, AtomicaBackbone, Encoding
from .checkpoint import atomica_state_dict, freeze_all_but_head, load_atomica, save_atomica
from .classifier import ClassifierModel, MultiClassClassifierModel, RegressionPredictor
from .masking import MaskedNodeModel
from .prediction import PredictionModel, PredictionReturnValue
from .pretrain import DenoisePretrainModel, DenoisePretrainModelWithBlockEmbedding, ReturnValue
from .prot_interface import ProteinInterfaceModel, contrastive_loss
from .registry import MODEL_CLASSES, TASK_MODELS, create_model

__all__ = [
    "ATOMICA_BEHAVIOUR", "FIXED_BEHAVIOUR", "MODEL_CLASSES", "TASK_MODELS",
    "AffinityPredictor", "AtomicaBackbone", "ClassifierModel", "DenoisePretrainModel",
    "DenoisePretrainModelWithBlockEmbedding", "Encoding", "MaskedNodeModel", "MultiClassClassifierModel",
    "PredictionModel", "PredictionReturnValue", "ProteinInterfaceModel", "RegressionPredictor", "ReturnValue",
    "atomica_state_dict", "contrastive_loss", "create_model", "freeze_all_but_head", "load_atomica", "save_atomica",
]
