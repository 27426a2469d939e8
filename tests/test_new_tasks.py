"""residue_binary_classifier and multilabel_classifier on the one engine: each trains on a Ray Train worker with
its options on, reports its metrics and leaves checkpoints in ATOMICA's format; the residue run resumes where it
stopped, and the residue task is tuned with ASHA through `atomica-ray tune`. One module-scoped local Ray, tiny
models, a dozen demo items."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from atomica_ray.tasks import task_for
from atomica_ray.train.checkpoint import model_files
from atomica_ray.train.config import TrainConfig
from list_label_data import write_splits

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("list-labels"))


def tiny(task: str, data: dict, **changes) -> TrainConfig:
    values = dict(task=task, train_set=data["train"], valid_set=data["valid"], max_epoch=2, num_workers=1,
                  atom_hidden_size=8, block_hidden_size=8, edge_size=8, n_layers=1, k_neighbors=4,
                  max_n_vertex_per_gpu=300, fragmentation_method="PS_300", progress_bar=False, tensorboard=False,
                  seed=5, lr=3e-3)
    if task == "multilabel_classifier":
        values["num_classifier_classes"] = 3
    values.update(changes)
    return TrainConfig.from_dict(values)


def check_predictions(checkpoint: str, model, task: str, data: dict, tmp_path) -> None:
    """`atomica-ray predict` writes one probability per non-global block (residue) or per class (multilabel), each
    item's as it has alone, next to its list label."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from atomica_ray.cli.main import main
    from atomica_ray.data import open_dataset
    from atomica_ray.data.collate import collate
    from atomica_ray.models.backbone import set_batch_independent
    from atomica_ray.tasks import get_task

    out = tmp_path / "pred.parquet"
    assert main(["predict", "--checkpoint", checkpoint, "--data_path", data["valid"], "--output_path", str(out),
                 "--device", "cpu", "--max_n_vertex_per_gpu", "300"]) == 0
    table = pq.read_table(out).to_pydict()
    kind, field = ("residue", "block_labels") if task == "residue_binary_classifier" else ("multilabel", "label_vector")
    ds = open_dataset(data["valid"], list_labels="block" if kind == "residue" else "vector")
    model = set_batch_independent(model.eval())
    assert table["id"] == [ds[i]["id"] for i in range(len(ds))]
    for i in range(len(ds)):
        with torch.no_grad():  # the item alone
            alone = get_task(task).forward(model, collate([ds[i]], kind))[1]["prob"].reshape(-1).numpy()
        assert np.allclose(table["prediction"][i], alone, atol=1e-6)
        assert table["label"][i] == pytest.approx(list(ds[i][field]))


def history(result) -> list[dict]:
    return [json.loads(x) for x in (Path(result.path) / "metrics_history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task, options, model_class, keys", [
    ("residue_binary_classifier", dict(random_block_sampling=True, block_sampling_p_keep=0.8),
     "ResidueClassifierModel", ["val_auprc", "val_auroc", "val_bce", "val_auprc_per_structure",
                                "val_auroc_per_structure"]),
    ("multilabel_classifier", dict(weighted_loss=True, use_focal_loss=True, focal_gamma=1.0),
     "MultiLabelClassifierModel", ["val_delta_auprc", "val_macro_auprc", "val_micro_auprc", "val_f1_macro"]),
])
def test_trains_and_resumes(task, options, model_class, keys, ray_local, data, tmp_path):
    from atomica_ray.models import load_atomica
    from atomica_ray.train.launch import build_trainer

    cfg = tiny(task, data, max_epoch=1, **options)
    first = build_trainer(cfg, run_name="run", storage_path=str(tmp_path)).fit()
    assert first.error is None
    metrics = first.metrics
    for key in keys:
        assert key in metrics and math.isfinite(metrics[key]), (key, metrics)
    assert task_for(cfg).mode == "max" and f"best_{task_for(cfg).selection_metric}" in metrics
    config, weights = model_files(Path(first.checkpoint.path))
    assert json.loads(config.read_text())["model_type"] == model_class
    model = load_atomica(config, weights)
    assert type(model).__name__ == model_class  # ATOMICA's format reads back
    check_predictions(first.checkpoint.path, model, task, data, tmp_path)

    if task == "multilabel_classifier":
        return  # resuming is the engine's, whatever the task: the residue run checks it (with block sampling on)
    # the same run name and storage, one more epoch: continues at epoch 1 from the saved state
    resumed = build_trainer(cfg.replace(max_epoch=2), run_name="run", storage_path=str(tmp_path)).fit()
    assert resumed.error is None
    rows = history(resumed)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["global_step"] < rows[1]["global_step"] == 2 * rows[0]["global_step"]


def structures_dataset(tmp_path) -> dict | None:
    """The README's residue example data: the real structures of examples/structures/index.csv processed by
    `atomica-ray process`, every block labelled by the 4 Å interface rule (None without the structures extra)."""
    pytest.importorskip("gemmi", reason="the structures extra (pip install -e '.[structures]')")
    from atomica_ray.cli.main import main
    from atomica_ray.data.labels import main as label

    index = ROOT / "examples" / "structures" / "index.csv"
    assert main(["process", str(index), "--out", str(tmp_path / "complexes"), "--fragmentation_method", "PS_300",
                 "--no-progress"]) == 0
    assert label([str(tmp_path / "complexes"), str(tmp_path / "residues"), "--cutoff", "4.0"]) == 0
    return {"train": str(tmp_path / "residues"), "valid": str(tmp_path / "residues")}


def test_residue_example_tunes_with_asha(ray_local, tmp_path):
    """README "Residue-level interface prediction": structures -> process -> interface labels -> ASHA sweep."""
    from atomica_ray.cli.main import main

    data = structures_dataset(tmp_path)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({**tiny("residue_binary_classifier", data).to_dict(), "max_epoch": 2}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"task": "residue_binary_classifier",
                                     "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}},
                                     "asha": {"grace_period": 1, "reduction_factor": 2}}))
    code = main(["tune", "--config", str(run), "--space", str(space), "--search", "grid", "--scheduler", "asha",
                 "--storage-path", str(tmp_path / "sweeps"), "--name", "residue"])
    assert code == 0
    best = json.loads((tmp_path / "sweeps" / "residue" / "best.json").read_text())
    assert best["metric"] == "val_auprc" and best["mode"] == "max" and math.isfinite(best["value"])
