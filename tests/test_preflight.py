"""Bad input is refused on the driver before Ray starts (issue 19's table): one line `atomica-ray <command>: error:
...` naming the key, or the file, item and field; exit code 2; no Ray started; nothing written to the storage path.
Every case runs the real command in-process on real files; none starts Ray."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from atomica_ray.cli.main import main

ITEMS_JSON = Path(__file__).resolve().parent / "data" / "atomica_items.json"


@pytest.fixture(scope="module")
def raw_items():
    items = json.loads(ITEMS_JSON.read_text())["items"]
    for it in items:
        it["label"] = it.pop("label_binary")
    return items


def write_jsonl(path: Path, items: list[dict]) -> str:
    with gzip.open(path, "wb") as f:
        for it in items:
            f.write(orjson.dumps(it) + b"\n")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory, raw_items):
    """Small real inputs: an ATOMICA .jsonl.gz, and a Parquet dataset converted from it."""
    base = tmp_path_factory.mktemp("preflight")
    jsonl = write_jsonl(base / "items.jsonl.gz", raw_items)
    assert main(["convert", jsonl, "--out", str(base / "parquet")]) == 0
    return {"base": base, "jsonl": jsonl, "parquet": str(base / "parquet")}


def refused(capsys, storage: Path, *argv, command: str = "train") -> str:
    """Run the command; it must exit 2 with one error line, start no Ray, and leave the storage path as it was."""
    before = sorted(p.name for p in storage.iterdir()) if storage.exists() else None
    start = time.monotonic()
    code = main([command, *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert time.monotonic() - start < 60
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"atomica-ray {command}: error: "), err
    assert "Traceback" not in err
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "Ray was started"
    assert (sorted(p.name for p in storage.iterdir()) if storage.exists() else None) == before, "storage touched"
    return lines[0]


def train_args(data, storage: Path, *more) -> list[str]:
    return ["--train_set", data["parquet"], "--storage-path", str(storage), "--name", "r", "--num-workers", "1",
            "--atom_hidden_size", "8", "--block_hidden_size", "8", "--fragmentation_method", "PS_300", *more]


@pytest.mark.parametrize("flag,value,key", [
    ("--grad_clip", "-1", "grad_clip"),
    ("--lr", "nan", "lr"),
    ("--lr", "inf", "lr"),
    ("--max_n_vertex_per_gpu", "0", "max_n_vertex_per_gpu"),
    ("--max_n_vertex_per_gpu", "-5", "max_n_vertex_per_gpu"),
    ("--dropout", "2", "dropout"),
    ("--num_classifier_classes", "-2", "num_classifier_classes"),
    ("--cpus_per_worker", "0", "cpus_per_worker"),
])
def test_bad_config_values(capsys, tmp_path, data, flag, value, key):
    line = refused(capsys, tmp_path, *train_args(data, tmp_path, flag, value))
    assert f"key '{key}'" in line and "must be" in line


def test_run_name_is_one_path_component(capsys, tmp_path, data):
    storage = tmp_path / "a" / "b"
    storage.mkdir(parents=True)
    for name in ("../../x", "x/y", ".hidden", ""):
        line = refused(capsys, storage, "--train_set", data["parquet"], "--storage-path", str(storage),
                       "--name", name)
        assert "one path component" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_malformed_yaml(capsys, tmp_path, data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: PDBBind\nlr: [1e-3\n")
    line = refused(capsys, tmp_path, "--config", str(bad))
    assert str(bad) in line and "not valid YAML" in line and "line" in line
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    line = refused(capsys, tmp_path, "--config", str(bad), "--space", str(space), "--storage-path", str(tmp_path),
                   command="tune")
    assert str(bad) in line and "not valid YAML" in line


def test_tune_resume_of_a_missing_sweep(capsys, tmp_path):
    line = refused(capsys, tmp_path, "--resume", "nope", "--storage-path", str(tmp_path), command="tune")
    assert "nope" in line and "no sweep" in line


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write to: a read-only tmpfs when we may mount (root), else chmod."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("running as root without permission to mount: no directory can be made unwritable")
        path.chmod(0o555)
    yield path
    if mounted:
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o755)


def test_unwritable_storage(capsys, data, read_only_dir):
    line = refused(capsys, read_only_dir, *train_args(data, read_only_dir))
    assert "not writable" in line and str(read_only_dir) in line


def test_pickle_needs_opt_in(capsys, tmp_path, raw_items):
    pkl = tmp_path / "items.pkl"
    pkl.write_bytes(pickle.dumps(raw_items))
    line = refused(capsys, tmp_path, "--train_set", str(pkl), "--storage-path", str(tmp_path / "runs"))
    assert str(pkl) in line and "--allow-pickle" in line


def test_nan_coordinates(capsys, tmp_path, raw_items):
    items = json.loads(json.dumps(raw_items))
    items[2]["data"]["X"][5][1] = float("nan")
    path = tmp_path / "nan.pkl"
    path.write_bytes(pickle.dumps(items))
    line = refused(capsys, tmp_path, "--train_set", str(path), "--allow_pickle", "--fragmentation_method", "PS_300",
                   "--storage-path", str(tmp_path / "runs"))
    assert f"{path}, item 2 (id {items[2]['id']!r}), field X" in line and "non-finite" in line


def test_empty_dataset(capsys, tmp_path):
    path = tmp_path / "empty.jsonl.gz"
    path.write_bytes(gzip.compress(b""))
    line = refused(capsys, tmp_path, "--train_set", str(path), "--storage-path", str(tmp_path / "runs"))
    assert str(path) in line and "no items" in line


def test_labels_against_the_task(capsys, tmp_path, raw_items):
    items = json.loads(json.dumps(raw_items))
    items[1]["label"] = 2.0  # not a binary label
    path = write_jsonl(tmp_path / "binary.jsonl.gz", items)
    line = refused(capsys, tmp_path, "--train_set", path, "--fragmentation_method", "PS_300",
                   "--storage-path", str(tmp_path / "runs"))
    assert f"{path}, item 1 (id {items[1]['id']!r}), field label: 2 is not a binary label" in line

    items = json.loads(json.dumps(raw_items))
    for i, it in enumerate(items):
        it["label"] = [0, 1, 7, 2][i]  # class 7 of 3
    path = write_jsonl(tmp_path / "multi.jsonl.gz", items)
    line = refused(capsys, tmp_path, "--train_set", path, "--fragmentation_method", "PS_300", "--task",
                   "multiclass_classifier", "--num_classifier_classes", "3", "--storage-path", str(tmp_path / "r"))
    assert f"item 2 (id {items[2]['id']!r}), field label: 7 is not a class index 0..2" in line


def test_truncated_parquet(capsys, tmp_path, data):
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(data["parquet"], damaged)
    items = damaged / "items.parquet"
    items.write_bytes(items.read_bytes()[:-200])
    assert main(["inspect", str(damaged)]) == 2
    assert f"{items}: " in capsys.readouterr().err
    line = refused(capsys, tmp_path / "runs", "--train_set", str(damaged), "--fragmentation_method", "PS_300",
                   "--storage-path", str(tmp_path / "runs"))
    assert str(items) in line and "truncated" in line


def test_inspect_verify_names_a_damaged_file(capsys, tmp_path, data):
    import shutil

    copy = tmp_path / "flipped"
    shutil.copytree(data["parquet"], copy)
    assert main(["inspect", str(copy), "--verify"]) == 0
    assert "checksum ok" in capsys.readouterr().out
    items = copy / "items.parquet"
    raw = bytearray(items.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte changed: only the checksum can tell
    items.write_bytes(bytes(raw))
    assert main(["inspect", str(copy)]) == 0  # the cheap checks pass
    capsys.readouterr()
    assert main(["inspect", str(copy), "--verify"]) == 2
    assert f"{items}: its content does not match the checksum" in capsys.readouterr().err


def test_init_checkpoint_of_another_model_class(capsys, tmp_path, data):
    import torch

    from atomica_ray.models import create_model, save_atomica
    from atomica_ray.train.checkpoint import TrainState, write_checkpoint

    model = create_model("PDBBind", atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4,
                         n_layers=1, fragmentation_method="PS_300")
    opt = torch.optim.Adam(model.parameters())
    ckpt = tmp_path / "affinity_checkpoint"
    write_checkpoint(ckpt, model=model, save_atomica=save_atomica, optimizer=opt,
                     scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None, state=TrainState(epoch=1),
                     rng_states=[], history=[], config={"task": "PDBBind"})
    line = refused(capsys, tmp_path / "runs", *train_args(data, tmp_path / "runs", "--init_checkpoint", str(ckpt)))
    assert "AffinityPredictor" in line and "ClassifierModel" in line and "pretrain_config" in line


def test_relaunch_with_another_task_is_refused(capsys, tmp_path, data):
    run = tmp_path / "runs" / "r" / "checkpoint_epoch0000_step00000001"
    run.mkdir(parents=True)
    (run / "train_config.yaml").write_text("task: PDBBind\n")
    line = refused(capsys, tmp_path / "runs", *train_args(data, tmp_path / "runs"))
    assert "trains PDBBind, not binary_classifier" in line
