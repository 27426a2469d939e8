"""Checkpoint import / export: ATOMICA's config.json + state dict, pretrained -> downstream transfer, partial
fine-tuning, create_model, and the errors bad inputs get."""

import json
from pathlib import Path

import pytest
import torch

from atomica_ray.models import (ATOMICA_BEHAVIOUR, FIXED_BEHAVIOUR, MODEL_CLASSES, AffinityPredictor,
                                ClassifierModel, DenoisePretrainModel, MaskedNodeModel, MultiClassClassifierModel,
                                PredictionModel, ProteinInterfaceModel, RegressionPredictor, create_model,
                                load_atomica, save_atomica)

FIXTURE = Path(__file__).parent / "fixtures" / "atomica_reference.pt"
TINY = dict(atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4, n_layers=2,
            fragmentation_method=None)
HEAD = dict(num_pred_layers=2, nonlinearity="gelu", pred_dropout=0.1, pred_hidden_size=12)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


def first_item(batch: dict) -> dict:
    """The first item of a collated ATOMICA batch."""
    nb = int(batch["lengths"][0])
    na = int(batch["block_lengths"][:nb].sum())
    out = {k: batch[k][:na] for k in ("X", "A")}
    out.update({k: batch[k][:nb] for k in ("B", "block_lengths", "segment_ids")})
    out["lengths"] = batch["lengths"][:1]
    return out


def structure(batch: dict) -> dict:
    return dict(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                lengths=batch["lengths"], segment_ids=batch["segment_ids"])


# --- export -------------------------------------------------------------------------------------------------------
def test_atomica_checkpoint_round_trips_in_atomica_format(reference, tmp_path):
    ref = reference["ClassifierModel"]
    model = load_atomica(ref["config"], ref["state_dict"])
    config_path, weights_path = save_atomica(model, tmp_path, epoch=3, step=120)
    assert weights_path.name == "epoch3_step120.pt" and config_path.name == "config.json"
    # exactly the config ATOMICA writes (its loader calls cls(**config)) and ATOMICA's key set
    assert json.loads(config_path.read_text()) == ref["config"]
    saved = torch.load(weights_path, weights_only=True)
    assert sorted(saved) == sorted(ref["state_dict"])
    assert all(torch.equal(saved[k], ref["state_dict"][k]) for k in saved)
    again = load_atomica(config_path, weights_path)
    assert type(again) is ClassifierModel
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_fixed_models_record_their_flags_in_the_sidecar_and_reload_them(tmp_path):
    torch.manual_seed(0)
    model = create_model("multiclass_classifier", **TINY, num_classes=3)
    assert (model.unk_is_global, model.attention_mask, model.direction_eps) == tuple(FIXED_BEHAVIOUR.values())
    config_path, weights_path = save_atomica(model, tmp_path)
    config = json.loads(config_path.read_text())
    assert not set(FIXED_BEHAVIOUR) & set(config)  # config.json stays ATOMICA's
    assert config["model_type"] == "MultiClassClassifierModel" and config["num_classes"] == 3
    sidecar = json.loads((tmp_path / "atomica_ray.json").read_text())
    assert sidecar["behaviour"] == FIXED_BEHAVIOUR and "attention_mask=True" in sidecar["warning"]
    again = load_atomica(config_path, weights_path)
    assert (again.unk_is_global, again.attention_mask, again.direction_eps) == tuple(FIXED_BEHAVIOUR.values())
    # a config without the flags and without our sidecar is ATOMICA's, whatever the defaults of new models
    atomica = load_atomica(config, weights_path)
    assert (atomica.unk_is_global, atomica.attention_mask, atomica.direction_eps) == tuple(
        ATOMICA_BEHAVIOUR.values())
    # configs written by atomica-ray before the sidecar carry the flags themselves
    older = load_atomica({**config, **FIXED_BEHAVIOUR}, weights_path)
    assert (older.unk_is_global, older.attention_mask, older.direction_eps) == tuple(FIXED_BEHAVIOUR.values())


def test_save_keeps_existing_files(tmp_path):
    torch.manual_seed(0)
    model = create_model("regression", **TINY)
    save_atomica(model, tmp_path)
    before = (tmp_path / "model.pt").read_bytes()
    other = create_model("regression", **dict(TINY, edge_size=4))
    with pytest.raises(FileExistsError):
        save_atomica(other, tmp_path)
    assert (tmp_path / "model.pt").read_bytes() == before
    save_atomica(other, tmp_path, overwrite=True)
    assert load_atomica(tmp_path / "config.json", tmp_path / "model.pt").edge_size == 4


def test_prot_interface_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("prot_interface", **TINY)
    assert isinstance(model, ProteinInterfaceModel)
    assert not any(p.requires_grad for p in model.cmplx_model.parameters())
    config_path, weights_path = save_atomica(model, tmp_path)
    config = json.loads(config_path.read_text())
    assert config["model_type"] == "ProteinInterfaceModel" and config["prot_model"]["model_type"] == "PredictionModel"
    again = load_atomica(config_path, weights_path)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    # the protein encoder alone, as ATOMICA's get_embeddings extracts it
    encoder = load_atomica(config_path, weights_path, model_type="PredictionModel")
    assert all(torch.equal(encoder.state_dict()[k], model.prot_model.state_dict()[k])
               for k in encoder.state_dict())


# --- transfer -----------------------------------------------------------------------------------------------------
def test_pretrained_to_classifier_transfer_and_partial_finetune(reference):
    ref = reference["DenoisePretrainModel"]
    pretrained = ref["state_dict"]
    model = load_atomica(ref["config"], pretrained, model_type="ClassifierModel", partial_finetune=True, **HEAD)
    assert type(model) is ClassifierModel and model.nonlinearity == "gelu" and model.num_pred_layers == 2
    state = model.state_dict()
    shared = [k for k in state if k in pretrained]
    assert all(torch.equal(state[k], pretrained[k]) for k in shared)
    fresh = {k.split(".")[0] for k in state if k not in pretrained}
    assert fresh == {"classifier_ffn"}
    assert (model.unk_is_global, model.attention_mask) == (True, False)  # inherited from ATOMICA's config

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("classifier_ffn.") for n in trainable)
    batch = first_item(ref["batch"])
    loss, prob = model(**structure(batch), label=torch.ones(1))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name


def test_full_finetune_trains_every_parameter(reference):
    ref = reference["DenoisePretrainModel"]
    model = load_atomica(ref["config"], ref["state_dict"], model_type="RegressionPredictor",
                         attention_mask=True, unk_is_global=False)
    assert model.attention_mask and not model.unk_is_global
    batch = first_item(ref["batch"])
    loss, _ = model(**structure(batch), label=torch.zeros(1))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("target,kwargs,head", [
    ("PredictionModel", {}, set()),
    ("AffinityPredictor", dict(nonlinearity="relu"), {"energy_ffn"}),
    ("MultiClassClassifierModel", dict(num_classes=4), {"classifier_ffn"}),
    ("MaskedNodeModel", dict(num_masked_block_classes=436), set()),  # ATOMICA keeps the pretrained masked_ffn
    ("ProteinInterfaceModel", {}, {"prot_ffn", "cmplx_ffn"}),
])
def test_transfer_into_every_downstream_class(reference, target, kwargs, head):
    ref = reference["DenoisePretrainModel"]
    model = load_atomica(ref["config"], ref["state_dict"], model_type=target, partial_finetune=True, **kwargs)
    assert type(model) is MODEL_CLASSES[target]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    expected = head | ({"masked_ffn"} if target == "MaskedNodeModel" else set())
    assert trainable == expected
    if target == "AffinityPredictor":
        assert not any(p.requires_grad for p in model.attention_pooling.parameters())
    if target == "MaskedNodeModel":
        assert torch.equal(model.masked_ffn[7].weight, ref["state_dict"]["masked_ffn.7.weight"])


def test_global_message_passing_switched_on_keeps_edge_embedding_trainable(reference):
    ref = reference["DenoisePretrainModel"]
    config = dict(ref["config"], global_message_passing=False)
    model = load_atomica(config, ref["state_dict"], model_type="ClassifierModel", partial_finetune=True,
                         global_message_passing=True, **HEAD)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier_ffn", "edge_embedding_top"}


def test_same_class_load_keeps_architecture_and_applies_run_settings(reference, caplog):
    ref = reference["ClassifierModel"]
    model = load_atomica(ref["config"], ref["state_dict"], k_neighbors=5, dropout=0.2, pred_hidden_size=99)
    assert model.k_neighbors == 5 and model.dropout == 0.2
    assert model.pred_hidden_size == 32  # the checkpoint's architecture wins, with a warning
    assert "pred_hidden_size" in caplog.text


# --- create_model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,cls,extra", [
    ("pretrain_torsion", DenoisePretrainModel, dict(translation_noise=1.0, rotation_noise=0.0)),
    ("pretrain_torsion_masking", DenoisePretrainModel, dict(num_masked_block_classes=146)),
    ("pretrain_gaussian", DenoisePretrainModel, dict(atom_noise=1.0, torsion_noise=0)),
    ("PDBBind", AffinityPredictor, dict(nonlinearity="elu")),
    ("regression", RegressionPredictor, {}),
    ("binary_classifier", ClassifierModel, HEAD),
    ("multiclass_classifier", MultiClassClassifierModel, dict(num_classes=3)),
    ("masking", MaskedNodeModel, dict(num_masked_block_classes=146)),
    ("prot_interface", ProteinInterfaceModel, {}),
])
def test_create_model_maps_atomica_tasks(task, cls, extra):
    model = create_model(task, **TINY, **extra)
    assert type(model) is cls
    config = model.get_config()
    assert config["model_type"] == cls.__name__
    if task == "pretrain_torsion":
        assert config["translation_noise"] is True and config["rotation_noise"] is False
    if task == "PDBBind":
        assert config["nonlinearity"] == "elu"  # ATOMICA writes null here (§5 item 5)
    if cls is not ProteinInterfaceModel:
        rebuilt = MODEL_CLASSES[cls.__name__](**{k: v for k, v in config.items() if k != "model_type"})
        assert sorted(rebuilt.state_dict()) == sorted(model.state_dict())


def test_vocabulary_sizes_follow_the_fragmentation_method():
    plain = create_model("regression", **TINY)
    ps300 = create_model("regression", **dict(TINY, fragmentation_method="PS_300"))
    assert plain.block_embedding.block_embedding.num_embeddings == 150
    assert ps300.block_embedding.block_embedding.num_embeddings == 440
    assert ps300.block_embedding.atom_embedding.num_embeddings == 121


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        create_model("docking", **TINY)


# --- bad inputs ------------------------------------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors(reference, tmp_path):
    ref = reference["ClassifierModel"]
    no_type = tmp_path / "bad_config.json"
    no_type.write_text(json.dumps({k: v for k, v in ref["config"].items() if k != "model_type"}))
    with pytest.raises(ValueError, match="bad_config.json.*model_type"):
        load_atomica(no_type, ref["state_dict"])

    weights = tmp_path / "weights.pt"
    torch.save({k: v for k, v in ref["state_dict"].items() if k != "classifier_ffn.2.weight"}, weights)
    with pytest.raises(ValueError, match="weights.pt.*classifier_ffn.2.weight"):
        load_atomica(ref["config"], weights)

    pickled = tmp_path / "module.ckpt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(ValueError, match="module.ckpt"):
        load_atomica(ref["config"], pickled)

    gelu_bug = dict(ref["config"], nonlinearity=None)  # how ATOMICA records GELU / ELU heads
    with pytest.raises(ValueError, match="nonlinearity"):
        load_atomica(gelu_bug, ref["state_dict"])
    assert load_atomica(gelu_bug, ref["state_dict"], nonlinearity="gelu").nonlinearity == "gelu"


def test_e3nn_buffers_missing_or_renamed_in_a_file_still_load(reference):
    ref = reference["PredictionModel"]
    state = dict(ref["state_dict"])
    w3j = "encoder.encoder.layers.1.tp._compiled_main_left_right._w3j_1_1_2"
    value = state.pop(w3j)
    state["encoder.encoder.layers.1.tp._compiled_main_left_right._w3j_legacy_name"] = value
    model = load_atomica(ref["config"], state)
    assert torch.allclose(model.state_dict()[w3j], value)
    state.pop("encoder.encoder.layers.1.fc.0.bias")  # a real parameter is still required
    with pytest.raises(ValueError, match="layers.1.fc.0.bias"):
        load_atomica(ref["config"], state)


def test_encode_contract_on_a_fresh_model():
    torch.manual_seed(0)
    model = PredictionModel(**TINY)
    gen = torch.Generator().manual_seed(0)
    batch = {"X": torch.randn(7, 3, generator=gen), "B": torch.tensor([3, 5, 3, 40]),
             "A": torch.tensor([2, 8, 8, 8, 2, 8, 9]), "block_lengths": torch.tensor([1, 3, 1, 2]),
             "lengths": torch.tensor([4]), "segment_ids": torch.tensor([0, 0, 1, 1])}
    out = model.encode(batch)
    assert out.unit_repr.shape == (7, 8) and out.block_repr.shape == (4, 8) and out["graph_repr"].shape == (1, 8)
    assert torch.allclose(out.graph_repr.norm(dim=-1), torch.ones(1))


def test_encode_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = PredictionModel(**dict(TINY, dropout=0.5)).train()
    gen = torch.Generator().manual_seed(0)
    batch = {"X": torch.randn(7, 3, generator=gen, dtype=torch.float64), "B": [3, 5, 3, 40],
             "A": torch.tensor([2, 8, 8, 8, 2, 8, 9], dtype=torch.int32), "block_lengths": [1, 3, 1, 2],
             "lengths": [4], "segment_ids": [0, 0, 1, 1]}
    first, second = model.encode(batch), model.encode(batch)
    assert model.training  # restored
    assert torch.equal(first.graph_repr, second.graph_repr)  # no dropout inside encode
    assert first.unit_repr.dtype == torch.float32
