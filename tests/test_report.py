"""The sweep report and results on sweep directories laid out as Tune writes them (result.json per trial, an
experiment state file), without Ray: rungs, categorical and log-scaled params, max-mode metrics, interrupted
sweeps, overlapping trials, the epoch convention, and the HTML page (strictly validated, and opened in a headless
Chromium when one is installed: `.ci/run` installs Debian's). The report of a real sweep is checked in
test_tune_sweep.py."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from atomica_ray.cli.main import main
from atomica_ray.tune.report import (asha_rungs, asha_rungs_figure, axis_scale, learning_curves_figure,
                                     metric_vs_param_figure, spread, write_report)
from atomica_ray.tune.space import Param
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


# ---- readable plots -------------------------------------------------------------------------------------------------
def two_alike_and_one_other(tmp_path) -> Path:
    """Trials a and b: the same suggestion (as Optuna may make twice) and, seeded on the CPU, the same curve."""
    space = {"params": {"lr": {"loguniform": [1e-5, 1e-1]}, "grad_clip": {"grid": [0.5, 1.0, 2.0, 5.0]},
                        "pred_nonlinearity": {"choice": ["relu", "gelu"]}}}
    histories = {"a": rows(1e-4, "relu", [0.60, 0.70, 0.72, 0.74]), "b": rows(1e-4, "relu", [0.60, 0.70, 0.72, 0.74]),
                 "c": rows(1e-2, "gelu", [0.55])}
    for t, history in histories.items():
        for row in history:
            row["config"]["grad_clip"] = 5.0 if t == "c" else 1.0
    return fake_sweep(tmp_path, histories, {t: "TERMINATED" for t in histories}, mode="max", space=space)


def pixels(ax, xs, ys):
    ax.figure.canvas.draw()
    return ax.transData.transform(list(zip(xs, ys)))


def test_log_axis_for_log_spaced_params():
    assert axis_scale(Param("lr", "loguniform", (1e-5, 1e-2)), [3e-5, 2e-4]) == "log"
    assert axis_scale(Param("lr", "grid", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)), [1e-5]) == "log"
    assert axis_scale(Param("grad_clip", "grid", (0.5, 1.0, 2.0, 5.0)), [1.0]) == "log"  # even on a log scale
    assert axis_scale(Param("atom_hidden_size", "choice", (16, 32, 48, 64)), [16]) == "linear"
    assert axis_scale(Param("final_lr", "grid", (1e-6, 1e-5)), [1e-6]) == "log"  # a decade apart
    assert axis_scale(Param("dropout", "uniform", (0.0, 0.3)), [0.1]) == "linear"
    assert axis_scale(Param("dropout", "grid", (0.0, 0.1, 0.2)), [0.1]) == "linear"  # 0 has no logarithm
    assert axis_scale(Param("k_neighbors", "randint", (6, 12)), [7]) == "linear"
    assert axis_scale(Param("pred_nonlinearity", "choice", ("relu", "gelu")), ["relu"]) == "category"


def test_overlapping_trials_stay_visible_in_every_plot(tmp_path):
    trials = load_trials(two_alike_and_one_other(tmp_path))
    keys = ["lr", "grad_clip", "pred_nonlinearity"]

    fig, n = learning_curves_figure(trials, "val_auc", "max", keys)
    ax = fig.axes[0]
    a, b = [line for line in ax.lines if line.get_label().startswith(("a:", "b:"))]
    assert n == 3 and a.get_marker() != b.get_marker()
    pa, pb = pixels(ax, a.get_xdata(), a.get_ydata()), pixels(ax, b.get_xdata(), b.get_ydata())
    assert min(math.dist(p, q) for p, q in zip(pa, pb)) >= 4, "two identical curves drawn on top of each other"
    assert "lr=0.0001" in a.get_label()  # the legend says which suggestion a line is

    for key, param, scale in [("lr", Param("lr", "loguniform", (1e-5, 1e-1)), "log"),
                              ("grad_clip", Param("grad_clip", "grid", (0.5, 1.0, 2.0, 5.0)), "log"),
                              ("pred_nonlinearity", Param("pred_nonlinearity", "choice", ("relu", "gelu")), "linear")]:
        fig, n = metric_vs_param_figure(trials, "val_auc", "max", key, param)
        ax = fig.axes[0]
        assert n == 3 and ax.get_xscale() == scale, key
        xy = ax.collections[0].get_offsets()
        p = pixels(ax, xy[:, 0], xy[:, 1])
        assert math.dist(p[0], p[1]) >= 5, f"{key}: trials a and b hide each other"
        alone = {"lr": 1e-2, "grad_clip": 5.0, "pred_nonlinearity": 1}[key]
        assert abs(xy[2, 0] - alone) < 1e-12, key  # a point alone stays where it is
        if key == "grad_clip":
            assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5"]  # the grid's values


def test_spread_moves_only_coinciding_points_and_keeps_groups_apart():
    assert spread([1.0, 2.0, 3.0], "linear") == [0.0, 0.0, 0.0]
    shifts = spread([1e-4, 1e-4, 1e-4, 1e-2], "log")
    moved = [math.log10(x + s) for x, s in zip([1e-4] * 3 + [1e-2], shifts)]
    assert moved[0] < moved[1] < moved[2] and abs(moved[1] + 4) < 1e-9 and shifts[3] == 0
    assert max(moved[:3]) < -3  # never halfway to the neighbouring value
    tight = spread([1.0] * 10 + [1.1], "linear")
    assert max(1.0 + s for s in tight[:10]) < 1.05


def test_one_epoch_convention_and_integer_ticks(tmp_path):
    exp = two_alike_and_one_other(tmp_path)
    trials = load_trials(exp)
    fig, _ = learning_curves_figure(trials, "val_auc", "max", [])
    ax = fig.axes[0]
    a = next(line for line in ax.lines if line.get_label() == "a")
    assert [round(x) for x in a.get_xdata()] == [0, 1, 2, 3]  # the engine's epochs, from 0, as reported
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert sorted(round(line.get_xdata()[0]) for line in stars) == [0, 3, 3]  # best epochs: c at 0, a and b at 3
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert "from 0" in ax.get_xlabel()

    fig, counts = asha_rungs_figure(trials, [1, 2, 4])
    fig.canvas.draw()
    assert counts == [3, 2, 2] and all(float(t).is_integer() for t in fig.axes[0].get_yticks())

    write_report(exp)
    page = (exp / "report" / "index.html").read_text()
    best = json.loads((exp / "best.json").read_text())
    assert best["epoch"] == 3 and "at epoch 3;" in page  # the text says what the plot and the checkpoint say


# ---- the HTML page --------------------------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
NOT_IN_P = {"div", "figure", "table", "section", "nav", "h1", "h2", "h3", "ul", "ol", "p", "pre"}
PNG = b"\x89PNG\r\n\x1a\n"


class StrictPage(HTMLParser):
    """Well-formedness beyond what browsers forgive: every element closed in order, no block inside <p>, quoted
    attributes, unique ids, and links and images that resolve (images: PNG files next to the page)."""

    def __init__(self, folder: Path):
        super().__init__(convert_charrefs=True)
        self.folder, self.stack, self.errors = folder, [], []
        self.ids, self.links, self.images, self.tables = [], [], [], []
        self.doctype = False

    def handle_decl(self, decl):
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        raw = self.get_starttag_text()
        if re.search(r"\s[\w-]+=[^\"'\s>]", re.sub(r"\"[^\"]*\"|'[^']*'", '""', raw)):
            self.errors.append(f"unquoted attribute: {raw}")
        a = dict(attrs)
        if "p" in self.stack and tag in NOT_IN_P:
            self.errors.append(f"<{tag}> inside <p>")
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "img":
            self.images.append(a)
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append(0)
        if tag in ("td", "th"):
            self.tables[-1][-1] += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.errors.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"</{tag}> of a void element")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def check(self, text: str) -> list[str]:
        self.feed(text)
        self.close()
        errors = list(self.errors)
        if not self.doctype:
            errors.append("no <!doctype html>")
        if self.stack:
            errors.append(f"unclosed: {self.stack}")
        for name in ("<html lang=", '<meta charset="utf-8">', "<title>", "<body>"):
            if name not in text:
                errors.append(f"missing {name}")
        errors += [f"duplicate id {i}" for i in {i for i in self.ids if self.ids.count(i) > 1}]
        errors += [f"link to a missing #{h[1:]}" for h in self.links if h.startswith("#") and h[1:] not in self.ids]
        for img in self.images:
            path = self.folder / unescape(img.get("src", ""))
            if not img.get("alt"):
                errors.append(f"image without alt text: {img}")
            if not path.is_file() or path.read_bytes()[:8] != PNG:
                errors.append(f"image {img.get('src')}: not a PNG file next to the page")
        errors += [f"table rows of different widths: {t}" for t in self.tables if len(set(t)) != 1]
        return errors


def test_html_check_finds_broken_pages(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG + b"rest")
    good = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head><body>'
            '<a href="#x">x</a><p id="x">t</p><img src="a.png" alt="a"><table><tr><th>h</th></tr><tr><td>1</td></tr>'
            '</table></body></html>')
    assert StrictPage(tmp_path).check(good) == []
    for broken, message in [(good.replace("</p>", ""), "closes <p>"), (good.replace('alt="a"', ""), "alt text"),
                            (good.replace("a.png", "b.png"), "not a PNG"), (good.replace("<td>1</td>", ""), "widths"),
                            (good.replace('href="#x"', 'href="#y"'), "missing #y"),
                            (good.replace("<p id", "<p><table></table><p id"), "inside <p>"),
                            (good.replace('"en"', "en"), "unquoted")]:
        assert any(message in e for e in StrictPage(tmp_path).check(broken)), message


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    exp = two_alike_and_one_other(tmp_path_factory.mktemp("report"))
    write_report(exp)
    return exp / "report" / "index.html"


def test_report_page_is_strictly_valid(report_page):
    text = report_page.read_text()
    assert StrictPage(report_page.parent).check(text) == []
    for section in ("overview", "learning-curves", "hyperparameters", "asha", "trials"):
        assert f'<section id="{section}">' in text and f'href="#{section}"' in text


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var table = document.querySelector("#trials table");
  document.body.setAttribute("data-check", JSON.stringify({
    images: Array.from(document.images).map(function (i) {
      return [i.getAttribute("src"), i.complete && i.naturalWidth > 0, Math.round(i.getBoundingClientRect().width)];
    }),
    rows: document.querySelectorAll("#trials tbody tr").length,
    cells: Array.from(document.querySelectorAll("#trials tbody tr:first-child td")).map(function (c) {
      return c.textContent; }),
    tableHeight: table ? table.getBoundingClientRect().height : 0}));
});
</script>"""


def test_report_page_renders_in_a_headless_browser(report_page, tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it): the page "
                    "was checked by test_report_page_is_strictly_valid only")
    # a copy of the page next to it (so its images resolve alike) that records, once loaded, what the browser shows
    probe = report_page.with_name("browser-check.html")
    probe.write_text(report_page.read_text().replace("</body>", LOAD_CHECK + "</body>"))
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,2000", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=180)
    probe.unlink()
    found = re.search(r'data-check="([^"]*)"', out.stdout)
    assert out.returncode == 0 and found, f"{browser} did not load the page: {out.stderr[-2000:]}"
    shown = json.loads(unescape(found.group(1)))
    names = ["learning_curves.png", "metric_vs_lr.png", "metric_vs_grad_clip.png", "metric_vs_pred_nonlinearity.png",
             "asha_rungs.png"]
    assert [src for src, _, _ in shown["images"]] == names
    assert all(loaded and width > 100 for _, loaded, width in shown["images"]), shown["images"]
    assert shown["rows"] == 3 and shown["tableHeight"] > 30
    assert shown["cells"][:3] == ["a", "TERMINATED", "4"]
