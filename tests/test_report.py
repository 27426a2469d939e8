"""The sweep report and results on sweep directories laid out as Tune writes them (result.json per trial, an
experiment state file), without Ray: rungs, categorical and log-scaled params, max-mode metrics, interrupted
sweeps. The report of a real sweep is checked in test_tune_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atomica_ray.cli.main import main
from atomica_ray.tune.report import asha_rungs, write_report
from atomica_ray.tune.results import load_trials, summarize
from atomica_ray.tune.sweep import SweepSettings


def fake_sweep(root: Path, histories: dict[str, list[dict]], statuses: dict[str, str] | None, *, mode="min",
               scheduler="asha", space=None) -> Path:
    """A sweep directory: sweep.json, one Tune trial dir per trial with result.json, and (optionally) Tune's
    experiment state."""
    space = space or {"params": {"lr": {"loguniform": [1e-5, 1e-1]}, "pred_nonlinearity": {"choice": ["relu", "gelu"]}}}
    settings = SweepSettings(name="s", storage_path=str(root), base_config={"task": "binary_classifier",
                             "max_epoch": 4}, space=space, space_path="space.yaml", num_samples=len(histories),
                             scheduler=scheduler, search="optuna", metric="val_auc", mode=mode,
                             asha={"max_t": 4, "grace_period": 1, "reduction_factor": 2})
    settings.save()
    exp = root / "s"
    trial_data = []
    for i, (trial_id, rows) in enumerate(histories.items()):
        d = exp / f"atomica_trial_{trial_id}_{i}"
        d.mkdir(parents=True)
        lines = [json.dumps({**row, "trial_id": trial_id, "training_iteration": k + 1}) for k, row in enumerate(rows)]
        (d / "result.json").write_text("\n".join(lines) + "\n")
        trial_data.append([json.dumps({"trial_id": trial_id, "status": (statuses or {}).get(trial_id, "TERMINATED"),
                                       "relative_logdir": d.name}), "{}"])
    if statuses is not None:
        (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return exp


def rows(lr, act, values, ckpt_root: Path | None = None, trial=""):
    out = []
    for e, v in enumerate(values):
        row = {"epoch": e, "val_auc": v, "config": {"lr": lr, "pred_nonlinearity": act}}
        if ckpt_root is not None:
            ck = ckpt_root / trial / f"checkpoint_epoch{e:04d}"
            (ck / "model").mkdir(parents=True)
            (ck / "model" / "config.json").write_text(json.dumps({"model_type": "ClassifierModel", "epoch": e}))
            (ck / "model" / "model.pt").write_bytes(b"w")
            row["checkpoint_path"] = str(ck)
        out.append(row)
    return out


def test_asha_rungs_follow_grace_and_reduction_factor():
    def s(max_t, grace, rf):
        return SweepSettings(name="", storage_path="", base_config={}, space={}, space_path="", num_samples=1,
                             asha={"max_t": max_t, "grace_period": grace, "reduction_factor": rf})

    assert asha_rungs(s(4, 1, 2)) == [1, 2, 4]
    assert asha_rungs(s(10, 1, 3)) == [1, 3, 9, 10]
    assert asha_rungs(s(8, 2, 2)) == [2, 4, 8]


def test_report_draws_every_trial_and_best_follows_the_mode(tmp_path):
    ckpts = tmp_path / "s" / "trials"
    exp = fake_sweep(tmp_path, {
        "a": rows(1e-4, "relu", [0.60, 0.70, 0.72, 0.74], ckpts, "a"),
        "b": rows(1e-2, "gelu", [0.55], ckpts, "b"),
        "c": rows(1e-3, "relu", [0.65, 0.81], ckpts, "c"),
    }, {"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"}, mode="max")
    drawn = write_report(exp)
    assert drawn["figures"] == {"learning_curves.png": 3, "metric_vs_lr.png": 3,
                                "metric_vs_pred_nonlinearity.png": 3, "asha_rungs.png": [3, 2, 1]}
    page = (exp / "report" / "index.html").read_text()
    assert all(f"<td>{t}</td>" in page for t in "abc")
    best = json.loads((exp / "best.json").read_text())
    assert (best["trial_id"], best["value"], best["epoch"]) == ("c", 0.81, 1)  # mode max: the highest
    assert json.loads((exp / "best_model" / "config.json").read_text())["epoch"] == 1  # that epoch's export
    table = (exp / "trials.csv").read_text().splitlines()
    assert table[0] == "trial_id,status,epochs,stopped_early,best_val_auc,last_val_auc,lr,pred_nonlinearity"
    assert table[2].startswith("b,TERMINATED,1,True,0.55,0.55,0.01,gelu")


def test_interrupted_sweep_reports_what_it_has(tmp_path, capsys):
    """No experiment state (the driver died before writing one), a trial without reports, a cut last line."""
    exp = fake_sweep(tmp_path, {"a": rows(1e-4, "relu", [0.6, float("nan"), 0.7]), "b": []}, None)
    with open(next(exp.glob("atomica_trial_a_*/result.json")), "a") as f:
        f.write('{"epoch": 3, "val_a')  # a line cut by SIGKILL
    trials = load_trials(exp)
    assert [(t.trial_id, t.status, t.epochs) for t in trials] == [("a", "UNKNOWN", 3)]
    assert main(["report", str(exp)]) == 0
    assert "1 trials" in capsys.readouterr().out
    best = summarize(exp)
    assert best["value"] == 0.6 and best["checkpoint_path"] is None and best["export_dir"] is None


def test_report_of_a_missing_sweep_fails_clearly(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--storage-path", str(tmp_path)]) == 2
    assert "sweep.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", ["pbt", "fifo"])
def test_no_rung_plot_without_asha(tmp_path, scheduler):
    exp = fake_sweep(tmp_path, {"a": rows(1e-4, "relu", [0.6, 0.7])}, {"a": "TERMINATED"}, scheduler=scheduler)
    drawn = write_report(exp)
    assert "asha_rungs.png" not in drawn["figures"] and not (exp / "report" / "asha_rungs.png").exists()


def test_statuses_come_from_the_newest_session(tmp_path):
    """A resumed sweep has one experiment state per session; Tune's final sync rewrites them all, so the newest is
    found by the session timestamp in the name, not by modification time."""
    import os

    exp = fake_sweep(tmp_path, {"a": rows(1e-4, "relu", [0.6])}, {"a": "RUNNING"})
    newer = exp / "experiment_state-2026-01-02_00-00-00.json"
    newer.write_text(json.dumps({"trial_data": [[json.dumps({"trial_id": "a", "status": "TERMINATED"}), "{}"]]}))
    old = exp / "experiment_state-2026-01-01_00-00-00.json"
    os.utime(newer, (1, 1))  # the newer session's file now looks older
    assert os.path.getmtime(old) > os.path.getmtime(newer)
    assert [t.status for t in load_trials(exp)] == ["TERMINATED"]
