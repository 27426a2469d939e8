"""What a finished (or interrupted) sweep produced, read back from its files: no Ray needed.

Per trial, Tune's `result.json` holds every forwarded report (one JSON line per epoch, with `epoch`, the metrics,
the Train `checkpoint_path` and the trial's config at that time, which PBT may have mutated); Tune's
experiment state holds each trial's status. From these come:

    <sweep>/trials.csv, trials.md   one row per trial: id, status, epochs run, best and last metric, params
    <sweep>/best.json               the best trial, epoch, metric, params, full config, checkpoint and export paths
    <sweep>/best_config.yaml        that config, ready for `atomica-ray train --config`
    <sweep>/best_model/             the best checkpoint's model in ATOMICA's format (config.json + weights)
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from atomica_ray.tune.sweep import SweepSettings

BEST_FILE = "best.json"
BEST_MODEL_DIR = "best_model"


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # TERMINATED | ERROR | RUNNING | PENDING | PAUSED | UNKNOWN (Tune's trial status)
    history: list[dict]  # one row per report, in order
    path: str  # Tune's trial directory

    @property
    def params(self) -> dict:
        """The trial's hyperparameters as of its last report (PBT mutates them)."""
        return self.history[-1].get("config", {}) if self.history else {}

    @property
    def epochs(self) -> int:
        """Epochs this trial trained: the number of per-epoch reports."""
        return len(self.history)

    def values(self, metric: str) -> list[float]:
        return [finite(row.get(metric)) for row in self.history]

    def best(self, metric: str, mode: str) -> tuple[float, dict | None]:
        rows = [(v, row) for v, row in zip(self.values(metric), self.history) if not math.isnan(v)]
        if not rows:
            return math.nan, None
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[0])

    def last(self, metric: str) -> float:
        return self.values(metric)[-1] if self.history else math.nan


def finite(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def trial_statuses(experiment_dir: Path) -> dict[str, tuple[str, str]]:
    """trial id -> (status, trial dir name), from Tune's latest experiment state file."""
    # newest session by the timestamp in the name (a final sync rewrites older sessions' files too, so not by mtime)
    states = sorted(glob.glob(str(experiment_dir / "experiment_state-*.json")))
    if not states:
        return {}
    with open(states[-1]) as f:
        doc = json.load(f)
    out = {}
    for trial_json, _ in doc.get("trial_data", []):
        t = json.loads(trial_json)
        out[t["trial_id"]] = (t.get("status", "UNKNOWN"), t.get("relative_logdir") or "")
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a killed driver
                    continue
    return rows


def load_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of a sweep with its per-epoch history (local experiment directories)."""
    experiment_dir = Path(experiment_dir)
    statuses = trial_statuses(experiment_dir)
    trials: dict[str, TrialRecord] = {}
    for result in sorted(experiment_dir.glob("*/result.json")):
        history = _read_jsonl(result)
        trial_id = history[0]["trial_id"] if history else None
        if trial_id is None:
            continue
        status = statuses.get(trial_id, ("UNKNOWN", ""))[0]
        trials[trial_id] = TrialRecord(trial_id, status, history, str(result.parent))
    for trial_id, (status, logdir) in statuses.items():  # trials that never reported
        if trial_id not in trials:
            trials[trial_id] = TrialRecord(trial_id, status, [], str(experiment_dir / logdir))
    return sorted(trials.values(), key=lambda t: t.trial_id)


def trials_table(trials: list[TrialRecord], settings: SweepSettings) -> list[dict]:
    keys = list(settings.space.get("params", {}))
    max_epoch = settings.asha.get("max_t") or settings.base_config.get("max_epoch")
    rows = []
    for t in trials:
        best, _ = t.best(settings.metric, settings.mode)
        row = {"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs,
               "stopped_early": t.status == "TERMINATED" and t.epochs < max_epoch and settings.scheduler == "asha",
               f"best_{settings.metric}": best, f"last_{settings.metric}": t.last(settings.metric)}
        row.update({k: t.params.get(k) for k in keys})
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def write_table(rows: list[dict], experiment_dir: Path) -> None:
    if not rows:
        return
    cols = list(rows[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    (experiment_dir / "trials.csv").write_text(buf.getvalue())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    (experiment_dir / "trials.md").write_text("\n".join(lines) + "\n")


def latest_checkpoint(run_dir: Path) -> Path | None:
    runs = sorted(run_dir.parent.glob(run_dir.name + "*/checkpoint_*"), key=lambda p: p.name)
    return runs[-1] if runs else None


def summarize(experiment_dir: str | Path, export: bool = True) -> dict | None:
    """Write trials.csv/.md and best.json (+ best_config.yaml, best_model/) for a sweep; returns best.json's
    content, or None when no trial reported the metric."""
    experiment_dir = Path(experiment_dir)
    settings = SweepSettings.load(str(experiment_dir))
    trials = load_trials(experiment_dir)
    write_table(trials_table(trials, settings), experiment_dir)
    sign = 1 if settings.mode == "min" else -1
    scored = [(t, *t.best(settings.metric, settings.mode)) for t in trials]
    scored = [s for s in scored if s[2] is not None]
    if not scored:
        return None
    trial, value, row = min(scored, key=lambda s: sign * s[1])
    params = row.get("config", {})
    checkpoint = row.get("checkpoint_path")
    if checkpoint and not Path(checkpoint).is_dir():  # pruned or moved: fall back to the run's latest
        latest = latest_checkpoint(experiment_dir / "trials" / trial.trial_id)
        checkpoint = str(latest) if latest else None
    best = {
        "trial_id": trial.trial_id, "metric": settings.metric, "mode": settings.mode, "value": value,
        "epoch": row.get("epoch"), "training_iteration": row.get("training_iteration"), "params": params,
        "config": {**settings.base_config, **params}, "checkpoint_path": checkpoint, "export_dir": None,
        "n_trials": len(trials), "trial_epochs": sum(t.epochs for t in trials),
    }
    if export and checkpoint:
        model_dir = Path(checkpoint) / "model"
        if model_dir.is_dir():
            out = experiment_dir / BEST_MODEL_DIR
            tmp = experiment_dir / (BEST_MODEL_DIR + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(model_dir, tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            best["export_dir"] = str(out)
    (experiment_dir / "best_config.yaml").write_text(yaml.safe_dump(best["config"], sort_keys=False))
    (experiment_dir / BEST_FILE).write_text(json.dumps(best, indent=2))
    return best
