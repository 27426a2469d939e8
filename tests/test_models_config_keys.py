"""Checkpoints both ways through the one table of model-config keys (models/config_keys.py): config.json holds
ATOMICA's constructor keys only, so a loader that builds like ATOMICA's (`cls(**config)`) accepts it; our numerics
flags live in the sidecar; configs of current ATOMICA load when their new options are off and are refused, by
name, when one is on.

ATOMICA's constructor key sets are read from its own checkpoints' configs in tests/fixtures/atomica_reference.pt
(ATOMICA @2904342's get_config(), written by tests/fixtures/make_reference.py)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from atomica_ray.models import (ATOMICA_BEHAVIOUR, FIXED_BEHAVIOUR, MODEL_CLASSES, create_model, load_atomica,
                                save_atomica)
from atomica_ray.models.backbone import ENCODER_ARGS
from atomica_ray.models.config_keys import KEYS, atomica_keys, keys_of

from test_models_checkpoint import FIXTURE, TINY, first_item, structure

TASKS = {"PredictionModel": None, "ClassifierModel": "binary_classifier", "RegressionPredictor": "regression",
         "MultiClassClassifierModel": "multiclass_classifier", "AffinityPredictor": "PDBBind",
         "MaskedNodeModel": "masking", "DenoisePretrainModel": "pretrain_torsion",
         "ResidueClassifierModel": "residue_binary_classifier", "MultiLabelClassifierModel": "multilabel_classifier"}
HEADS = {"MultiClassClassifierModel": dict(num_classes=3), "MultiLabelClassifierModel": dict(num_classes=3),
         "MaskedNodeModel": dict(num_masked_block_classes=146),
         "DenoisePretrainModel": dict(num_masked_block_classes=146)}


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def atomica_signatures(reference):
    """ATOMICA's constructor signature per class, as its own get_config() shows it (what `cls(**config)` takes)."""
    return {name: inspect.Signature([inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY)
                                     for k in ref["config"] if k != "model_type"])
            for name, ref in reference.items() if isinstance(ref, dict) and "config" in ref}


def atomica_like_load(config: dict, signatures: dict) -> None:
    """ATOMICA's `load_from_config_and_weights`: pop model_type, then cls(**config) (TypeError on any other key)."""
    config = dict(config)
    model_type = config.pop("model_type")
    if model_type == "ProteinInterfaceModel":
        atomica_like_load(config.pop("prot_model"), signatures)
        assert not config, f"ProteinInterfaceModel config keys beyond prot_model: {sorted(config)}"
        return
    # current ATOMICA's classes of issue 17 (classifier_model.py): ResidueClassifierModel takes ClassifierModel's
    # arguments; MultiLabelClassifierModel MultiClassClassifierModel's and its loss_type, focal_*, pocket_* ones
    if model_type == "ResidueClassifierModel":
        sig = signatures["ClassifierModel"]
    elif model_type == "MultiLabelClassifierModel":
        extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for k in ("loss_type", "focal_alpha", "focal_gamma", "pocket_embedding_size")]
        sig = inspect.Signature(list(signatures["MultiClassClassifierModel"].parameters.values()) + extra)
    else:
        sig = signatures[model_type]
    sig.bind(**config)


def new_model(model_type: str):
    torch.manual_seed(0)
    if model_type == "PredictionModel":
        return MODEL_CLASSES[model_type](**TINY)
    return create_model(TASKS[model_type], **TINY, **HEADS.get(model_type, {}))


@pytest.mark.parametrize("model_type", list(TASKS) + ["ProteinInterfaceModel"])
def test_default_checkpoint_config_is_atomica_loadable(model_type, atomica_signatures, tmp_path):
    model = create_model("prot_interface", **TINY) if model_type == "ProteinInterfaceModel" else new_model(model_type)
    config_path, weights_path = save_atomica(model, tmp_path)
    config = json.loads(config_path.read_text())
    atomica_like_load(config, atomica_signatures)  # only ATOMICA's keys: its loader builds it
    sidecar = json.loads((tmp_path / "atomica_ray.json").read_text())
    assert sidecar["behaviour"] == FIXED_BEHAVIOUR and sidecar["atomica_numerics"] is False
    inner = model.prot_model if model_type == "ProteinInterfaceModel" else model
    implemented = {name for name, k in keys_of(type(inner).__name__).items() if k.implemented}
    assert set(inner.get_config()) - {"model_type"} <= implemented  # every key we write is in the table
    if model_type in ("ClassifierModel", "ProteinInterfaceModel"):  # (every class: test_models_checkpoint.py)
        again = load_atomica(config_path, weights_path)
        encoder = again.prot_model if model_type == "ProteinInterfaceModel" else again
        assert type(again) is type(model) and encoder.attention_mask is True  # flags back from the sidecar
        assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_table_agrees_with_atomica(atomica_signatures):
    for model_type, sig in atomica_signatures.items():
        assert set(atomica_keys(model_type)) == set(sig.parameters), model_type
    assert set(ENCODER_ARGS) == {k.name for k in KEYS if k.classes == "*"}  # encoder arguments declared once


def test_current_atomica_configs_load_when_new_options_are_off(tmp_path):
    off = {
        "MaskedNodeModel": dict(top_max_edge_length=5, top_long_range_edge_length=None, na_loss_weight=1.0,
                                attn_pad_mask=False, masked_affine=False, bottom_repr_scale=False, top_pair_geom=False),
        "DenoisePretrainModel": dict(top_max_edge_length=5, top_long_range_edge_length=None),
        "MultiClassClassifierModel": dict(loss_type="cross_entropy", focal_alpha=None, focal_gamma=2.0,
                                          pocket_embedding_size=None),
    }
    for model_type, extra in off.items():
        model = create_model(TASKS[model_type], **TINY, **HEADS[model_type], **ATOMICA_BEHAVIOUR)
        save_atomica(model, tmp_path / model_type)
        config = json.loads((tmp_path / model_type / "config.json").read_text())
        loaded = load_atomica({**config, **extra}, tmp_path / model_type / "model.pt")  # strict weights
        assert loaded.get_config() == config
    # focal settings without focal loss are inert
    loaded = load_atomica({**config, "focal_gamma": 3.0, "focal_alpha": [1, 2]}, tmp_path / model_type / "model.pt")
    assert loaded.num_classes == 3


@pytest.mark.parametrize("model_type,extra,named", [
    ("MaskedNodeModel", dict(masked_affine=True), "masked_affine=True"),
    ("MaskedNodeModel", dict(top_max_edge_length=8), "top_max_edge_length=8"),
    ("MaskedNodeModel", dict(na_loss_weight=2.0, attn_pad_mask=True), "attn_pad_mask=True"),
    ("DenoisePretrainModel", dict(top_long_range_edge_length=15.0), "top_long_range_edge_length=15.0"),
    ("MultiClassClassifierModel", dict(pocket_embedding_size=64), "pocket_embedding_size=64"),
    ("ClassifierModel", dict(some_future_option=True), "some_future_option=True"),
])
def test_current_atomica_options_switched_on_are_refused_by_name(reference, model_type, extra, named):
    ref = reference[model_type]
    with pytest.raises(ValueError, match=f"config dict: {model_type} with .*{named}.*does not implement"):
        load_atomica({**ref["config"], **extra}, ref["state_dict"])


def test_unknown_keys_that_are_off_are_dropped_and_new_model_types_named(reference):
    ref = reference["ClassifierModel"]
    load_atomica({**ref["config"], "some_future_option": None, "another": False}, ref["state_dict"])
    with pytest.raises(ValueError, match="model_type 'FutureClassifierModel' is not one of"):
        load_atomica({**ref["config"], "model_type": "FutureClassifierModel"}, ref["state_dict"])


def test_current_atomica_focal_configs_load_as_focal(reference):
    """Focal loss is implemented (issue 17): a current-ATOMICA multi-class config with it on loads, with it."""
    ref = reference["MultiClassClassifierModel"]
    model = load_atomica({**ref["config"], "loss_type": "focal", "focal_gamma": 3.0}, ref["state_dict"])
    assert model.loss_type == "focal" and model.focal_gamma == 3.0


def test_numerics_warning_sidecar_and_strict(reference, tmp_path):
    model = new_model("ClassifierModel")
    with pytest.raises(ValueError, match="atomica_strict.*attention_mask=True"):
        save_atomica(model, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()  # nothing written

    # ATOMICA's numerics: no warning, strict passes, and ATOMICA's loader runs the same model
    tiny = dict(TINY, fragmentation_method="PS_300")  # the reference batch's vocabulary
    atomica = create_model("binary_classifier", **tiny, **ATOMICA_BEHAVIOUR)
    config_path, weights_path = save_atomica(atomica, tmp_path / "atomica", strict=True)
    sidecar = json.loads((tmp_path / "atomica" / "atomica_ray.json").read_text())
    assert sidecar["warning"] is None and sidecar["atomica_numerics"] is True
    ref = reference["ClassifierModel"]
    again = load_atomica(config_path, weights_path)
    batch = first_item(ref["batch"])
    atomica.eval(), again.eval()
    torch.testing.assert_close(again(**structure(batch), label=torch.ones(1))[1],
                               atomica(**structure(batch), label=torch.ones(1))[1])

    # without its sidecar, an atomica-ray config.json is read as ATOMICA's (the warning's point)
    config_path, weights_path = save_atomica(model, tmp_path / "fixed")
    (tmp_path / "fixed" / "atomica_ray.json").unlink()
    assert load_atomica(config_path, weights_path).attention_mask is False
