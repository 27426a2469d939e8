"""A CLI that explains itself (issue 21, item 2): every config key described once, in `train --help` and in
`--print-config`, from one declaration; `--version`; a message for an unknown command; `--help` and usage errors
answer before torch and Ray are imported; the progress bar shows no `nan` placeholder."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from atomica_ray.cli.main import COMMANDS, main
from atomica_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
from atomica_ray.cli.main import main
out = {}
for argv in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out[" ".join(argv)] = code
print("RESULT", json.dumps({"codes": out, "torch": "torch" in sys.modules, "ray": "ray" in sys.modules}))
"""


def test_help_and_usage_errors_import_neither_torch_nor_ray():
    argvs = [[name, "--help"] for name in COMMANDS] + [["--help"], ["--version"], ["trian"],
                                                       ["train", "--no-such-flag"], ["predict"], ["tune", "--lr"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=120)
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert not result["torch"] and not result["ray"], result
    codes = result["codes"]
    assert all(codes[f"{name} --help"] == 0 for name in COMMANDS), codes
    assert codes["trian"] == 2 and codes["train --no-such-flag"] == 2 and codes["predict"] == 2, codes


def test_version_and_unknown_command(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"atomica-ray \d+\.\d+\.\d+ \(ray [\d.]+, torch [\w.+]+, Python 3", out), out
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "atomica-ray: error: unknown command 'trian'" in err and "did you mean 'train'?" in err
    assert main([]) == 0 and "train" in capsys.readouterr().out


def test_every_config_key_is_described_once_in_help(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0
    text = capsys.readouterr().out
    described = TrainConfig.describe()
    for key, d in described.items():
        flag = "--num-workers" if key == "num_workers" else f"--{key}"
        shown = re.findall(rf"^\s+{re.escape(flag)}[ ,\n]", text, flags=re.M)
        if d["hidden"]:
            assert not shown, key
            continue
        assert len(shown) == 1, f"{key} shown {len(shown)} times"
        assert d["help"].split(" (")[0][:30] in " ".join(text.split()), key
    assert not re.search(r"^\s+--max-epoch", text, flags=re.M)  # hyphenated spellings: accepted, not listed


def test_print_config_describes_every_key_and_round_trips(capsys, tmp_path):
    assert main(["train", "--lr", "3e-4", "--print-config"]) == 0
    text = capsys.readouterr().out
    values = yaml.safe_load(text)
    assert values == TrainConfig(lr=3e-4).to_dict()
    for key, d in TrainConfig.describe().items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
        assert f"# {d['help']}" in line, line
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert TrainConfig.from_yaml(path).lr == 3e-4


def test_bounds_come_from_the_declaration(capsys):
    assert main(["train", "--dropout", "1", "--print-config"]) == 2
    assert "key 'dropout' = 1.0: must be in [0, 1)" in capsys.readouterr().err
    assert main(["train", "--set", "optimizer=sgd", "--print-config"]) == 2
    assert "must be one of null, adam, adamw" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_no_nan_placeholder(tmp_path):
    from atomica_ray.train.console import Console

    with Console("train", tmp_path / "log", show_progress=True) as console:
        console.out = Terminal()
        console.on_event({"kind": "progress", "run": "r", "epoch": 0, "batch": 0, "total": 10})
        console.on_event({"kind": "progress", "run": "r", "epoch": 0, "batch": 1, "total": 10, "loss": None,
                          "lr": 1e-3})
        first = console.out.getvalue()
        console.on_event({"kind": "progress", "run": "r", "epoch": 0, "batch": 5, "total": 10, "loss": 0.5,
                          "lr": 1e-3})
        console.on_event({"kind": "epoch", "run": "r", "epoch": 0, "max_epoch": 2, "train_loss": 0.5,
                          "metrics": {"val_bce": 0.6}, "selection_metric": "val_bce", "best": 0.6, "seconds": 1.0})
        text = console.out.getvalue()
    assert "nan" not in text.lower() and "loss=" not in first
    assert "loss=0.5000" in text and "epoch 0 (1/2)  train_loss 0.5  val_bce 0.6  best val_bce 0.6  1.0 s" in text
