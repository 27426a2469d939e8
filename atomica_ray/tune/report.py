"""`atomica-ray report RUN`: PNG plots of a sweep and one HTML page showing them.

    <sweep>/report/learning_curves.png     the selection metric per epoch, one line per trial
    <sweep>/report/metric_vs_<key>.png     each trial's best metric against each searched hyperparameter
    <sweep>/report/asha_rungs.png          how many trials reached each ASHA rung (ASHA sweeps)
    <sweep>/report/index.html              the plots, the best trial and the table of all trials
                                           (+ the probe section when `atomica-ray probe --sweep` wrote one)

A probe run's directory (`atomica-ray probe --name`) gets a page of its probe section alone.

Histories come from Tune's per-trial result.json (see results.py), so a report works on an interrupted sweep too.

One convention in every plot and in the text: an epoch is the engine's `epoch` number, counted from 0 as in the
checkpoint names (`checkpoint_epoch0000_...`), `metrics_history.jsonl` and the progress bar; "epochs trained" (ASHA
rungs, the table's `epochs` column) is a count. A hyperparameter is drawn on a log axis when its distribution is
log-spaced (`loguniform`, or a `grid`/`choice` of positive numbers spaced evenly on a log scale). Trials that
overlap (Optuna may suggest the same point twice; a seeded CPU run then repeats its curve exactly) stay visible:
each trial has its own marker, and coinciding points are spread by a small offset along x. Only the drawing is
offset; the table and best.json keep the exact values.

The page is a list of sections: a section is a function `ReportContext -> Section | None`, and SECTIONS lists them
in page order, so a new kind of result (a probe, a new plot) is one more function.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from atomica_ray.tune.results import TrialRecord, load_trials, summarize, trials_table  # noqa: E402
from atomica_ray.tune.space import Param, SearchSpace, parse_space  # noqa: E402
from atomica_ray.tune.sweep import SweepSettings  # noqa: E402

REPORT_DIR = "report"
PAGE = "index.html"
DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def asha_rungs(settings: SweepSettings) -> list[int]:
    """ASHA's milestones in epochs trained: grace_period * reduction_factor^k up to max_t (one bracket)."""
    a = settings.asha
    rungs, t = [], a["grace_period"]
    while t <= a["max_t"]:
        rungs.append(t)
        t *= a["reduction_factor"]
    if rungs[-1] != a["max_t"]:
        rungs.append(a["max_t"])  # the end of training: trials that ran to completion
    return rungs


# ---- axes --------------------------------------------------------------------------------------------------------
def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def axis_scale(param: Param | None, values: list) -> str:
    """How a hyperparameter's values are drawn: "log", "linear" or "category".

    loguniform is log-spaced by definition. For a list of values (grid, choice) the author's spacing tells:
    log when the gaps between sorted values are more even on a log scale than on a linear one (1e-5, 1e-4, 1e-3;
    0.5, 1, 2, 5), or when two values span a decade or more.
    """
    if not values or not all(_is_number(x) for x in values):
        return "category"
    if param is not None and param.kind == "loguniform":
        return "log"
    if param is not None and param.kind not in ("grid", "choice"):
        return "linear"  # uniform, quniform, randint: evenly spaced in linear terms
    distinct = sorted(set(float(x) for x in (param.args if param is not None else values) if _is_number(x)))
    if len(distinct) < 2 or distinct[0] <= 0:
        return "linear"
    if len(distinct) == 2:
        return "log" if distinct[1] / distinct[0] >= 10 else "linear"

    def unevenness(xs: list[float]) -> float:  # coefficient of variation of the gaps
        gaps = [b - a for a, b in zip(xs, xs[1:])]
        mean = sum(gaps) / len(gaps)
        return math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean

    return "log" if unevenness([math.log10(x) for x in distinct]) < unevenness(distinct) else "linear"


def spread(xs: list[float], scale: str, width: float = 0.02, span: float | None = None,
           step: float | None = None) -> list[float]:
    """Offsets along x (in data units) that pull coinciding points apart; points alone keep their place.

    A group of m points at one x is spread symmetrically, `step` apart (default: `width` of the axis `span`, on a
    log axis in decades; the span defaults to that of the points), at most half the gap to the nearest other
    value divided by m, so groups never reach each other.
    """
    if not xs:
        return []
    axis = [math.log10(x) for x in xs] if scale == "log" else list(xs)
    distinct = sorted(set(axis))
    span = span or (distinct[-1] - distinct[0]) or 1.0  # one value: a decade (log), one unit (linear, category)
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    groups: dict[float, list[int]] = {}
    for i, a in enumerate(axis):
        groups.setdefault(a, []).append(i)
    moved = list(axis)
    for a, members in groups.items():
        m = len(members)
        if m == 1:
            continue
        d = step if step is not None else width * span
        if gaps:
            d = min(d, 0.5 * min(gaps) / m)
        for j, i in enumerate(members):
            moved[i] = a + (j - (m - 1) / 2) * d
    if scale == "log":
        return [10 ** b - x for b, x in zip(moved, xs)]
    return [b - a for b, a in zip(moved, axis)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def _label(t: TrialRecord, keys: list[str], width: int = 64) -> str:
    params = ", ".join(f"{k}={_fmt(t.params.get(k))}" for k in keys)
    text = f"{t.trial_id}: {params}" if params else t.trial_id
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- figures (each returns the matplotlib Figure; the caller saves and closes it) -----------------------------------
def learning_curves_figure(trials: list[TrialRecord], metric: str, mode: str,
                           keys: list[str] = ()) -> tuple[Figure, int]:
    """One line per trial that reported `metric`, against the engine's epoch (from 0); its best point starred.

    Each trial gets its own marker and a small fixed shift along x, so identical curves (a repeated suggestion)
    show as neighbouring lines instead of one.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = [t for t in trials if any(not math.isnan(v) for v in t.values(metric))]
    n = len(drawn)
    step = min(0.06, 0.4 / max(n, 1))  # epochs between neighbouring trials: all of them within +-0.2
    for i, (t, marker) in enumerate(zip(drawn, cycle(MARKERS))):
        shift = (i - (n - 1) / 2) * step
        epochs = [int(row.get("epoch", k)) for k, row in enumerate(t.history)]
        ys = t.values(metric)
        (line,) = ax.plot([e + shift for e in epochs], ys, marker=marker, ms=4, lw=1.2, alpha=0.85,
                          label=_label(t, list(keys)))
        value, row = t.best(metric, mode)
        if row is not None:
            ax.plot([epochs[t.history.index(row)] + shift], [value], marker="*", ms=11,
                    color=line.get_color(), markeredgecolor="black", markeredgewidth=0.6, zorder=3)
    ax.set_xlabel("epoch (from 0, as in checkpoint names)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch ({n} trials; ★ best epoch of each)")
    if 0 < n <= 20:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    return fig, n


def metric_vs_param_figure(trials: list[TrialRecord], metric: str, mode: str, key: str,
                           param: Param | None) -> tuple[Figure, int]:
    """Each trial's best metric against the value of one hyperparameter (PBT: the value of its last report)."""
    points = [(t.params.get(key), t.best(metric, mode)[0]) for t in trials]
    points = [(x, y) for x, y in points if x is not None and not math.isnan(y)]
    scale = axis_scale(param, [x for x, _ in points])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if scale == "category":
        order = list(param.args) if param is not None and param.enumerable else []
        labels = [str(v) for v in order] + sorted({str(x) for x, _ in points} - {str(v) for v in order})
        xs = [float(labels.index(str(x))) for x, _ in points]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        xs = [float(x) for x, _ in points]
        ax.set_xscale(scale)
        if param is not None and param.kind in ("randint", "quniform") and all(isinstance(a, int) for a in param.args):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if param is not None and param.enumerable:  # the searched values, written as they are in the space
            values = sorted(param.args, key=float)
            ax.set_xticks([float(v) for v in values], [_fmt(v) for v in values])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        elif param is not None:
            # the searched range, not only the sampled part of it (PBT may have moved a value beyond it)
            lo, hi = min([param.args[0], *xs]), max([param.args[1], *xs])
            pad = (hi / lo) ** 0.04 if scale == "log" else 0.04 * (hi - lo)
            ax.set_xlim(lo / pad, hi * pad) if scale == "log" else ax.set_xlim(lo - pad, hi + pad)
    if scale == "category":
        shifts = spread(xs, "linear", step=0.08)
    else:  # offsets relative to the drawn range: the searched one, or the grid's values
        ends = [*xs, *(float(v) for v in (param.args if param.enumerable else param.args[:2]))] if param else xs
        lo, hi = (min(ends), max(ends)) if ends else (1.0, 1.0)
        shifts = spread(xs, scale, span=math.log10(hi / lo) if scale == "log" else hi - lo)
    ax.scatter([x + s for x, s in zip(xs, shifts)], [y for _, y in points], s=36, alpha=0.7,
               edgecolors="black", linewidths=0.6)
    ax.set_xlabel(f"{key} ({param.kind}, {scale} axis)" if param is not None else key)
    ax.set_ylabel(f"best {metric} ({mode})")
    ax.set_title(f"best {metric} vs {key} ({len(points)} trials)")
    ax.grid(alpha=0.3)
    return fig, len(points)


def asha_rungs_figure(trials: list[TrialRecord], rungs: list[int]) -> tuple[Figure, list[int]]:
    """Bars: trials that trained at least `rung` epochs; returns the counts."""
    counts = [sum(t.epochs >= r for t in trials) for r in rungs]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([str(r) for r in rungs], counts, color="tab:blue")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylim(0, max(counts + [1]) * 1.15)
    ax.set_xlabel("rung: epochs trained")
    ax.set_ylabel("trials that trained that many epochs")
    ax.set_title(f"ASHA survivors ({len(trials)} trials)")
    return fig, counts


# ---- the page --------------------------------------------------------------------------------------------------------
@dataclass
class ReportContext:
    """What every section may read, and where it writes its figures."""

    experiment_dir: Path
    out: Path  # <sweep>/report
    settings: SweepSettings
    space: SearchSpace
    trials: list[TrialRecord]
    best: dict | None
    drawn: dict = field(default_factory=lambda: {"figures": {}})  # returned by write_report

    def save(self, fig: Figure, name: str, what) -> str:
        """Write the figure as out/name, record `what` it shows (a count) and return the name."""
        fig.savefig(self.out / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        self.drawn["figures"][name] = what
        return name


@dataclass
class Section:
    id: str  # the HTML id (an anchor)
    title: str
    body: str = ""  # HTML, already escaped
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name in report/, caption)


def overview_section(ctx: ReportContext) -> Section:
    s, best = ctx.settings, ctx.best
    e = html.escape
    body = (f"<p>task {e(str(s.base_config.get('task')))}; metric {e(s.metric)} ({e(s.mode)}); scheduler "
            f"{e(s.scheduler)}; search {e(s.search)}; {len(ctx.trials)} trials, "
            f"{sum(t.epochs for t in ctx.trials)} trial-epochs; space {e(s.space_path)}. Epochs are counted from 0, "
            "as in checkpoint names.</p>")
    if best:
        body += (f"<p>Best: trial <b>{e(best['trial_id'])}</b>, {e(s.metric)} = {best['value']:.5g} at epoch "
                 f"{best['epoch']}; params <code>{e(str(best['params']))}</code><br>checkpoint: "
                 f"<code>{e(str(best['checkpoint_path']))}</code><br>ATOMICA-format export: "
                 f"<code>{e(str(best['export_dir']))}</code></p>")
    else:
        body += "<p>No trial reported the metric yet.</p>"
    return Section("overview", "Overview", body)


def learning_curves_section(ctx: ReportContext) -> Section:
    metric = ctx.settings.metric
    fig, n = learning_curves_figure(ctx.trials, metric, ctx.settings.mode, list(ctx.space.params))
    name = ctx.save(fig, "learning_curves.png", n)
    return Section("learning-curves", "Learning curves",
                   figures=[(name, f"{metric} per epoch, one line per trial")])


def hyperparameters_section(ctx: ReportContext) -> Section | None:
    metric, figures = ctx.settings.metric, []
    for key, p in ctx.space.params.items():
        fig, n = metric_vs_param_figure(ctx.trials, metric, ctx.settings.mode, key, p)
        figures.append((ctx.save(fig, f"metric_vs_{key}.png", n), f"best {metric} of each trial against {key}"))
    return Section("hyperparameters", "Metric against each hyperparameter", figures=figures) if figures else None


def asha_section(ctx: ReportContext) -> Section | None:
    if ctx.settings.scheduler != "asha":
        return None
    rungs = asha_rungs(ctx.settings)
    fig, counts = asha_rungs_figure(ctx.trials, rungs)
    ctx.drawn["rungs"] = rungs
    return Section("asha", "ASHA rungs", figures=[(ctx.save(fig, "asha_rungs.png", counts),
                                                   "trials that reached each ASHA rung (epochs trained)")])


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>No trials.</p>"

    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f'<th scope="col">{html.escape(c)}</th>' for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def trials_section(ctx: ReportContext) -> Section:
    return Section("trials", "Trials", "<p>epochs: epochs trained. Also in trials.csv and trials.md.</p>\n"
                   + html_table(trials_table(ctx.trials, ctx.settings)))


def probe_html(experiment_dir: Path) -> str | None:
    """The probe results (probe/sweep.py) of a run directory as HTML: one row per probe setting, the test metric
    as seed mean ± 95% interval over seeds and as the seed ensemble with its bootstrap interval, the comparison
    with the setting chosen on validation. None when there are none."""
    from atomica_ray.probe.sweep import load_results, setting_cells

    summary = load_results(experiment_dir)
    if summary is None:
        return None
    m = summary["metric"]
    columns = ["setting", "seeds", f"valid {m}", f"test {m} (seed mean ± 95%)", f"test {m} (ensemble [95% CI])",
               "Δ vs best [95% CI], p"]
    rows = [dict(zip(columns, setting_cells(row, m))) for row in summary["settings"]]
    level = "block level: intervals resample structures" if summary["block_level"] else "item level"
    return (f"<p>{html.escape(summary['representation'])}, {summary['task_type']} ({level}); "
            f"metric {html.escape(m)} on the {html.escape(summary['test_split'])} split; rows "
            f"{html.escape(str(summary['rows']))}; {summary['n_boot']} bootstrap resamples</p>\n" + html_table(rows))


def probe_section(ctx: ReportContext) -> Section | None:
    body = probe_html(ctx.experiment_dir)
    ctx.drawn["probe"] = body is not None
    return None if body is None else Section("probe", "Probe", body)


SECTIONS: list[Callable[[ReportContext], Section | None]] = [
    overview_section, learning_curves_section, hyperparameters_section, asha_section, trials_section,
    probe_section,
]


def render_page(title: str, sections: list[Section]) -> str:
    def figure(name: str, caption: str) -> str:
        c = html.escape(caption)
        return f'<figure><img src="{html.escape(name)}" alt="{c}"><figcaption>{c}</figcaption></figure>'

    parts = []
    for s in sections:
        figs = "\n".join(figure(n, c) for n, c in s.figures)
        parts.append(f'<section id="{html.escape(s.id)}">\n<h2>{html.escape(s.title)}</h2>\n{s.body}\n{figs}\n'
                     "</section>")
    nav = " · ".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in sections)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{font-family: sans-serif; margin: 2em}}
figure {{display: inline-block; margin: 0.5em; vertical-align: top}}
img {{max-width: 100%; height: auto}}
table {{border-collapse: collapse; font-size: 0.85em}}
td, th {{border: 1px solid #ccc; padding: 2px 6px}}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<nav>{nav}</nav>
{chr(10).join(parts)}
</body>
</html>
"""


def write_probe_report(experiment_dir: Path) -> dict:
    """The page of a probe run's directory (`atomica-ray probe --name`): its probe section alone."""
    out = experiment_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / PAGE).write_text(render_page(f"Probe {experiment_dir.name}",
                                        [Section("probe", "Probe", probe_html(experiment_dir))]))
    return {"trials": [], "figures": {}, "html": str(out / PAGE), "probe": True}


def write_report(experiment_dir: str | Path, sections=None) -> dict:
    """Write the plots and index.html; returns what was drawn (file names, line/point/bar counts)."""
    experiment_dir = Path(experiment_dir)
    if not (experiment_dir / "sweep.json").is_file() and probe_html(experiment_dir) is not None:
        return write_probe_report(experiment_dir)  # a probe run, not a sweep
    settings = SweepSettings.load(str(experiment_dir))
    out = experiment_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(experiment_dir, out, settings, parse_space(settings.space, settings.space_path),
                        load_trials(experiment_dir), summarize(experiment_dir))
    ctx.drawn["trials"] = [t.trial_id for t in ctx.trials]
    built = [s for s in (make(ctx) for make in (sections or SECTIONS)) if s is not None]
    (out / PAGE).write_text(render_page(f"Sweep {settings.name}", built))
    ctx.drawn["html"] = str(out / PAGE)
    return ctx.drawn
