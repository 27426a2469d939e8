"""ATOMICA's classifier options as config keys, each checked for changing what it should: focal loss (gamma,
alpha), weighted loss (class weights / pos_weight from the training labels), selection by AUPRC or F1 with a
`selection_metric` override, parameters marked `_no_weight_decay`; the two new model classes in ATOMICA's
checkpoint contract; the new metrics against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atomica_ray.models.losses import class_weights, focal_multiclass, focal_sigmoid, pos_weights
from atomica_ray.tasks import get_task, task_for
from atomica_ray.tasks import metrics as M
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.schedule import apply_hparams, build_optimizer

ENCODER = dict(atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4, n_layers=1,
               fragmentation_method="PS_300")


def test_focal_losses_follow_their_definition():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 1, 0])
    assert focal_multiclass(logits, target, 0.0) == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    p_t = torch.softmax(logits, 1)[torch.arange(6), target]
    alpha = [0.1, 0.2, 0.3, 0.4]
    expect = (-torch.tensor(alpha)[target] * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert focal_multiclass(logits, target, 2.0, alpha) == pytest.approx(expect.item(), rel=1e-5)
    z, y = torch.randn(5, 3, generator=g), (torch.rand(5, 3, generator=g) > 0.5).float()
    assert focal_sigmoid(z, y, 0.0) == pytest.approx(F.binary_cross_entropy_with_logits(z, y).item(), rel=1e-6)
    p = torch.sigmoid(z)
    p_t = p * y + (1 - p) * (1 - y)
    expect = ((0.25 * y + (1 - y)) * (1 - p_t) ** 3 * -torch.log(p_t)).mean()
    assert focal_sigmoid(z, y, 3.0, 0.25) == pytest.approx(expect.item(), rel=1e-5)


def test_weights_from_training_labels():
    assert class_weights(np.array([0, 0, 1]), 3).tolist() == pytest.approx([1.0, 2.0, 0.0])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert pos_weights(labels).tolist() == pytest.approx([1 / 3, 3.0, 1.0])  # no positive: 1


def batch_of(n_items: int, seed: int = 0):
    from atomica_ray.data.collate import collate
    from list_label_data import demo_records

    return collate(demo_records(n_items, seed), "multilabel"), collate(demo_records(n_items, seed), "residue")


def inputs(batch):
    from atomica_ray.tasks.spec import structure_inputs

    return structure_inputs(batch)


def test_multilabel_loss_options_change_the_loss():
    from atomica_ray.models import create_model

    ml, _ = batch_of(4)
    cfg = TrainConfig.from_dict(dict(task="multilabel_classifier", num_classifier_classes=3))
    torch.manual_seed(0)
    model = create_model("multilabel_classifier", **ENCODER, **get_task(cfg.task).model_kwargs(cfg)).eval()
    bce, prob = model(**inputs(ml), label=ml["label"])
    logits = torch.logit(prob.double()).float()
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, ml["label"]).item(), rel=1e-4)
    model.set_class_weights(torch.tensor([3.0, 1.0, 0.5]))  # weighted_loss: pos_weight
    weighted, _ = model(**inputs(ml), label=ml["label"])
    expect = F.binary_cross_entropy_with_logits(logits, ml["label"], pos_weight=torch.tensor([3.0, 1.0, 0.5]))
    assert weighted.item() == pytest.approx(expect.item(), rel=1e-4) and weighted.item() != pytest.approx(bce.item())
    focal_cfg = cfg.replace(use_focal_loss=True, focal_gamma=2.0)
    kwargs = get_task(cfg.task).model_kwargs(focal_cfg)
    assert kwargs["loss_type"] == "focal" and kwargs["focal_gamma"] == 2.0
    torch.manual_seed(0)
    focal = create_model("multilabel_classifier", **ENCODER, **kwargs).eval()
    loss, _ = focal(**inputs(ml), label=ml["label"])
    assert loss.item() == pytest.approx(focal_sigmoid(logits, ml["label"], 2.0).item(), rel=1e-4)
    assert loss.item() < bce.item()  # the modulating factor only lowers each term


def test_weighted_loss_prepare_reads_the_training_set(tmp_path):
    from atomica_ray.data.loader import open_dataset
    from atomica_ray.data.parquet import write_dataset
    from atomica_ray.models import create_model
    from list_label_data import demo_records

    records = demo_records(6, seed=4)
    write_dataset((("demo", r) for r in records), str(tmp_path / "ds"))
    cfg = TrainConfig.from_dict(dict(task="multilabel_classifier", num_classifier_classes=3, weighted_loss=True))
    task = get_task(cfg.task)
    model = create_model(cfg.task, **ENCODER, **task.model_kwargs(cfg))
    task.prepare(model, cfg, open_dataset(str(tmp_path / "ds")))
    expect = pos_weights(np.stack([r["label_vector"] for r in records]))
    assert torch.equal(model.pos_weight, expect)
    plain = create_model(cfg.task, **ENCODER, **task.model_kwargs(cfg))
    task.prepare(plain, cfg.replace(weighted_loss=False), open_dataset(str(tmp_path / "ds")))
    assert plain.pos_weight is None
    # multiclass: class weights from the label column
    mc = TrainConfig.from_dict(dict(task="multiclass_classifier", num_classifier_classes=2, weighted_loss=True))
    model = create_model(mc.task, **ENCODER, **get_task(mc.task).model_kwargs(mc))
    get_task(mc.task).prepare(model, mc, open_dataset(str(tmp_path / "ds")))
    labels = np.array([r["label"] for r in records]).astype(int)
    assert torch.equal(model.class_weights, class_weights(labels, 2))


def test_new_models_keep_atomicas_checkpoint_contract():
    """config.json holds ATOMICA's constructor keys (so `cls(**config)` rebuilds the model) and the state dict
    ATOMICA's names; the residue head sees one logit per non-global block."""
    from atomica_ray.data.vocab import GLB
    from atomica_ray.models import create_model
    from atomica_ray.models.registry import build_model

    ml, res = batch_of(3)
    residue = create_model("residue_binary_classifier", **ENCODER, num_pred_layers=2, pred_dropout=0.0,
                           pred_hidden_size=16, nonlinearity="relu")
    binary = create_model("binary_classifier", **ENCODER, num_pred_layers=2, pred_dropout=0.0, pred_hidden_size=16,
                          nonlinearity="relu")
    assert set(residue.state_dict()) == set(binary.state_dict())
    config = residue.get_config()
    assert config["model_type"] == "ResidueClassifierModel"
    assert {"num_pred_layers", "nonlinearity", "pred_dropout", "pred_hidden_size"} <= set(config)
    loss, prob = residue(**inputs(res), label=res["label"])
    assert prob.shape == (int((res["B"] != GLB).sum()),) and torch.isfinite(loss)
    multilabel = create_model("multilabel_classifier", **ENCODER, num_classes=3)
    config = multilabel.get_config()
    assert {"num_classes", "loss_type", "focal_alpha", "focal_gamma"} <= set(config)
    rebuilt = build_model(config.pop("model_type"), config)
    rebuilt.load_state_dict(multilabel.state_dict(), strict=True)
    assert sorted(k.split(".")[0] for k in multilabel.state_dict() if "classifier" in k)[0] == "classifier_ffn"
    with pytest.raises(ValueError, match="pocket_embedding_size"):
        build_model("MultiLabelClassifierModel", {**config, "pocket_embedding_size": 16})


def test_selection_follows_atomica_and_the_override():
    def sel(**values):
        cfg = TrainConfig.from_dict({"num_classifier_classes": 3, **values})
        task = task_for(cfg)
        return task.selection_metric, task.mode

    assert sel(task="binary_classifier") == ("val_auprc", "max")
    assert sel(task="residue_binary_classifier") == ("val_auprc", "max")
    assert sel(task="multiclass_classifier") == ("val_delta_auprc", "max")
    assert sel(task="multilabel_classifier", multiclass_metric="f1_macro") == ("val_f1_macro", "max")
    assert sel(task="binary_classifier", selection_metric="val_bce") == ("val_bce", "min")
    assert sel(task="PDBBind") == ("val_rmse", "min")
    with pytest.raises(ValueError, match="key 'selection_metric'.*not reported by task binary_classifier"):
        sel(task="binary_classifier", selection_metric="val_rmse")


@pytest.mark.parametrize("values, key", [
    (dict(task="binary_classifier", use_focal_loss=True), "use_focal_loss"),
    (dict(task="residue_binary_classifier", weighted_loss=True), "weighted_loss"),
    (dict(task="multilabel_classifier"), "num_classifier_classes"),
    (dict(task="multiclass_classifier", num_classifier_classes=3, multiclass_metric="auroc"), "multiclass_metric"),
    (dict(task="multiclass_classifier", num_classifier_classes=3, focal_alpha=[1, 2]), "focal_alpha"),
    (dict(task="binary_classifier", block_sampling_p_keep=1.5), "block_sampling_p_keep"),
    (dict(task="PDBBind", random_block_sampling=True), "random_block_sampling"),
    (dict(task="residue_binary_classifier", balanced_sampler=True), "balanced_sampler"),
])
def test_bad_options_are_refused_naming_the_key(values, key):
    with pytest.raises(ValueError, match=f"key '{key}'"):
        TrainConfig.from_dict(values)


def test_parameters_marked_no_weight_decay_are_not_decayed():
    layer = torch.nn.Linear(3, 3)
    layer.bias._no_weight_decay = True
    cfg = TrainConfig.from_dict(dict(task="binary_classifier", lr=0.1, weight_decay=0.5))
    opt = build_optimizer(layer.parameters(), cfg, "adamw")
    apply_hparams(opt, cfg, 0.1)  # as every step does
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay moves a parameter
    opt.step()
    assert torch.allclose(layer.weight, w0 * (1 - 0.1 * 0.5)) and torch.equal(layer.bias, b0)
    plain = torch.nn.Linear(3, 3)  # nothing marked: one group, as older checkpoints' optimizer state has
    assert len(build_optimizer(plain.parameters(), cfg, "adamw").param_groups) == 1


def test_new_metrics():
    prob = np.array([0.9, 0.2, 0.7, 0.4, 0.6, 0.1])
    label = np.array([1, 0, 1, 1, 0, 0])
    group = np.array([0, 0, 0, 1, 1, 1])
    value, n = M.per_group(M.auroc, prob, label, group)
    assert n == 2 and value == pytest.approx((1.0 + 0.5) / 2)
    assert M.per_group(M.auroc, prob, label, np.array([0, 0, 0, 0, 0, 1]))[1] == 1  # one-class group skipped
    # macro F1 over the classes in labels or predictions (sklearn's definition), by hand
    pred, y = np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 0])
    f1 = [2 * 1 / (1 + 2), 2 * 1 / (2 + 1), 2 * 1 / (2 + 2)]
    assert M.f1_macro_multiclass(pred, y) == pytest.approx(np.mean(f1))
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3], [0.1, 0.6]])
    Y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    assert M.macro_auprc_multilabel(P, Y) == pytest.approx(np.mean([M.auprc(P[:, 0], Y[:, 0]),
                                                                     M.auprc(P[:, 1], Y[:, 1])]))
    assert M.micro_auprc_multilabel(P, Y) == pytest.approx(M.auprc(P.reshape(-1), Y.reshape(-1)))
    assert M.f1_macro_multilabel(P, Y) == pytest.approx(np.mean([1.0, 2 / 3]))
    assert M.mode_of("val_bce") == "min" and M.mode_of("val_auprc_per_structure") == "max"
    assert math.isnan(M.macro_auprc_multilabel(P, np.zeros_like(Y)))
