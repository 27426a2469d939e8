"""The engine's run mechanics on a real local Ray with 2 CPU workers: a worker killed mid-epoch (SIGKILL) and
restarted by FailureConfig ends with weights equal to an uninterrupted run's; a failed run relaunched under the
same name resumes the same way; non-finite steps are skipped on every rank, and fail the run after N in a row;
early stopping; fine-tuning from an ATOMICA checkpoint; starting from another run's checkpoint with this config's
learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atomica_ray.train.checkpoint import model_files, read_train_state
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.loop import WorkerRun

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from atomica_ray.data.demo import write_demo_splits

    return write_demo_splits(str(tmp_path_factory.mktemp("engine-data")), n_train=16, n_valid=6, seed=21)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return str(tmp_path_factory.mktemp("engine-runs"))


def config(data, **changes) -> TrainConfig:
    values = dict(task="binary_classifier", train_set=data["train"], valid_set=data["valid"], max_epoch=2,
                  num_workers=2, atom_hidden_size=8, block_hidden_size=8, edge_size=8, n_layers=1, k_neighbors=4,
                  max_n_vertex_per_gpu=70, fragmentation_method="PS_300", progress_bar=False, seed=3,
                  dropout=0.1, lr=2e-3, final_lr=2e-4, ema_decay=0.5, report_every_steps=2)
    values.update(changes)
    return TrainConfig.from_dict(values)


def fit(cfg: TrainConfig, name: str, storage: str):
    from atomica_ray.train.launch import build_trainer

    return build_trainer(cfg, run_name=name, storage_path=storage).fit()


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics_history.jsonl").read_text().splitlines()]


def final_weights(run_dir) -> tuple[dict, dict]:
    """(model weights as saved for ATOMICA, raw training weights) of the run's last checkpoint."""
    last = sorted(Path(run_dir).glob("checkpoint_epoch*"))[-1]
    _, weights = model_files(last)
    return torch.load(weights, weights_only=True), read_train_state(last)["raw_model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(ray_local, data, storage):
    """An uninterrupted run: dropout, EMA, exponential lr decay, checkpoints every 2 optimizer steps."""
    result = fit(config(data), "reference", storage)
    assert result.error is None
    return result


def steps_in_first_epoch(data) -> int:
    from atomica_ray.data import make_loader
    from atomica_ray.train.loop import data_spec
    from atomica_ray.tasks import get_task

    cfg = config(data)
    return len(make_loader(data_spec(cfg, get_task(cfg.task), cfg.train_set, train=True), seed=cfg.seed,
                           epoch=0, rank=0, world_size=2))


def test_killed_worker_resumes_to_identical_weights(reference, data, storage):
    n0 = steps_in_first_epoch(data)
    assert n0 >= 4, "the test needs a crash between two mid-epoch checkpoints"
    # rank 0 is SIGKILLed right after optimizer step 3 of epoch 0; the last checkpoint was at step 2
    result = fit(config(data, crash_at_step=3, max_failures=1), "killed", storage)
    assert result.error is None
    run_dir = Path(storage) / "killed"
    assert (run_dir / ".crashed_at_step_3").is_file()  # the worker really died
    for ours, theirs in zip(final_weights(run_dir), final_weights(reference.path)):
        assert_same(ours, theirs)
    rows, ref_rows = history(run_dir), history(reference.path)
    assert [r["global_step"] for r in rows] == [r["global_step"] for r in ref_rows]  # no report counted twice
    assert rows[-1]["val_bce"] == ref_rows[-1]["val_bce"]


def test_failed_run_relaunched_with_the_same_name_resumes(reference, data, storage):
    import ray.train

    cfg = config(data, crash_at_step=3, max_failures=0)
    with pytest.raises(ray.train.TrainingFailedError):
        fit(cfg, "relaunched", storage)
    run_dir = Path(storage) / "relaunched"
    assert max(r["global_step"] for r in history(run_dir)) == 2
    result = fit(cfg, "relaunched", storage)  # same storage path and name: continues from step 2
    assert result.error is None
    for ours, theirs in zip(final_weights(run_dir), final_weights(reference.path)):
        assert_same(ours, theirs)
    assert [r["global_step"] for r in history(run_dir)] == [r["global_step"] for r in history(reference.path)]


def test_nonfinite_steps_skipped_then_early_stopping(ray_local, data, storage):
    # rank 1 alone gets a NaN loss at optimizer step 1: both ranks must skip that step (else DDP would hang).
    # lr 1e-12 leaves the validation metric unchanged, so after the warmup epoch and one epoch setting the best
    # value, the next epoch is no better and patience 1 runs out: 3 epochs of the 6 allowed.
    cfg = config(data, nonfinite_steps=[1], lr=1e-12, final_lr=None, weight_decay=0.0, dropout=0.0, ema_decay=0.0,
                 report_every_steps=0, max_epoch=6, patience=1, warmup_epochs=1)
    result = fit(cfg, "early-stop", storage)
    assert result.error is None
    rows = history(result.path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["stopped_early"] is True and rows[-1]["skipped_nonfinite"] == 1
    assert [r["patience_left"] for r in rows] == [1, 1, 0]
    assert all(0 < r["train_time_s"] < 600 for r in rows)  # every epoch report says how long its training took


def test_too_many_nonfinite_steps_fail_with_a_clear_message(ray_local, data, storage):
    import ray.train

    cfg = config(data, nonfinite_steps=[0, 1, 2], max_bad_steps=3, report_every_steps=0)
    with pytest.raises(ray.train.TrainingFailedError, match="3 optimizer steps in a row had a non-finite loss"):
        fit(cfg, "bad-steps", storage)


def test_early_stopping_rule_matches_atomica():
    """Unit check of the rule on the counters alone: warmup epochs never count; improvements reset patience."""
    from atomica_ray.tasks import get_task
    from atomica_ray.train.checkpoint import TrainState

    run = WorkerRun.__new__(WorkerRun)
    run.cfg = TrainConfig(patience=2, warmup_epochs=2, max_epoch=10)
    run.task = get_task("PDBBind")  # min mode
    run.state = TrainState(patience_left=2)
    trace = []
    for epoch, value in enumerate([5.0, 9.0, 4.0, 4.5, 3.0, 3.5, 3.2]):
        run.state.epoch = epoch
        run._early_stopping(value)
        trace.append((run.state.best_metric, run.state.patience_left, run.state.stopped_early))
    assert trace == [(None, 2, False), (None, 2, False), (4.0, 2, False), (4.0, 1, False), (3.0, 2, False),
                     (3.0, 1, False), (3.0, 0, True)]


def test_init_checkpoint_starts_from_a_donor_with_this_configs_lr(reference, data, storage):
    donor = sorted(Path(reference.path).glob("checkpoint_epoch*"))[-1]
    cfg = config(data, init_checkpoint=str(donor), lr=7e-4, final_lr=None, max_epoch=3, report_every_steps=0)
    result = fit(cfg, "from-donor", storage)
    assert result.error is None
    rows = history(result.path)
    assert [r["epoch"] for r in rows] == [2]  # the donor had finished epochs 0 and 1
    assert rows[0]["lr"] == pytest.approx(7e-4)  # not the donor's decayed lr
    assert rows[0]["global_step"] > history(reference.path)[-1]["global_step"]


@pytest.fixture(scope="module")
def atomica_pretrained(tmp_path_factory):
    """ATOMICA's own DenoisePretrainModel (config.json + state dict) from the models' reference fixture."""
    reference = torch.load(FIXTURES / "atomica_reference.pt", weights_only=True)["DenoisePretrainModel"]
    out = tmp_path_factory.mktemp("atomica-pretrained")
    (out / "config.json").write_text(json.dumps(reference["config"]))
    torch.save(reference["state_dict"], out / "weights.pt")
    return out / "config.json", out / "weights.pt"


def test_finetune_from_atomica_pretrained_checkpoint(ray_local, data, storage, atomica_pretrained):
    from atomica_ray.models import load_atomica

    pre_config, pre_weights = atomica_pretrained
    assert json.loads(pre_config.read_text())["model_type"] == "DenoisePretrainModel"
    cfg = config(data, pretrain_config=str(pre_config), pretrain_weights=str(pre_weights), partial_finetune=True,
                 max_epoch=1, report_every_steps=0, ema_decay=0.0, grad_accum=2, global_message_passing=True)
    result = fit(cfg, "finetune", storage)
    assert result.error is None
    config_path, weights = model_files(result.checkpoint.path)
    assert json.loads(config_path.read_text())["model_type"] == "ClassifierModel"
    tuned = load_atomica(config_path, weights)
    start = load_atomica(pre_config, pre_weights, model_type="ClassifierModel", partial_finetune=True)
    frozen = {n for n, p in start.named_parameters() if not p.requires_grad}
    assert frozen, "partial_finetune froze nothing"
    tuned_state, start_state = tuned.state_dict(), start.state_dict()
    assert all(torch.equal(tuned_state[n], start_state[n]) for n in frozen)  # the pretrained encoder did not move
    assert tuned.atom_hidden_size == start.atom_hidden_size == json.loads(pre_config.read_text())["atom_hidden_size"]
