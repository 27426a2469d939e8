"""Real sweeps through the `atomica-ray tune` command (subprocesses, each with its own local Ray), on demo data with a
tiny model.

The ASHA + Optuna sweep (6 trials, 2 CPUs: two one-worker trials at a time, their drivers taking a fraction of a
CPU) is also the crash-recovery sweep, to keep the suite short: its driver is SIGKILLed once two trials have
finished, then `--resume` completes it. The tests check the console (our lines, "6 trials, 2 at a time"), that the
sweep finished with trials stopped early and that a stopped trial trained no epoch after the scheduler's decision,
that the trials finished before the kill were not run again and no temporary checkpoint copy was left, the results
(best config, checkpoint, ATOMICA export, table) and the report. A second sweep checks PBT; a third, Ctrl-C.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from atomica_ray.tune.results import load_trials, trial_statuses

pytestmark = pytest.mark.slow

MAX_EPOCH = 4
N_TRIALS = 6


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "atomica_ray.cli.main", "tune", *args]


def run_config(tmp: Path, data: dict, **overrides) -> Path:
    cfg = {
        "task": "PDBBind", "train_set": data["train"], "valid_set": data["valid"], "max_epoch": MAX_EPOCH,
        "fragmentation_method": "PS_300", "atom_hidden_size": 8, "block_hidden_size": 8, "edge_size": 8,
        "n_layers": 1, "k_neighbors": 4, "max_n_vertex_per_gpu": 400, "grad_clip": 1.0, "tensorboard": False,
        **overrides,
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def finished(experiment: Path) -> list[str]:
    try:
        statuses = trial_statuses(experiment)
    except (json.JSONDecodeError, OSError):  # a state file being replaced
        return []
    return sorted(t for t, (status, _) in statuses.items() if status == "TERMINATED")


def leftovers(pgid: int, timeout: float = 120) -> list[int]:
    """The processes of a killed driver's group still running after `timeout` (its local Ray should follow it)."""
    def members():
        out = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
            except OSError:
                continue
        return out

    end = time.time() + timeout
    while members() and time.time() < end:
        time.sleep(1)
    return members()


def kill_group(proc: subprocess.Popen) -> None:
    """Clean up whatever the sweep process started (its own session) that is still running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from atomica_ray.data.demo import write_demo_splits

    return write_demo_splits(str(tmp_path_factory.mktemp("demo")), n_train=48, n_valid=16, seed=0)


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, data):
    """A 6-trial ASHA + Optuna sweep, killed after two finished trials and resumed."""
    tmp = tmp_path_factory.mktemp("asha")
    config = run_config(tmp, data)
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr": {"loguniform": [1.0e-6, 1.0e-2]}},  # 4 decades: trials clearly differ
        "asha": {"grace_period": 1, "reduction_factor": 2},  # max_t = max_epoch = 4
    }))
    storage = tmp / "runs"
    experiment = storage / "asha"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--storage-path", str(storage), "--name", "asha", "--num-cpus", "2"]
    copies = set(glob.glob("/tmp/atomica-ckpt-*"))
    with open(tmp / "first.log", "w") as log:
        first = subprocess.Popen(
            tune_cmd("--config", str(config), "--space", str(space), "--num-samples", str(N_TRIALS),
                     "--scheduler", "asha", "--search", "optuna", *args),
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            done_before = wait_for(lambda: (f := finished(experiment)) and len(f) >= 2 and f, 1500,
                                   "two finished trials", first)
            # the finished trials as they were when the driver died
            before = {t.trial_id: t.history for t in load_trials(experiment) if t.trial_id in done_before}
            runs_before = {t: sorted(p.name for p in (experiment / "trials").glob(f"{t}*/checkpoint_*"))
                           for t in done_before}
            first.send_signal(signal.SIGKILL)  # the driver dies mid-sweep
            first.wait(60)
            orphans = leftovers(first.pid)
        finally:
            kill_group(first)
    assert len(done_before) < N_TRIALS, "the sweep finished before it could be interrupted"
    with open(tmp / "resume.log", "w") as log:
        resumed = subprocess.run(tune_cmd("--resume", "asha", *args), stdout=log, stderr=subprocess.STDOUT,
                                 env=env, timeout=1500, start_new_session=True)
    return dict(experiment=experiment, done_before=done_before, before=before, runs_before=runs_before,
                returncode=resumed.returncode, log=(tmp / "resume.log").read_text(),
                first_log=(tmp / "first.log").read_text(), new_copies=set(glob.glob("/tmp/atomica-ckpt-*")) - copies,
                orphans=orphans)


def test_console_is_ours_two_trials_at_a_time(asha_sweep):
    first, resumed = asha_sweep["first_log"], asha_sweep["log"]
    assert f"{N_TRIALS} trials, 2 at a time (optuna search, asha scheduler, val_rmse min)" in first, first
    assert "(0.1 CPU per trial driver)" in first and "local Ray on 127.0.0.1" in first, first
    assert "started (lr=" in first and ": epoch 0 (1/4)  train_loss" in first, first
    lines = first.splitlines()
    started = [i for i, line in enumerate(lines) if line.endswith(")") and ": started (lr=" in line]
    ended = [i for i, line in enumerate(lines) if ": finished" in line or ": stopped by Tune" in line]
    assert len(started) >= 2 and started[1] < ended[0], first  # two trials ran at once
    for ray_chatter in ("Trial status", "TrainController", "Reporting training result", "Configuration for "
                        "experiment", "Traceback"):
        assert ray_chatter not in first + resumed, ray_chatter
    assert "sweep directory:" in resumed and "best trial:" in resumed, resumed
    assert not asha_sweep["new_copies"], asha_sweep["new_copies"]  # no temporary checkpoint copy left behind
    assert not asha_sweep["orphans"], asha_sweep["orphans"]  # the killed driver's Ray went with it


def test_trial_stopped_by_the_scheduler_trains_no_further_epoch(asha_sweep):
    experiment = asha_sweep["experiment"]
    stopped = 0
    for t in load_trials(experiment):
        train_rows = [json.loads(x) for run in (experiment / "trials").glob(f"{t.trial_id}*")
                      for x in (run / "metrics_history.jsonl").read_text().splitlines()]
        tune_epochs = {row["epoch"] for row in t.history}
        assert {row["epoch"] for row in train_rows} == tune_epochs, t.trial_id  # every epoch reached Tune
        stopped += max(tune_epochs) + 1 < MAX_EPOCH
    assert stopped, "no trial was stopped early"
    assert "stopped by Tune after epoch" in asha_sweep["first_log"] + asha_sweep["log"]


def test_asha_optuna_sweep_completes_and_stops_trials_early(asha_sweep):
    assert asha_sweep["returncode"] == 0, asha_sweep["log"][-3000:]
    settings = json.loads((asha_sweep["experiment"] / "sweep.json").read_text())
    assert (settings["scheduler"], settings["search"], settings["num_samples"]) == ("asha", "optuna", N_TRIALS)
    trials = load_trials(asha_sweep["experiment"])
    assert len(trials) == N_TRIALS and all(t.status == "TERMINATED" for t in trials)
    epochs = [t.epochs for t in trials]
    assert all(1 <= e <= MAX_EPOCH for e in epochs)
    assert min(epochs) < MAX_EPOCH, f"no trial was stopped early: {epochs}"
    assert max(epochs) == MAX_EPOCH, f"no trial ran to max_t: {epochs}"
    lrs = [t.params["lr"] for t in trials]
    assert len(set(lrs)) == N_TRIALS and all(1e-6 <= lr <= 1e-2 for lr in lrs)
    for t in trials:  # one Tune iteration per epoch, epochs in order, each trained once
        assert [row["epoch"] for row in t.history] == sorted({row["epoch"] for row in t.history})
        assert all(row["config"]["lr"] == t.params["lr"] for row in t.history)


def test_killed_sweep_resumes_without_rerunning_finished_trials(asha_sweep):
    assert asha_sweep["returncode"] == 0, asha_sweep["log"][-3000:]
    after = {t.trial_id: t.history for t in load_trials(asha_sweep["experiment"])}
    for trial_id, history in asha_sweep["before"].items():
        assert after[trial_id] == history  # no new report: the trial was not run again
        runs = sorted(p.name for p in (asha_sweep["experiment"] / "trials").glob(f"{trial_id}*/checkpoint_*"))
        assert runs == asha_sweep["runs_before"][trial_id]  # and trained no further epoch
    assert len(after) == N_TRIALS


def test_results_best_config_checkpoint_and_atomica_export(asha_sweep):
    from atomica_ray.models import load_atomica
    from atomica_ray.train.config import TrainConfig

    experiment = asha_sweep["experiment"]
    best = json.loads((experiment / "best.json").read_text())
    trials = load_trials(experiment)
    values = [v for t in trials for v in t.values("val_rmse")]
    assert best["metric"] == "val_rmse" and best["value"] == min(v for v in values if v == v)
    assert best["trial_epochs"] == sum(t.epochs for t in trials)
    assert Path(best["checkpoint_path"]).is_dir() and best["trial_id"] in best["checkpoint_path"]
    cfg = TrainConfig.from_yaml(experiment / "best_config.yaml")
    assert cfg.lr == best["params"]["lr"]
    model = load_atomica(str(Path(best["export_dir"]) / "config.json"),
                         str(next(Path(best["export_dir"]).glob("*.pt"))), model_type="AffinityPredictor")
    assert sum(p.numel() for p in model.parameters()) > 0
    table = (experiment / "trials.csv").read_text().splitlines()
    assert table[0].startswith("trial_id,status,epochs") and len(table) == 1 + N_TRIALS
    assert all(t.trial_id in (experiment / "trials.md").read_text() for t in trials)


def test_report_plots_show_every_trial(asha_sweep):
    from atomica_ray.cli.main import main
    from atomica_ray.tune.report import write_report

    experiment = asha_sweep["experiment"]
    assert main(["report", str(experiment)]) == 0
    drawn = write_report(experiment)
    report = experiment / "report"
    for name in ("learning_curves.png", "metric_vs_lr.png", "asha_rungs.png", "index.html"):
        assert (report / name).stat().st_size > 1000, name
    trial_ids = [t.trial_id for t in load_trials(experiment)]
    assert drawn["figures"]["learning_curves.png"] == N_TRIALS  # one line per trial
    assert drawn["figures"]["metric_vs_lr.png"] == N_TRIALS
    rungs = drawn["figures"]["asha_rungs.png"]
    assert drawn["rungs"] == [1, 2, 4] and rungs[0] == N_TRIALS and rungs[-1] < N_TRIALS
    page = (report / "index.html").read_text()
    assert all(t in page for t in trial_ids)
    assert all(f'src="{n}"' in page for n in ("learning_curves.png", "metric_vs_lr.png", "asha_rungs.png"))


def test_pbt_exploit_continues_from_donor_checkpoint_with_mutated_lr(tmp_path, data):
    """Two trials, PBT every epoch: the worse one clones the better one's Train checkpoint and goes on with a
    perturbed lr (x0.8 or x1.2, never resampled)."""
    config = run_config(tmp_path, data, max_epoch=3)
    space = tmp_path / "pbt.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr": {"loguniform": [1.0e-6, 1.0e-2]}},
        "pbt": {"perturbation_interval": 1, "mutate": ["lr"], "quantile_fraction": 0.5,
                "resample_probability": 0.0},
    }))
    storage = tmp_path / "runs"
    proc = subprocess.run(
        tune_cmd("--config", str(config), "--space", str(space), "--num-samples", "2", "--scheduler", "pbt",
                 "--search", "random", "--seed", "3", "--storage-path", str(storage), "--name", "pbt",
                 "--num-cpus", "4"),
        capture_output=True, text=True, timeout=1500, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = load_trials(storage / "pbt")
    assert len(trials) == 2
    exploited = [(t, i) for t in trials for i, row in enumerate(t.history) if "-from-" in row["checkpoint_path"]]
    assert exploited, "no exploitation happened"
    trial, i = exploited[0]
    row = trial.history[i]
    # the new Train run of the exploited trial started from the donor's checkpoint ...
    run_config_after = yaml.safe_load((Path(row["checkpoint_path"]) / "train_config.yaml").read_text())
    donor_ckpt = Path(run_config_after["init_checkpoint"])
    donor_id = donor_ckpt.parent.name.split("-from-")[0]
    assert donor_id != trial.trial_id and donor_id in {t.trial_id for t in trials}
    donor_cfg = yaml.safe_load((donor_ckpt / "train_config.yaml").read_text())
    donor_state = [json.loads(x) for x in (donor_ckpt / "metrics_history.jsonl").read_text().splitlines()]
    assert row["epoch"] == donor_state[-1]["epoch"] + 1  # ... continuing at the donor's next epoch ...
    assert row["global_step"] > donor_state[-1]["global_step"]
    # ... with the mutated lr applied: a perturbation of the donor's, and the lr the optimizer actually used
    ratio = row["config"]["lr"] / donor_cfg["lr"]
    assert min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-6, ratio
    assert abs(row["lr"] - row["config"]["lr"]) < 1e-12 and run_config_after["lr"] == row["config"]["lr"]


def test_ctrl_c_stops_the_sweep_and_prints_how_to_resume(tmp_path, data):
    config = run_config(tmp_path, data, max_epoch=20)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}}))
    storage = tmp_path / "runs"
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            tune_cmd("--config", str(config), "--space", str(space), "--num-samples", "2", "--scheduler", "fifo",
                     "--search", "random", "--storage-path", str(storage), "--name", "ctrlc", "--num-cpus", "2",
                     "--no-dashboard"),
            stdout=o, stderr=e, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        try:
            wait_for(lambda: ": epoch 0 (1/20)" in out.read_text(), 900, "a trial's first epoch", proc)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(300)
        finally:
            kill_group(proc)
    lines = err.read_text().strip().splitlines()
    assert code == 130, out.read_text()[-2000:] + err.read_text()[-2000:]
    assert lines[-2].startswith("interrupted: ") and "trial(s) unfinished" in lines[-2], lines
    assert lines[-1].strip() == f"atomica-ray tune --resume ctrlc --storage-path {storage}", lines
    assert "Traceback" not in out.read_text() + err.read_text() and "best trial" not in out.read_text()
