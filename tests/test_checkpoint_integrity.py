"""Checkpoints that cannot be half-written and run directories that are repaired, not abandoned (issue 19, item 3),
and a schedule stretched on resume (issue 21, item 6), on real checkpoint files, without Ray: a manifest catches a
short file and a changed byte; publishing replaces a checkpoint whole; `rundir.repair` sets a damaged checkpoint
aside, points Ray's snapshot at the newest intact one, adopts complete checkpoints Ray never registered, and
rebuilds a snapshot it cannot read; lr stays within [final_lr, lr] when max_epoch grows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from atomica_ray.train import rundir
from atomica_ray.train.checkpoint import (
    TrainState, model_files, publish_checkpoint, read_manifest, verify_checkpoint, write_checkpoint,
)
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.schedule import lr_at, stretch


@pytest.fixture(scope="module")
def model():
    from atomica_ray.models import create_model

    return create_model("binary_classifier", atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4,
                        n_layers=1, fragmentation_method="PS_300")


def save(model, path: Path, epoch: int, step: int) -> Path:
    from atomica_ray.models import save_atomica

    opt = torch.optim.Adam(model.parameters())
    history = [{"epoch": e, "global_step": 4 * (e + 1), "batch": 0, "val_bce": 0.7 - 0.01 * e} for e in range(epoch + 1)]
    write_checkpoint(path, model=model, save_atomica=save_atomica, optimizer=opt,
                     scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None,
                     state=TrainState(epoch=epoch + 1, global_step=step), rng_states=[], history=history,
                     config={"task": "binary_classifier"})
    return path


def name(epoch: int, step: int) -> str:
    return f"checkpoint_epoch{epoch:04d}_step{step:08d}"


def test_manifest_catches_short_files_and_changed_bytes(model, tmp_path):
    ckpt = save(model, tmp_path / name(0, 4), 0, 4)
    manifest = read_manifest(ckpt)
    assert manifest["epoch"] == 0 and manifest["global_step"] == 4
    assert set(manifest["files"]) == {"model/config.json", "model/model.pt", "model/atomica_ray.json",
                                      "train_state.pt", "metrics_history.jsonl", "train_config.yaml"}
    assert model_files(ckpt)[1].name == "model.pt"  # the same weight file name in every checkpoint
    assert verify_checkpoint(ckpt) is None
    state = ckpt / "train_state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 1
    state.write_bytes(bytes(data))
    assert verify_checkpoint(ckpt, checksums=False) is None  # the size still matches ...
    assert verify_checkpoint(ckpt) == "train_state.pt does not match its checksum"  # ... the checksum does not
    state.write_bytes(bytes(data[:100]))
    assert verify_checkpoint(ckpt) == f"train_state.pt has 100 bytes, its manifest says {len(data)}"


def test_publish_replaces_a_checkpoint_whole(model, tmp_path):
    final = save(model, tmp_path / name(0, 4), 0, 4)
    again = save(model, tmp_path / ".tmp-again", 0, 4)
    (final / "train_state.pt").write_bytes(b"broken")
    publish_checkpoint(again, final)
    assert verify_checkpoint(final) is None and not again.exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # the old copy is gone


def snapshot(run: Path, names: list[str], latest: str) -> None:
    results = [{"version": 0, "checkpoint_dir_name": n, "metrics": {"val_bce": 0.5}} for n in names]
    (run / rundir.SNAPSHOT).write_text(json.dumps({
        "ray_version": "2.60.0", "checkpoint_results": results,
        "checkpoint_report_indices": list(range(1, len(names) + 1)),
        "latest_checkpoint_result": next(r for r in results if r["checkpoint_dir_name"] == latest),
        "pending_training_results": [], "pending_validation_specs": [], "current_report_index": len(names),
        "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": []}))


def latest_of(run: Path) -> str:
    return json.loads((run / rundir.SNAPSHOT).read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]


def test_repair_sets_a_damaged_latest_aside_and_adopts_unregistered_ones(model, tmp_path):
    run = tmp_path / "run"
    for e in range(3):
        save(model, run / name(e, 4 * (e + 1)), e, 4 * (e + 1))
    (run / ".tmp-checkpoint_epoch0003_step00000016-1a2b3c4d").mkdir()  # a write that never finished
    snapshot(run, [name(0, 4), name(1, 8)], latest=name(1, 8))  # epoch 2 was written, never registered
    notes = rundir.repair(run)
    assert notes[0] == "removed 1 unfinished checkpoint write(s): .tmp-checkpoint_epoch0003_step00000016-1a2b3c4d"
    assert notes[1] == (f"{name(2, 12)} complete but not yet registered when the run stopped: kept; resuming from "
                        f"{name(2, 12)} (epoch 2, step 12)")
    assert latest_of(run) == name(2, 12)

    state = run / name(2, 12) / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # the disk filled up
    notes = rundir.repair(run)
    assert notes == [f"{name(2, 12)} is damaged (train_state.pt has 1000 bytes, its manifest says "
                     f"{read_manifest(run / '.damaged' / name(2, 12))['files']['train_state.pt']['size']}): moved "
                     f"to {run / '.damaged'}; resuming from {name(1, 8)} (epoch 1, step 8)"]
    assert latest_of(run) == name(1, 8)
    assert not (run / name(2, 12)).exists() and (run / ".damaged" / name(2, 12)).is_dir()  # set aside, kept
    assert (run / (rundir.SNAPSHOT + ".bak")).is_file()
    assert rundir.repair(run) == []  # nothing left to do


def test_repair_rebuilds_an_unreadable_snapshot(model, tmp_path):
    run = tmp_path / "run"
    for e in range(2):
        save(model, run / name(e, 4 * (e + 1)), e, 4 * (e + 1))
    (run / rundir.SNAPSHOT).write_text('{"ray_version": "2.60.0", "checkpoint_res')  # cut short
    notes = rundir.repair(run)
    assert "was unreadable" in notes[0] and notes[0].endswith(f"resuming from {name(1, 8)}")
    rebuilt = json.loads((run / rundir.SNAPSHOT).read_text())
    assert [r["checkpoint_dir_name"] for r in rebuilt["checkpoint_results"]] == [name(0, 4), name(1, 8)]
    assert rebuilt["checkpoint_results"][-1]["metrics"]["val_bce"] == pytest.approx(0.69)


def test_a_longer_run_stretches_the_decay_within_its_bounds():
    cfg = TrainConfig(lr=1e-3, final_lr=1e-5, max_epoch=20)
    state = TrainState(global_step=100, total_steps=100)  # a finished 10-epoch run of 10 steps an epoch
    before = lr_at(99, cfg, "exp_decay", 100)
    assert before == pytest.approx(1e-5)
    unchanged = TrainState(global_step=50, total_steps=100)
    assert stretch(cfg, "exp_decay", unchanged, 100) is None  # same length: the same schedule, bit for bit
    text = stretch(cfg, "exp_decay", state, 200)
    assert text == ("the run's length changed from 100 to 200 optimizer steps: the exp_decay schedule now decays "
                    "from 1e-05 (step 100) to final_lr 1e-05 at step 200 instead of step 100")
    lrs = [lr_at(s, cfg, "exp_decay", state.total_steps, state.schedule_from_step, state.schedule_from_lr)
           for s in range(100, 200)]
    assert all(1e-5 * (1 - 1e-9) <= lr <= 1e-3 for lr in lrs)  # without the stretch: 1e-7 by the end

    state = TrainState(global_step=40, total_steps=100)  # stopped at 40%: lr 1e-3 * 0.01 ** 0.4
    stretch(cfg, "exp_decay", state, 200)
    lrs = [lr_at(s, cfg, "exp_decay", 200, state.schedule_from_step, state.schedule_from_lr) for s in range(40, 200)]
    assert lrs[0] == pytest.approx(lr_at(39, cfg, "exp_decay", 100), rel=0.05)  # continuous
    assert lrs[-1] == pytest.approx(1e-5) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert math.isclose(max(lrs), lrs[0]) and min(lrs) >= 1e-5 * (1 - 1e-9)
