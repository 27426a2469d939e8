"""Every model-config key we know, in one table that serves loading and saving ATOMICA checkpoints.

A row says, for the model classes that take the key:
  default   what ATOMICA's constructor uses when the key is absent
  off       the values that leave the option off: a config holding one builds the same model without the key
  owner     "atomica"  a key of ATOMICA's released constructors: written to config.json and read back
            "current"  a key that only newer ATOMICA writes (github mims-harvard/ATOMICA, src/atomica/): read,
                       never written
            "ours"     an atomica-ray option: written to the sidecar file (`atomica_ray.json`) beside config.json
  implemented  our constructor takes the key
  active_if    (key, value): the key matters only when that other key has that value (focal-loss settings)

Loading (`clean_config`): implemented keys pass; a key we do not implement is dropped when its value is off
(False, 0, None, or the ATOMICA default that means off) and refused, by name, when it switches an option on.
Saving (`split_config`): config.json gets the "atomica" keys of the model's class only, which ATOMICA's loader
(`cls(**config)`) accepts; the "ours" keys go to the sidecar. A class added later (ResidueClassifierModel,
MultiLabelClassifierModel) needs its constructor and, where its keys are new, rows here: nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backbone import ATOMICA_BEHAVIOUR

ALL = "*"  # every model class
PRETRAIN = ("DenoisePretrainModel", "DenoisePretrainModelWithBlockEmbedding")
BLOCK_FEATURES = ("AffinityPredictor", "DenoisePretrainModelWithBlockEmbedding")
BINARY_HEADS = ("ClassifierModel", "ResidueClassifierModel")
CLASS_HEADS = ("MultiClassClassifierModel", "MultiLabelClassifierModel")
TOP_EDGES = ("DenoisePretrainModel", "MaskedNodeModel")  # current ATOMICA writes these two keys for them


@dataclass(frozen=True)
class Key:
    name: str
    default: object
    off: tuple = ()
    owner: str = "atomica"  # "atomica" | "current" | "ours"
    implemented: bool = True
    classes: tuple[str, ...] | str = ALL
    active_if: tuple[str, object] | None = None
    meaning: str = ""  # plain words, for messages

    def applies_to(self, model_type: str) -> bool:
        return self.classes == ALL or model_type in self.classes


KEYS: tuple[Key, ...] = (
    # the encoder, shared by every class (ATOMICA's PredictionModel arguments, in its order)
    Key("atom_hidden_size", None),
    Key("block_hidden_size", None),
    Key("edge_size", 16),
    Key("n_layers", 3),
    Key("dropout", 0.0),
    Key("k_neighbors", 9),
    Key("global_message_passing", False),
    Key("bottom_global_message_passing", False),
    Key("fragmentation_method", None),
    # atomica-ray's numerics; the off value is ATOMICA's behaviour
    Key("unk_is_global", ATOMICA_BEHAVIOUR["unk_is_global"], off=(True,), owner="ours",
        meaning="UNK blocks are ordinary nodes, not global ones (ATOMICA treats them as global nodes)"),
    Key("attention_mask", ATOMICA_BEHAVIOUR["attention_mask"], off=(False,), owner="ours",
        meaning="padding is kept out of the atom-to-block attention and the pooling, so an item's outputs do not "
                "depend on the other items of its batch (ATOMICA attends to the padding)"),
    Key("direction_eps", ATOMICA_BEHAVIOUR["direction_eps"], off=(0.0, 0), owner="ours",
        meaning="edges shorter than this many Å carry no direction (ATOMICA turns rounding noise into a random "
                "direction)"),
    # pretraining (DenoisePretrainModel)
    Key("atom_noise", True, classes=PRETRAIN),
    Key("translation_noise", True, classes=PRETRAIN),
    Key("rotation_noise", True, classes=PRETRAIN),
    Key("torsion_noise", True, classes=PRETRAIN),
    Key("atom_weight", 1, classes=PRETRAIN),
    Key("translation_weight", 1, classes=PRETRAIN),
    Key("rotation_weight", 1, classes=PRETRAIN),
    Key("torsion_weight", 1, classes=PRETRAIN),
    Key("mask_weight", 1, classes=PRETRAIN),
    Key("modality_embedding", False, classes=PRETRAIN),
    Key("num_masked_block_classes", None, classes=PRETRAIN + ("MaskedNodeModel",)),
    # external per-block features
    Key("block_embedding_size", None, classes=BLOCK_FEATURES),
    Key("block_embedding0_size", None, classes=BLOCK_FEATURES),
    Key("block_embedding1_size", None, classes=BLOCK_FEATURES),
    Key("num_projector_layers", 3, classes=BLOCK_FEATURES),
    Key("projector_hidden_size", 256, classes=BLOCK_FEATURES),
    Key("projector_dropout", 0.0, classes=BLOCK_FEATURES),
    # heads
    Key("num_pred_layers", None, classes=BINARY_HEADS),
    Key("nonlinearity", None, classes=BINARY_HEADS + ("AffinityPredictor",)),
    Key("pred_dropout", None, classes=BINARY_HEADS),
    Key("pred_hidden_size", None, classes=BINARY_HEADS),
    Key("num_affinity_pred_layers", 3, classes=("AffinityPredictor",)),
    Key("affinity_pred_dropout", 0.0, classes=("AffinityPredictor",)),
    Key("affinity_pred_hidden_size", 32, classes=("AffinityPredictor",)),
    Key("num_classes", None, classes=CLASS_HEADS),
    # current ATOMICA only (src/atomica/models/*.py): read, never written
    Key("top_max_edge_length", 5, off=(5,), owner="current", implemented=False, classes=TOP_EDGES,
        meaning="span (Å) of the block-level edge embedding (5 in the released checkpoints)"),
    Key("top_long_range_edge_length", None, off=(None,), owner="current", implemented=False, classes=TOP_EDGES,
        meaning="long-range block-edge adapter"),
    Key("na_loss_weight", 1.0, off=(1.0, 1), owner="current", implemented=False, classes=("MaskedNodeModel",),
        meaning="weight of nucleotide positions in the masked-block loss"),
    Key("attn_pad_mask", False, off=(False,), owner="current", implemented=False, classes=("MaskedNodeModel",),
        meaning="padding kept out of atom_block_attn (masking model only)"),
    Key("masked_affine", False, off=(False,), owner="current", implemented=False, classes=("MaskedNodeModel",),
        meaning="affine map on the masked block representation"),
    Key("bottom_repr_scale", False, off=(False,), owner="current", implemented=False, classes=("MaskedNodeModel",),
        meaning="learned scale of the atoms entering atom_block_attn"),
    Key("top_pair_geom", False, off=(False,), owner="current", implemented=False, classes=("MaskedNodeModel",),
        meaning="atom-pair contact features on block edges"),
    Key("loss_type", "cross_entropy", off=("cross_entropy",), owner="current",
        classes=("MultiClassClassifierModel",), meaning="focal loss instead of cross-entropy"),
    Key("focal_alpha", None, off=(None,), owner="current", classes=("MultiClassClassifierModel",),
        active_if=("loss_type", "focal"), meaning="focal-loss class weights"),
    Key("focal_gamma", 2.0, off=(2.0, 2), owner="current", classes=("MultiClassClassifierModel",),
        active_if=("loss_type", "focal"), meaning="focal-loss focusing parameter"),
    # MultiLabelClassifierModel exists only in current ATOMICA: its constructor's keys are ATOMICA's
    Key("loss_type", "binary_cross_entropy", classes=("MultiLabelClassifierModel",),
        meaning="focal loss instead of binary cross-entropy"),
    Key("focal_alpha", None, classes=("MultiLabelClassifierModel",), meaning="focal-loss label weights"),
    Key("focal_gamma", 2.0, classes=("MultiLabelClassifierModel",), meaning="focal-loss focusing parameter"),
    Key("pocket_embedding_size", None, off=(None,), owner="current", implemented=False, classes=CLASS_HEADS,
        meaning="external pocket embeddings concatenated to the graph representation"),
)

GENERIC_OFF = (False, 0, None)  # a key outside the table is off with one of these (current ATOMICA's rule)
SIDECAR_NAME = "atomica_ray.json"


def keys_of(model_type: str) -> dict[str, Key]:
    return {k.name: k for k in KEYS if k.applies_to(model_type)}


def atomica_keys(model_type: str) -> list[str]:
    """The keys of ATOMICA's released constructor of `model_type` (what config.json may hold besides
    model_type)."""
    return [name for name, k in keys_of(model_type).items() if k.owner == "atomica"]


def ours_keys() -> list[str]:
    return [k.name for k in KEYS if k.owner == "ours"]


def same_value(a, b) -> bool:
    """Config values equal as JSON means them: booleans only equal booleans, numbers compare as numbers."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    return a == b


def is_off(key: Key | None, value, config: dict) -> bool:
    if key is None:
        return any(same_value(value, v) for v in GENERIC_OFF)
    if key.active_if is not None and not same_value(config.get(key.active_if[0]), key.active_if[1]):
        return True  # e.g. focal_gamma without loss_type 'focal'
    return any(same_value(value, v) for v in key.off)


def clean_config(config: dict, model_type: str, where: str) -> dict:
    """Constructor arguments of `model_type` from a config (without model_type): keys we implement pass, keys
    we do not are dropped when off and refused when on."""
    table = keys_of(model_type)
    out, refused = {}, []
    for name, value in config.items():
        key = table.get(name)
        if key is not None and key.implemented:
            out[name] = value
        elif not is_off(key, value, config):
            what = f" ({key.meaning})" if key is not None and key.meaning else ""
            refused.append(f"{name}={value!r}{what}")
    if refused:
        raise ValueError(f"{where}: {model_type} with {', '.join(refused)}: atomica-ray does not implement "
                         f"{'this option' if len(refused) == 1 else 'these options'}; a config with "
                         f"{'it' if len(refused) == 1 else 'them'} off loads")
    return out


def split_config(config: dict) -> tuple[dict, dict]:
    """(config.json content, our keys for the sidecar) of a model's get_config(), which holds `model_type`."""
    model_type = config["model_type"]
    allowed = set(atomica_keys(model_type))
    ours = set(ours_keys())
    atomica, sidecar = {}, {}
    for name, value in config.items():
        if name == "model_type" or name in allowed:
            atomica[name] = value
        elif name in ours:
            sidecar[name] = value
        else:
            raise ValueError(f"{model_type}.get_config() has {name!r}, which is neither a key of ATOMICA's "
                             f"{model_type} nor one of ours ({sorted(ours)}): add it to models/config_keys.py")
    return atomica, sidecar


def numerics_differences(behaviour: dict) -> list[str]:
    """Plain-words descriptions of the options in `behaviour` whose values ATOMICA's code does not have."""
    table = {k.name: k for k in KEYS if k.owner == "ours"}
    out = []
    for name, value in behaviour.items():
        key = table[name]
        if not is_off(key, value, behaviour):
            out.append(f"{name}={value!r}: {key.meaning}")
    return out


def numerics_warning(behaviour: dict) -> str | None:
    """The warning that goes with weights trained with numerics ATOMICA's code does not have (None if none)."""
    diffs = numerics_differences(behaviour)
    if not diffs:
        return None
    return ("These weights were trained with atomica-ray's fixes, which ATOMICA's own code does not have: "
            + "; ".join(diffs) + ". ATOMICA's loader accepts config.json, but its outputs from these weights will "
            "differ from atomica-ray's. To train with ATOMICA's numerics use --atomica-numerics; --atomica-strict "
            "refuses to write such checkpoints.")
