"""Probe settings x seeds as Ray Tune trials, and the summary of a finished probe run.

Every (setting, seed) pair is one trial of a grid (`tune.grid_search`), one CPU each; the standardized feature
matrices travel to the trials once through the object store (`tune.with_parameters`). A trial reports its
validation and test metrics and a checkpoint with its probabilities and weights. The driver then summarises each
setting:
  seed_mean   every metric on the test split averaged over seeds, with the 95% interval over seeds;
  ensemble    the metrics of the seed-averaged probabilities, with 95% bootstrap intervals over test rows
              (over structures, a cluster bootstrap, for block-level probes);
  vs_best     against the setting with the best validation score of its ensemble (chosen on validation only):
              the paired (cluster) bootstrap interval of the primary metric's difference, and for item-level
              binary / multiclass probes McNemar's exact test.
Written to <storage>/<name>/probe_results.json (and .md); `atomica-ray report` shows them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from atomica_ray.probe import stats
from atomica_ray.probe.training import ProbeSettings, fit_probe

RESULTS_FILE = "probe_results.json"
INPUTS_FILE = "probe.json"


def probe_trial(config: dict, data: dict) -> None:
    """One Tune trial: fit one setting with one seed; report its metrics and a checkpoint of its outputs."""
    from ray import tune

    settings = ProbeSettings(**config["setting"])
    out = fit_probe(data, data["task_type"], data["metric"], settings, int(config["seed"]))
    metrics = {}
    for split in ("valid", "test"):
        scores = stats.scores(data["task_type"], data[f"y_{split}"], out[f"{split}_prob"])
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
    metrics.update(best_epoch=out["best_epoch"], epochs_run=out["epochs_run"])
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "probabilities.npz"), valid=out["valid_prob"], test=out["test_prob"])
        import torch

        torch.save(out["state_dict"], os.path.join(tmp, "probe.pt"))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trials(data: dict, settings: list[ProbeSettings], seeds: list[int], storage_path: str, name: str):
    """Fit every setting with every seed (Tune trials); returns Tune's ResultGrid."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(probe_trial, data=data), {"cpu": 1})
    space = {"setting": tune.grid_search([s.to_dict() for s in settings]), "seed": tune.grid_search(list(seeds))}
    tuner = tune.Tuner(trainable, param_space=space,
                       tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False),
                       run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0))
    return tuner.fit()


def summarize(results, data: dict, n_boot: int = 1000) -> dict:
    """The per-setting summary of a finished probe run (see the module docstring)."""
    task_type, metric = data["task_type"], data["metric"]
    cluster = data["groups_test"] if data["block_level"] else None
    runs: dict[str, dict] = {}
    for r in results:
        if r.error is not None or r.checkpoint is None:
            continue
        setting = ProbeSettings(**r.config["setting"])
        with r.checkpoint.as_directory() as path:
            probs = np.load(os.path.join(path, "probabilities.npz"))
            valid, test = probs["valid"], probs["test"]
        entry = runs.setdefault(setting.label(), {"params": setting.to_dict(), "seeds": [], "valid": [], "test": [],
                                                  "metrics": []})
        entry["seeds"].append(int(r.config["seed"]))
        entry["valid"].append(valid)
        entry["test"].append(test)
        entry["metrics"].append(stats.scores(task_type, data["y_test"], test))
    if not runs:
        raise RuntimeError("no probe trial finished")
    rows = []
    for label, e in runs.items():
        valid_ens, test_ens = np.mean(e["valid"], axis=0), np.mean(e["test"], axis=0)
        seed_mean = {m: stats.seed_interval([x[m] for x in e["metrics"]]) for m in stats.METRICS[task_type]}
        ensemble = {m: stats.bootstrap_ci(task_type, m, data["y_test"], test_ens, n_boot, cluster=cluster)
                    for m in stats.METRICS[task_type]}
        rows.append({"setting": label, "params": e["params"], "seeds": sorted(e["seeds"]),
                     "valid_ensemble": stats.score(task_type, metric, data["y_valid"], valid_ens),
                     "seed_mean": seed_mean, "ensemble": ensemble, "_test": test_ens})
    best = max(rows, key=lambda row: row["valid_ensemble"] if np.isfinite(row["valid_ensemble"]) else -np.inf)
    for row in rows:
        row["best"] = row is best
        if row is best:
            continue
        row["vs_best"] = stats.paired_bootstrap(task_type, metric, data["y_test"], best["_test"], row["_test"],
                                                n_boot, cluster=cluster)
        if task_type != "multilabel" and cluster is None:
            row["vs_best"]["mcnemar"] = stats.mcnemar(stats.correct(task_type, data["y_test"], best["_test"]),
                                                      stats.correct(task_type, data["y_test"], row["_test"]))
    for row in rows:
        del row["_test"]
    rows.sort(key=lambda row: -row["valid_ensemble"] if np.isfinite(row["valid_ensemble"]) else np.inf)
    return {"task_type": task_type, "metric": metric, "representation": data["representation"],
            "block_level": data["block_level"], "test_split": data["test_split"], "n_boot": n_boot,
            "rows": {k: int(v) for k, v in data["n_rows"].items()}, "settings": rows}


def fmt(v) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"


def setting_cells(row: dict, m: str) -> list[str]:
    """One probe setting of the summary as text: setting, seeds, valid m (ensemble), test m as seed mean ± 95%,
    as the ensemble [95% CI], and the comparison with the setting chosen on validation (the Markdown table here
    and the report's HTML table, tune/report.py)."""
    mean, half = row["seed_mean"][m]
    value, low, high = row["ensemble"][m]
    if row["best"]:
        vs = "best (chosen on validation)"
    else:
        v = row["vs_best"]
        vs = f"{fmt(-v['delta'])} [{fmt(-v['high'])}, {fmt(-v['low'])}], p={v['p_value']:.3g}"
        if "mcnemar" in v:
            vs += f", McNemar p={v['mcnemar']['p_value']:.3g}"
    return [row["setting"], str(len(row["seeds"])), fmt(row["valid_ensemble"]), f"{fmt(mean)} ± {fmt(half)}",
            f"{fmt(value)} [{fmt(low)}, {fmt(high)}]", vs]


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (also printed by the command)."""
    m = summary["metric"]
    lines = [f"Probe of {summary['representation']} ({summary['task_type']}, "
             f"{'block' if summary['block_level'] else 'item'} level), metric {m} on the {summary['test_split']} "
             f"split; rows {summary['rows']}",
             "",
             f"| setting | seeds | valid {m} (ensemble) | test {m}: seed mean ± 95% | test {m}: ensemble [95% CI] "
             "| vs best: Δ [95% CI], p |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(setting_cells(row, m)) + " |" for row in summary["settings"]]
    return "\n".join(lines) + "\n"


def write_results(summary: dict, experiment_dir: str | Path) -> Path:
    out = Path(experiment_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(summary, indent=1))
    (out / RESULTS_FILE.replace(".json", ".md")).write_text(markdown(summary))
    return out / RESULTS_FILE


def load_results(experiment_dir: str | Path) -> dict | None:
    """The probe results in a directory, or in its `probe/` sub-directory (a probe written into a sweep)."""
    for candidate in (Path(experiment_dir) / RESULTS_FILE, Path(experiment_dir) / "probe" / RESULTS_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None
