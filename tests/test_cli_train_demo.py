"""`atomica-ray demo`: its config matches configs/demo.yaml, and the command runs end to end (data, a local Ray
with 2 CPU workers, the comparison with a constant predictor). The full learning run (~5 min on 2 cores) is
opt-in: ATOMICA_RAY_DEMO_TEST=1."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from atomica_ray.cli import demo
from atomica_ray.cli.main import main
from atomica_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def demo_args(**changes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    for k, v in changes.items():
        setattr(args, k, v)
    return args


def test_demo_config_is_configs_demo_yaml():
    shipped = TrainConfig.from_yaml(ROOT / "configs" / "demo.yaml").to_dict()
    ours = demo.demo_config({"train": "demo/train", "valid": "demo/valid"}, demo_args()).to_dict()
    ours.update(progress_bar=True, seed=shipped["seed"])  # run-time settings of the command
    assert ours == shipped


def test_constant_predictor_baselines():
    import numpy as np

    train, valid = np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 0.0])
    bce = demo.constant_predictor("binary_classifier", train, valid)["val_bce"]
    assert bce == pytest.approx(-(np.log(0.75) + np.log(0.25)) / 2)
    assert demo.constant_predictor("PDBBind", np.array([2.0, 4.0]), np.array([1.0, 5.0]))["val_rmse"] == 2.0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATOMICA_RAY_DEMO_TEST") != "1", reason="~5 min: set ATOMICA_RAY_DEMO_TEST=1")
def test_demo_learns(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "the model learned" in out and "constant" in out
