"""`atomica-ray report RUN`: PNG plots of a sweep and one HTML page showing them.

    <sweep>/report/learning_curves.png     the selection metric per epoch, one line per trial
    <sweep>/report/metric_vs_<key>.png     each trial's best metric against each searched hyperparameter
    <sweep>/report/asha_rungs.png          how many trials reached each ASHA rung (ASHA sweeps)
    <sweep>/report/index.html              the plots, the best trial and the table of all trials
                                           (+ the probe section when `atomica-ray probe --sweep` wrote one)

A probe run's directory (`atomica-ray probe --name`) gets a page of its probe section alone.

Histories come from Tune's per-trial result.json (see results.py), so a report works on an interrupted sweep too.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from atomica_ray.tune.results import TrialRecord, load_trials, summarize, trials_table  # noqa: E402
from atomica_ray.tune.space import parse_space  # noqa: E402
from atomica_ray.tune.sweep import SweepSettings  # noqa: E402

REPORT_DIR = "report"


def asha_rungs(settings: SweepSettings) -> list[int]:
    """ASHA's milestones in epochs: grace_period * reduction_factor^k up to max_t (one bracket)."""
    a = settings.asha
    rungs, t = [], a["grace_period"]
    while t <= a["max_t"]:
        rungs.append(t)
        t *= a["reduction_factor"]
    if rungs[-1] != a["max_t"]:
        rungs.append(a["max_t"])  # the end of training: trials that ran to completion
    return rungs


def plot_learning_curves(trials: list[TrialRecord], metric: str, out: Path) -> int:
    """One line per trial that reported; returns the number of lines drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = 0
    for t in trials:
        ys = t.values(metric)
        if not ys:
            continue
        xs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(t.history)]  # epochs completed
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=t.trial_id)
        n += 1
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch ({n} trials)")
    if n <= 20:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return n


def plot_metric_vs_param(trials: list[TrialRecord], metric: str, mode: str, key: str, kind: str, out: Path) -> int:
    """Each trial's best metric against the value of one hyperparameter; returns the number of points."""
    points = [(t.params.get(key), t.best(metric, mode)[0]) for t in trials]
    points = [(x, y) for x, y in points if x is not None and not math.isnan(y)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
    if numeric:
        ax.scatter([x for x, _ in points], [y for _, y in points], s=24)
        if kind == "loguniform" or (points and min(x for x, _ in points) > 0 and kind in ("grid", "choice")
                                    and max(x for x, _ in points) / min(x for x, _ in points) >= 100):
            ax.set_xscale("log")
    else:  # categories (strings, booleans, None)
        labels = sorted({str(x) for x, _ in points})
        ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points], s=24)
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"best {metric} vs {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(points)


def plot_asha_rungs(trials: list[TrialRecord], rungs: list[int], out: Path) -> list[int]:
    """Bars: trials that trained at least `rung` epochs; returns the counts."""
    counts = [sum(t.epochs >= r for t in trials) for r in rungs]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([str(r) for r in rungs], counts, color="tab:blue")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.set_xlabel("rung (epochs)")
    ax.set_ylabel("trials reaching it")
    ax.set_title(f"ASHA survivors ({len(trials)} trials)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return counts


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>No trials.</p>"

    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def probe_section(experiment_dir: Path) -> str:
    """The probe results (probe/sweep.py) of a run directory as HTML: one row per probe setting, the test metric
    as seed mean ± 95% interval over seeds and as the seed ensemble with its bootstrap interval, the comparison
    with the setting chosen on validation. Empty when there are none."""
    from atomica_ray.probe.sweep import load_results

    summary = load_results(experiment_dir)
    if summary is None:
        return ""
    m = summary["metric"]

    def f(v):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    rows = []
    for row in summary["settings"]:
        mean, half = row["seed_mean"][m]
        value, low, high = row["ensemble"][m]
        if row["best"]:
            vs = "best (chosen on validation)"
        else:
            v = row["vs_best"]
            vs = f"{f(-v['delta'])} [{f(-v['high'])}, {f(-v['low'])}], p = {v['p_value']:.3g}"
            if "mcnemar" in v:
                vs += f"; McNemar p = {v['mcnemar']['p_value']:.3g}"
        rows.append({"setting": row["setting"], "seeds": len(row["seeds"]), f"valid {m}": f(row["valid_ensemble"]),
                     f"test {m} (seed mean ± 95%)": f"{f(mean)} ± {f(half)}",
                     f"test {m} (ensemble [95% CI])": f"{f(value)} [{f(low)}, {f(high)}]",
                     "Δ vs best [95% CI], p": vs})
    level = "block level: intervals resample structures" if summary["block_level"] else "item level"
    return (f"<h2>Probe</h2><p>{html.escape(summary['representation'])}, {summary['task_type']} ({level}); "
            f"metric {html.escape(m)} on the {html.escape(summary['test_split'])} split; rows "
            f"{html.escape(str(summary['rows']))}; {summary['n_boot']} bootstrap resamples</p>" + _html_table(rows))


def write_probe_report(experiment_dir: Path) -> dict:
    out = experiment_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>probe {html.escape(experiment_dir.name)}'
            f"</title></head><body><h1>Probe {html.escape(experiment_dir.name)}</h1>{probe_section(experiment_dir)}"
            "</body></html>\n")
    (out / "index.html").write_text(page)
    return {"trials": [], "figures": {}, "html": str(out / "index.html"), "probe": True}


def write_report(experiment_dir: str | Path) -> dict:
    """Write the plots and index.html; returns what was drawn (file names, line/point/bar counts)."""
    experiment_dir = Path(experiment_dir)
    if not (experiment_dir / "sweep.json").is_file() and probe_section(experiment_dir):
        return write_probe_report(experiment_dir)  # a probe run, not a sweep
    settings = SweepSettings.load(str(experiment_dir))
    space = parse_space(settings.space, settings.space_path)
    trials = load_trials(experiment_dir)
    best = summarize(experiment_dir)
    out = experiment_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict = {"trials": [t.trial_id for t in trials], "figures": {}}

    figures = []
    n = plot_learning_curves(trials, settings.metric, out / "learning_curves.png")
    drawn["figures"]["learning_curves.png"] = n
    figures.append(("learning_curves.png", f"{settings.metric} per epoch, one line per trial"))
    for key, p in space.params.items():
        name = f"metric_vs_{key}.png"
        drawn["figures"][name] = plot_metric_vs_param(trials, settings.metric, settings.mode, key, p.kind, out / name)
        figures.append((name, f"best {settings.metric} of each trial against {key}"))
    if settings.scheduler == "asha":
        rungs = asha_rungs(settings)
        drawn["figures"]["asha_rungs.png"] = plot_asha_rungs(trials, rungs, out / "asha_rungs.png")
        drawn["rungs"] = rungs
        figures.append(("asha_rungs.png", "trials that reached each ASHA rung"))

    rows = trials_table(trials, settings)
    best_html = "<p>No trial reported the metric yet.</p>"
    if best:
        best_html = (
            f"<p>Best: trial <b>{html.escape(best['trial_id'])}</b>, {html.escape(settings.metric)} = "
            f"{best['value']:.5g} at epoch {best['epoch']}; params "
            f"<code>{html.escape(str(best['params']))}</code><br>checkpoint: "
            f"<code>{html.escape(str(best['checkpoint_path']))}</code><br>ATOMICA-format export: "
            f"<code>{html.escape(str(best['export_dir']))}</code></p>"
        )
    imgs = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption>'
        f"</figure>" for name, caption in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sweep {html.escape(settings.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:0.5em}}
img{{max-width:640px}} table{{border-collapse:collapse;font-size:0.85em}}
td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>Sweep {html.escape(settings.name)}</h1>
<p>task {html.escape(str(settings.base_config.get('task')))}; metric {html.escape(settings.metric)}
({settings.mode}); scheduler {settings.scheduler}; search {settings.search}; {len(trials)} trials,
{sum(t.epochs for t in trials)} trial-epochs; space {html.escape(settings.space_path)}</p>
{best_html}
{imgs}
<h2>Trials</h2>
{_html_table(rows)}
{probe_section(experiment_dir)}
</body></html>
"""
    (out / "index.html").write_text(page)
    drawn["html"] = str(out / "index.html")
    drawn["probe"] = bool(probe_section(experiment_dir))
    return drawn
