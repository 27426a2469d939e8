"""`atomica-ray train` flag parsing: ATOMICA's flag names, YAML + flags + --set precedence, the ported script."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import yaml

from atomica_ray.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def resolved(capsys, *argv) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def script_args(path: Path) -> list[str]:
    """The arguments of the `atomica-ray train` command in a shell script."""
    text = path.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("atomica-ray train"))
    return shlex.split(line)[2:]


def test_atomica_flag_names(capsys):
    cfg = resolved(
        capsys, "--train_set", "a", "--valid_set", "b", "--task", "PDBBind", "--lr", "1e-4", "--final_lr", "1e-6",
        "--max_epoch", "7", "--grad_clip", "1.0", "--patience", "3", "--save_topk", "2", "--warmup_epochs", "1",
        "--max_n_vertex_per_gpu", "500", "--max_n_vertex_per_item", "128", "--atom_hidden_size", "16",
        "--block_hidden_size", "24", "--edge_size", "8", "--k_neighbors", "5", "--n_layers", "2",
        "--global_message_passing", "--fragmentation_method", "PS_300", "--pretrain_config", "c.json",
        "--pretrain_weights", "w.pt", "--partial_finetune", "--seed", "7",
        "--atom_noise", "0", "--translation_noise", "1", "--rotation_noise", "0.25", "--max_rotation", "0.5",
        "--torsion_noise", "0.5", "--mask_proportion", "0.1", "--tr_weight", "2", "--rot_weight", "0.1",
        "--tor_weight", "3", "--atom_weight", "4", "--mask_weight", "5", "--dropout", "0.1", "--cycle_steps", "9",
    )
    assert cfg["train_set"] == "a" and cfg["valid_set"] == "b" and cfg["task"] == "PDBBind"
    assert (cfg["lr"], cfg["final_lr"], cfg["max_epoch"], cfg["grad_clip"]) == (1e-4, 1e-6, 7, 1.0)
    assert (cfg["patience"], cfg["save_topk"], cfg["warmup_epochs"]) == (3, 2, 1)
    assert (cfg["max_n_vertex_per_gpu"], cfg["max_n_vertex_per_item"]) == (500, 128)
    assert (cfg["atom_hidden_size"], cfg["block_hidden_size"], cfg["edge_size"]) == (16, 24, 8)
    assert (cfg["k_neighbors"], cfg["n_layers"], cfg["global_message_passing"]) == (5, 2, True)
    assert cfg["fragmentation_method"] == "PS_300" and cfg["partial_finetune"] is True and cfg["seed"] == 7
    assert (cfg["pretrain_config"], cfg["pretrain_weights"]) == ("c.json", "w.pt")
    assert (cfg["translation_noise"], cfg["rotation_noise"], cfg["max_rotation"]) == (1.0, 0.25, 0.5)
    assert (cfg["torsion_noise"], cfg["mask_proportion"]) == (0.5, 0.1)
    assert (cfg["tr_weight"], cfg["rot_weight"], cfg["tor_weight"], cfg["atom_weight"], cfg["mask_weight"]) == \
        (2.0, 0.1, 3.0, 4.0, 5.0)
    assert (cfg["dropout"], cfg["cycle_steps"]) == (0.1, 9)


def test_hyphenated_spellings_and_ray_flags(capsys):
    cfg = resolved(capsys, "--max-epoch", "4", "--num-workers", "4", "--use-gpu", "--num_workers", "8",
                   "--no-shuffle", "--grad-accum", "2", "--precision", "bf16", "--ema-decay", "0.99")
    assert cfg["max_epoch"] == 4 and cfg["shuffle"] is False
    assert cfg["num_workers"] == 4 and cfg["use_gpu"] is True  # Ray workers
    assert cfg["loader_workers"] == 8  # ATOMICA's --num_workers: DataLoader processes
    assert (cfg["grad_accum"], cfg["precision"], cfg["ema_decay"]) == (2, "bf16", 0.99)


def test_atomica_gpu_list_maps_to_ray_workers(capsys):
    cfg = resolved(capsys, "--gpu", "0", "1", "2", "3")
    assert cfg["num_workers"] == 4 and cfg["use_gpu"] is True
    cfg = resolved(capsys, "--gpus", "-1")
    assert cfg["num_workers"] == 1 and cfg["use_gpu"] is False


def test_precedence_yaml_then_flags_then_set(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("task: regression\nlr: 0.01\nmax_epoch: 5\nedge_size: 12\n")
    cfg = resolved(capsys, "--config", str(path), "--lr", "0.002", "--set", "max_epoch=9", "--set", "lr=3e-4")
    assert cfg["task"] == "regression" and cfg["edge_size"] == 12  # from YAML
    assert cfg["max_epoch"] == 9 and cfg["lr"] == 3e-4  # --set beats flags beats YAML
    assert math.isclose(resolved(capsys, "--config", str(path))["lr"], 0.01)


def test_bad_values_are_reported_with_the_key(capsys):
    assert main(["train", "--max_epoch", "two", "--print-config"]) == 2
    assert "max_epoch" in capsys.readouterr().err
    assert main(["train", "--set", "no_such_key=1", "--print-config"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["train", "--train_set", "/nonexistent/train"]) == 2
    assert "/nonexistent/train" in capsys.readouterr().err


def test_ported_atomica_ligand_script_parses(capsys):
    args = script_args(ROOT / "examples" / "train_atomica_ligand.sh")
    assert "torchrun" not in " ".join(args) and "--gpu" not in args
    cfg = resolved(capsys, *args)
    assert cfg["task"] == "binary_classifier" and cfg["lr"] == 1e-4 and cfg["max_epoch"] == 50
    assert (cfg["atom_hidden_size"], cfg["block_hidden_size"], cfg["n_layers"], cfg["edge_size"]) == (32, 32, 4, 32)
    assert (cfg["k_neighbors"], cfg["max_n_vertex_per_gpu"], cfg["max_n_vertex_per_item"]) == (8, 1000, 256)
    assert cfg["global_message_passing"] is True and cfg["fragmentation_method"] == "PS_300"
    assert cfg["num_workers"] == 1 and cfg["use_gpu"] is True and cfg["loader_workers"] == 8
    assert cfg["pretrain_config"].endswith("config") and cfg["pretrain_weights"].endswith("weights")


def test_example_configs_load(capsys):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = resolved(capsys, "--config", str(path))
        assert cfg["task"]
