"""Engine parts that need no Ray: metrics, lr schedules, EMA, config, checkpoint RNG round trip, the step
all-reduce on one process."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from atomica_ray.tasks import metrics as M
from atomica_ray.train.checkpoint import rng_state, set_rng_state
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.dist import HostCopy, StepSummary, bad_step, reduce_step
from atomica_ray.train.ema import EMA
from atomica_ray.train.schedule import apply_hparams, build_optimizer, lr_at

scipy_stats = pytest.importorskip("scipy.stats")


# --- metrics ---------------------------------------------------------------------------------------------------

def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    y[:5] = y[5]  # ties
    assert M.rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)))
    assert M.pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y).statistic)
    assert M.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert np.allclose(M.rankdata(y), scipy_stats.rankdata(y))
    assert math.isnan(M.pearson(np.ones(4), np.arange(4.0)))


def test_auroc_is_the_pairwise_probability():
    rng = np.random.default_rng(1)
    score = np.round(rng.random(40), 1)  # many ties
    label = rng.random(40) < 0.4
    pos, neg = score[label], score[~label]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert M.auroc(score, label) == pytest.approx(pairs)
    assert math.isnan(M.auroc(score, np.zeros(40)))


def test_auprc_matches_sklearn_documented_example():
    # sklearn.metrics.precision_recall_curve docstring example
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    precision, recall = M.precision_recall_points(s, y)
    assert np.allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    assert np.allclose(recall, [1.0, 1.0, 0.5, 0.5, 0.0])
    assert M.auprc(s, y) == pytest.approx(0.5 * (2 / 3 + 0.5) / 2 + 0.5)
    assert M.auprc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == pytest.approx(1.0)


def test_classification_metrics():
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    label = np.array([0, 1, 2, 1])
    assert M.cross_entropy(prob, label) == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.4])))
    assert M.accuracy(prob.argmax(1), label) == 0.75
    per_class = [M.auprc(prob[:, c], label == c) for c in range(3)]
    assert M.macro_auprc(prob, label) == pytest.approx(np.mean(per_class))
    p, y = np.array([0.9, 0.2]), np.array([1.0, 0.0])
    assert M.bce(p, y) == pytest.approx(-np.mean([np.log(0.9), np.log(0.8)]))
    assert M.bce(np.array([1.0, 0.0]), np.array([1.0, 0.0])) < 1e-9  # clipped, finite


# --- schedules and optimizer -----------------------------------------------------------------------------------

def test_exp_decay_is_atomicas_lambda():
    cfg = TrainConfig(lr=1e-3, final_lr=1e-5)
    total = 100
    log_alpha = math.log(1e-5 / 1e-3) / total
    for step in (0, 1, 50, 99):
        assert lr_at(step, cfg, "exp_decay", total) == pytest.approx(1e-3 * math.exp(log_alpha * (step + 1)))
    assert lr_at(0, TrainConfig(lr=2e-4), "exp_decay", total) == pytest.approx(2e-4)  # final_lr None: constant


def test_cosine_restarts_matches_torch():
    cfg = TrainConfig(lr=1e-3, final_lr=1e-5, cycle_steps=7)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7, eta_min=1e-5)
    for step in range(20):
        assert lr_at(step, cfg, "cosine_restarts", 0) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_linear_warmup():
    cfg = TrainConfig(lr=1e-3, lr_warmup_steps=4)
    assert [lr_at(s, cfg, "constant", 0) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_config_lr_wins_over_loaded_optimizer_state():
    p = torch.nn.Parameter(torch.ones(2))
    donor = build_optimizer([p], TrainConfig(lr=1e-2, weight_decay=0.1), "adamw")
    p.grad = torch.ones(2)
    donor.step()
    cfg = TrainConfig(lr=3e-4, weight_decay=1e-3)
    opt = build_optimizer([p], cfg, "adamw")
    opt.load_state_dict(donor.state_dict())
    assert opt.param_groups[0]["lr"] == 1e-2
    apply_hparams(opt, cfg, cfg.lr)
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 1e-3
    assert isinstance(opt, torch.optim.AdamW)
    assert isinstance(build_optimizer([p], cfg, "adam"), torch.optim.Adam)


# --- EMA -------------------------------------------------------------------------------------------------------

def test_ema_averages_and_swaps():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.5 * 0 + 0.5 * 1
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # 0.5 * 0.5 + 0.5 * 2
    with ema.swapped_in(model):
        assert torch.allclose(model.weight, torch.full_like(model.weight, 1.25))
    assert torch.allclose(model.weight, torch.full_like(model.weight, 2.0))
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"]) and other.decay == 0.9


# --- config ----------------------------------------------------------------------------------------------------

def test_config_from_dict_coerces_and_names_bad_keys(tmp_path):
    cfg = TrainConfig.from_dict({"lr": "1e-4", "max_epoch": "3", "global_message_passing": "true",
                                 "final_lr": None, "nonfinite_steps": "[1, 2]"})
    assert cfg.lr == 1e-4 and cfg.max_epoch == 3 and cfg.global_message_passing is True
    assert cfg.nonfinite_steps == [1, 2]
    with pytest.raises(ValueError, match="unknown key.*'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="key 'max_epoch': expected int"):
        TrainConfig.from_dict({"max_epoch": 2.5})
    with pytest.raises(ValueError, match="key 'task'"):
        TrainConfig.from_dict({"task": "folding"})
    with pytest.raises(ValueError, match="num_classifier_classes"):
        TrainConfig.from_dict({"task": "multiclass_classifier"})
    path = tmp_path / "c.yaml"
    path.write_text("task: PDBBind\nlr: 0.01\nbogus: 1\n")
    with pytest.raises(ValueError, match=f"{path}.*bogus"):
        TrainConfig.from_yaml(path)
    cfg = TrainConfig().with_overrides(["lr=2e-3", "pretrain_config=null", "experiment=abc"])
    assert cfg.lr == 2e-3 and cfg.experiment == "abc"
    with pytest.raises(ValueError, match="expected key=value"):
        TrainConfig().with_overrides(["lr"])


# --- checkpoint pieces -----------------------------------------------------------------------------------------

def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_reduce_step_single_process_keeps_grads_and_flags():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2))  # unused this step: no grad
    a.grad = torch.tensor([1.0, 2.0, 3.0])
    flags = reduce_step([a, b], oom=False, nonfinite=False, loss_sum=1.5, loss_count=2, device=torch.device("cpu"))
    assert torch.equal(a.grad, torch.tensor([1.0, 2.0, 3.0])) and torch.equal(b.grad, torch.zeros(2))
    s = StepSummary.read(flags)
    assert (s.oom, s.nonfinite, s.loss_sum, s.loss_count, s.grads_finite) == (0, 0, 1.5, 2, True)
    assert bad_step(flags, check_grads=True).item() == 0.0
    a.grad = torch.tensor([float("inf"), 0.0, 0.0])
    flags = reduce_step([a], False, False, 0.0, 0, torch.device("cpu"))
    assert not StepSummary.read(flags).grads_finite
    assert bad_step(flags, check_grads=True).item() == 1.0 and bad_step(flags, check_grads=False).item() == 0.0
    a.grad = torch.ones(3)
    assert bad_step(reduce_step([a], True, False, 0.0, 0, torch.device("cpu")), check_grads=True).item() == 1.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_host_copy_reads_the_values_at_the_time_it_was_made(device):
    """The engine reads a step's flags one step later: what it reads must be that step's values, not what the
    device tensor holds by then."""
    values = torch.tensor([0.0, 1.0, 2.5, 3.0, 0.0], device=device)
    copy = HostCopy(values)
    values.add_(10.0)
    if device == "cuda":
        torch.cuda._sleep(10_000_000)  # queued work after the copy: read() must not need it
    assert copy.read() == [0.0, 1.0, 2.5, 3.0, 0.0]
    assert StepSummary.read(copy.read()) == StepSummary(0, 1, 2.5, 3.0, False)


def test_a_bad_step_is_skipped_on_the_device_by_the_fused_optimizer():
    """The loop queues the optimizer step without reading the flags: the fused AdamW leaves the weights, moments
    and step count alone where `found_inf` is 1, and updates them where it is 0."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = build_optimizer([p], TrainConfig(lr=0.1), "adamw")
    for skip, moves in ((1.0, False), (0.0, True)):
        before = p.detach().clone()
        p.grad = torch.full((4,), float("nan") if skip else 0.5)
        opt.found_inf = torch.tensor(skip)
        opt.step()
        del opt.found_inf
        assert torch.isfinite(p).all() and (not torch.equal(p.detach(), before)) == moves
    assert opt.state[p]["step"].item() == 1  # the skipped step did not count


# --- logging ---------------------------------------------------------------------------------------------------

def test_run_logger_history_tensorboard_and_stable_wandb_id(tmp_path, monkeypatch):
    import json

    from atomica_ray.train.logging import RunLogger, wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert wandb_mode(TrainConfig()) is None
    assert wandb_mode(TrainConfig(use_wandb=True)) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(TrainConfig(use_wandb=True)) == "online"
    assert wandb_mode(TrainConfig(wandb_mode="offline")) == "offline"
    monkeypatch.delenv("WANDB_API_KEY")

    cfg = TrainConfig(use_wandb=True, experiment="exp-a")
    first = RunLogger(cfg, tmp_path, "run-a", enabled=True, history=[], wandb_id=None)
    first.log_step(1, {"loss": 0.5, "lr": 1e-3})
    first.log_report({"epoch": 0, "global_step": 1, "val_bce": float("nan"), "train_loss": 0.5})
    first.close()
    run_id = (tmp_path / "wandb_run_id").read_text()
    rows = [json.loads(x) for x in (tmp_path / "metrics_history.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 0, "global_step": 1, "val_bce": None, "train_loss": 0.5}]
    assert list((tmp_path / "tensorboard").iterdir())
    # a restart: same wandb run id, history rewritten from the checkpoint's copy (here: nothing kept)
    second = RunLogger(cfg, tmp_path, "run-a", enabled=True, history=[], wandb_id=None)
    assert second.wandb_id == run_id
    second.close()
    assert (tmp_path / "metrics_history.jsonl").read_text() == ""
    off_rank = RunLogger(cfg, tmp_path / "other", "run-a", enabled=False, history=[], wandb_id=None)
    off_rank.log_report({"epoch": 0, "global_step": 1})
    assert not (tmp_path / "other").exists()
