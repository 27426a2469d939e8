"""Every ATOMICA task trains 2 epochs with CPU Ray Train workers (gloo) on tiny demo data, reports its metrics
under the names users know, and leaves ATOMICA-format checkpoints; `predict` and `embed` read the result.
binary_classifier trains on 2 workers (its validation metric is checked against single-process predictions, so the
gather of every rank's validation records is tested); the other tasks on 1 worker, as the engine's distributed
steps (gradient all-reduce, record gather, per-rank RNG) are the same code for every task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from atomica_ray.tasks import TASKS, get_task
from atomica_ray.train.checkpoint import model_files, read_train_state
from atomica_ray.train.config import TrainConfig

pytestmark = pytest.mark.slow

EXPECTED = {
    "PDBBind": ["val_rmse", "val_pearson", "val_spearman"],
    "regression": ["val_rmse", "val_pearson", "val_spearman"],
    "binary_classifier": ["val_bce", "val_auroc", "val_auprc"],
    "multiclass_classifier": ["val_ce", "val_accuracy", "val_macro_auprc"],
    "pretrain_torsion": ["val_loss", "val_tor_loss", "val_translation_loss", "val_rotation_loss"],
    "pretrain_gaussian": ["val_loss", "val_atom_loss", "val_translation_loss", "val_rotation_loss"],
    "pretrain_torsion_masking": ["val_loss", "val_tor_loss", "val_masked_loss", "val_mask_acc"],
    "masking": ["val_ce", "val_accuracy"],
    "prot_interface": ["val_loss"],
}
NOISE = {
    "pretrain_torsion": dict(torsion_noise=0.5, translation_noise=1.0, rotation_noise=0.25, max_rotation=0.5),
    "pretrain_gaussian": dict(atom_noise=1.0, translation_noise=1.0, rotation_noise=0.25),
    "pretrain_torsion_masking": dict(torsion_noise=0.5, translation_noise=1.0, rotation_noise=0.25,
                                     max_rotation=0.5, mask_proportion=0.1, rot_weight=0.1),
    "masking": dict(mask_proportion=0.1),
    "multiclass_classifier": dict(num_classifier_classes=3),
}
TWO_WORKER_TASKS = {"binary_classifier"}  # test_validation_metric_covers_the_whole_validation_set needs 2 ranks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demo splits (binary label, affinity) and a 3-class copy (class = affinity tercile)."""
    from atomica_ray.data.demo import demo_items, write_demo_splits
    from atomica_ray.data.items import validate_item
    from atomica_ray.data.parquet import write_dataset
    from atomica_ray.data.vocab import get_vocab

    root = tmp_path_factory.mktemp("task-data")
    paths = {"demo": write_demo_splits(str(root / "demo"), n_train=14, n_valid=8, seed=11)}
    n_types = len(get_vocab("PS_300"))
    items = demo_items(22, seed=11)
    cuts = np.quantile([it["affinity"]["neglog_aff"] for it in items], [1 / 3, 2 / 3])
    for it in items:
        it["label"] = int(np.searchsorted(cuts, it["affinity"]["neglog_aff"]))
    mc = {}
    for split, part in (("train", items[:14]), ("valid", items[14:])):
        mc[split] = str(root / "mc" / split)
        write_dataset((("demo", validate_item(it, "demo", i, n_types)) for i, it in enumerate(part)), mc[split])
    paths["mc"] = mc
    return paths


def tiny_config(task: str, data: dict, **changes) -> TrainConfig:
    split = data["mc"] if task == "multiclass_classifier" else data["demo"]
    values = dict(task=task, train_set=split["train"], valid_set=split["valid"], max_epoch=2,
                  num_workers=2 if task in TWO_WORKER_TASKS else 1,
                  atom_hidden_size=8, block_hidden_size=8, edge_size=8, n_layers=1, k_neighbors=4,
                  max_n_vertex_per_gpu=150, fragmentation_method="PS_300", progress_bar=False, seed=5)
    values.update(NOISE.get(task, {}))
    values.update(changes)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def runs(ray_local, data, tmp_path_factory):
    """Train each task at most once per module; tests share the results."""
    from atomica_ray.train.launch import build_trainer

    storage = tmp_path_factory.mktemp("task-runs")
    done = {}

    def get(task):
        if task not in done:
            done[task] = build_trainer(tiny_config(task, data), run_name=task, storage_path=str(storage)).fit()
        return done[task]

    # Ray Train's controller polls its workers every 2 s (a missed poll is only retried), so each fit's state
    # changes wait up to 2 s; polling every 0.2 s saves about 4 s a fit. The env var is read when a fit starts.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        yield get


# the tasks with list-valued labels train on their own data in test_new_tasks.py
LIST_LABEL_TASKS = {"residue_binary_classifier", "multilabel_classifier"}


def test_registry_covers_atomicas_tasks():
    assert set(TASKS) == set(EXPECTED) | LIST_LABEL_TASKS
    for name in TASKS:
        task = get_task(name)
        assert task.mode in ("min", "max") and task.optimizer in ("adam", "adamw")
        assert task.scheduler in ("exp_decay", "cosine_restarts")
    assert get_task("binary_classifier").optimizer == "adamw" and get_task("masking").optimizer == "adam"
    assert get_task("PDBBind").scheduler == "exp_decay" and get_task("prot_interface").scheduler == "cosine_restarts"


@pytest.mark.parametrize("task", list(EXPECTED))
def test_task_trains_two_epochs(task, runs):
    from atomica_ray.models import load_atomica

    result = runs(task)
    assert result.error is None
    spec = get_task(task)
    metrics = result.metrics
    assert metrics["epoch"] == 1 and metrics["global_step"] > 0
    for key in EXPECTED[task]:
        assert key in metrics, f"{task}: {key} missing from {sorted(metrics)}"
    assert math.isfinite(metrics[spec.selection_metric])
    assert math.isfinite(metrics["train_loss"])

    run_dir = Path(result.path)
    history = [json.loads(line) for line in (run_dir / "metrics_history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [0, 1]
    checkpoints = sorted(run_dir.glob("checkpoint_epoch*"))
    assert len(checkpoints) == 2
    config, weights = model_files(checkpoints[-1])
    assert json.loads(config.read_text())["model_type"] == spec.model_class
    model = load_atomica(config, weights)  # ATOMICA's format reads back
    assert type(model).__name__ == spec.model_class
    state = read_train_state(checkpoints[-1])
    workers = 2 if task in TWO_WORKER_TASKS else 1
    assert state["state"]["epoch"] == 2 and state["state"]["batch"] == 0 and len(state["rng"]) == workers


def test_validation_metric_covers_the_whole_validation_set(runs, data, tmp_path):
    """val_bce reported by the 2-worker run equals the BCE of single-process predictions on every valid item."""
    from atomica_ray.cli.main import main
    from atomica_ray.tasks import metrics as M

    result = runs("binary_classifier")
    assert len(read_train_state(Path(result.checkpoint.path))["rng"]) == 2  # both ranks validated
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--checkpoint", result.checkpoint.path, "--data_path", data["demo"]["valid"],
                 "--output_path", str(out), "--device", "cpu"]) == 0
    table = pq.read_table(out).to_pydict()
    assert len(table["id"]) == 8 and len(set(table["id"])) == 8
    bce = M.bce(np.array(table["prediction"]), np.array(table["label"]))
    assert bce == pytest.approx(result.metrics["val_bce"], rel=1e-4)
    assert main(["predict", "--checkpoint", result.checkpoint.path, "--data_path", data["demo"]["valid"],
                 "--output_path", str(out)]) == 2  # never overwrites without --overwrite


def test_embed_writes_every_item(runs, data, tmp_path):
    from atomica_ray.cli.main import main

    result = runs("prot_interface")
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--checkpoint", result.checkpoint.path, "--data_path", data["demo"]["valid"],
                 "--output_path", str(out), "--device", "cpu",
                 "--representations", "graph_embedding,block_embedding,atom_embedding"]) == 0  # the older names
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert len(row["graph_embedding"]) == 8
        assert len(row["block_embedding"]) == len(row["block_id"]) and len(row["block_embedding"][0]) == 8
        assert len(row["atom_embedding"]) == len(row["atom_id"]) and len(row["atom_embedding"][0]) == 8
        assert np.allclose(np.linalg.norm(row["graph_embedding"]), 1.0, atol=1e-4)  # unit vectors
    assert torch.tensor(rows[0]["atom_id"]).min() >= 0
