"""`atomica-ray probe`: frozen-embedding probes over seeds and settings as Ray Tune trials, summarised with seed
intervals, bootstrap / cluster-bootstrap intervals and paired tests, shown by `atomica-ray report`.

The embeddings are written by hand in `atomica-ray embed`'s layout (columns id, graph_embedding, block_embedding,
block_id) with a known signal, so the probe's numbers can be checked against what the data hold."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomica_ray.data.vocab import GLB
from atomica_ray.probe import features as F
from atomica_ray.probe import stats
from atomica_ray.probe.training import ProbeSettings, fit_probe


def write_embeddings(path, ids, graph, blocks, block_types):
    pq.write_table(pa.table({"id": ids, "graph_embedding": [g.tolist() for g in graph],
                             "block_embedding": [b.tolist() for b in blocks],
                             "block_id": [t.tolist() for t in block_types]}), path)


def labels_table(path, ids, labels):
    pq.write_table(pa.table({"id": ids, "label": labels}), path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Three splits of items: graph embeddings whose first coordinate carries the binary label; block embeddings
    (a global block first) whose first coordinate carries the per-block label."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 60), ("valid", 30), ("test", 40)):
        ids = [f"{split}{i}" for i in range(n)]
        y = rng.integers(0, 2, n)
        graph = rng.normal(size=(n, 6)).astype(np.float32)
        graph[:, 0] += 2.0 * y
        blocks, types, block_labels = [], [], []
        for _ in range(n):
            k = int(rng.integers(4, 9))
            lab = rng.integers(0, 2, k)
            emb = rng.normal(size=(k + 1, 5)).astype(np.float32)
            emb[1:, 0] += 2.5 * lab
            blocks.append(emb)
            types.append(np.array([GLB] + [4] * k))
            block_labels.append(lab.tolist())
        write_embeddings(root / f"{split}.parquet", ids, graph, blocks, types)
        labels_table(root / f"{split}_labels.parquet", ids, y.tolist())
        labels_table(root / f"{split}_blocks.parquet", ids, block_labels)
        out[split] = {"emb": str(root / f"{split}.parquet"), "labels": str(root / f"{split}_labels.parquet"),
                      "blocks": str(root / f"{split}_blocks.parquet")}
    return out


def test_representation_names_and_block_rows(splits):
    labels = F.read_labels([splits["train"]["labels"]], block_level=False)
    for name in ("h_graph", "graph_embedding"):  # embed's name and current ATOMICA's name find one column
        split, block_level = F.load_split(splits["train"]["emb"], name, labels, "train")
        assert not block_level and split.X.shape == (60, 6)
    with pytest.raises(F.ProbeInputError, match="no column for representation 'z_graph'"):
        F.load_split(splits["train"]["emb"], "z_graph", labels, "train")
    block_labels = F.read_labels([splits["train"]["blocks"]], block_level=True)
    split, block_level = F.load_split(splits["train"]["emb"], "h_block", block_labels, "train")
    assert block_level and split.X.shape[0] == len(split.y) == len(split.groups)  # global rows left out
    bad = dict(block_labels)
    bad["train3"] = bad["train3"][:-1]
    with pytest.raises(F.ProbeInputError, match=r"item 3 \(id 'train3'\), column block_embedding: \d+ non-global "
                                                r"blocks but \d+ block labels"):
        F.load_split(splits["train"]["emb"], "h_block", bad, "train")
    del bad["train5"]
    with pytest.raises(F.ProbeInputError, match=r"item 5 \(id 'train5'\), column label: no label"):
        F.load_split(splits["train"]["emb"], "h_graph", {k: 0 for k in list(labels)[:5]}, "train")


def test_intervals_and_tests():
    rng = np.random.default_rng(1)
    # seed interval: 1.96 sd / sqrt(n)
    mean, half = stats.seed_interval([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and half == pytest.approx(1.96 * 0.1 / np.sqrt(3))
    # rows of 20 clusters of 10 identical rows: resampling rows treats them as 200 independent rows
    cluster = np.repeat(np.arange(20), 10)
    y = np.repeat(rng.integers(0, 2, 20), 10)
    p = np.clip(y * 0.3 + np.repeat(rng.random(20), 10) * 0.7, 0, 1)
    value, lo, hi = stats.bootstrap_ci("binary", "auroc", y, p, n_boot=200)
    _, clo, chi = stats.bootstrap_ci("binary", "auroc", y, p, n_boot=200, cluster=cluster)
    assert lo <= value <= hi and clo <= value <= chi
    assert (chi - clo) > 1.5 * (hi - lo)  # the cluster interval is honest about 20 independent units
    # a paired difference of identical predictions is exactly 0
    same = stats.paired_bootstrap("binary", "auprc", y, p, p, n_boot=50)
    assert same["delta"] == 0 and same["low"] == 0 and same["high"] == 0 and same["p_value"] == 1.0
    better = stats.paired_bootstrap("binary", "auprc", y, np.where(y > 0, 0.9, 0.1), 1 - p, n_boot=100)
    assert better["low"] > 0 and better["p_value"] < 0.05
    scipy_stats = pytest.importorskip("scipy.stats")
    a = rng.random(60) < 0.8
    b = rng.random(60) < 0.6
    test = stats.mcnemar(a, b)
    n = test["only_a"] + test["only_b"]
    expect = scipy_stats.binomtest(min(test["only_a"], test["only_b"]), n, 0.5).pvalue
    assert test["p_value"] == pytest.approx(expect)


def test_block_level_probe_learns_the_signal(splits):
    """A linear probe on the per-block coordinate that carries the label: high AUROC, and a cluster interval."""
    data = {}
    for s in ("train", "valid", "test"):
        labels = F.read_labels([splits[s]["blocks"]], block_level=True)
        split, _ = F.load_split(splits[s]["emb"], "block_embedding", labels, s)
        data[f"X_{s}"], data[f"y_{s}"], data[f"groups_{s}"] = split.X, split.y, split.groups
    mu, sd = F.fit_standardizer(data["X_train"])
    for s in ("train", "valid", "test"):
        data[f"X_{s}"] = F.standardize(data[f"X_{s}"], mu, sd)
    settings = ProbeSettings(head="linear", lr=3e-2, epochs=10, patience=3, batch_size=256)
    out = fit_probe(data, "binary", "auprc", settings, seed=0)
    value, lo, hi = stats.bootstrap_ci("binary", "auroc", data["y_test"], out["test_prob"], n_boot=100,
                                       cluster=data["groups_test"])
    assert value > 0.9 and lo <= value <= hi and out["best_epoch"] >= 0


@pytest.mark.slow
def test_probe_command_runs_seeds_and_settings_as_tune_trials(ray_local, splits, tmp_path):
    from atomica_ray.cli.main import main
    from atomica_ray.tune.report import write_report

    args = ["probe", "--train", splits["train"]["emb"], "--valid", splits["valid"]["emb"],
            "--test", splits["test"]["emb"], "--representation", "h_graph", "--head", "linear,mlp",
            "--hidden-dim", "16", "--lr", "1e-2", "--epochs", "30", "--patience", "5", "--batch-size", "8",
            "--seeds", "2", "--n-boot", "200",
            "--storage-path", str(tmp_path), "--name", "p"]
    for s in ("train", "valid", "test"):
        args += ["--labels", splits[s]["labels"]]
    assert main(args) == 0
    results = json.loads((tmp_path / "p" / "probe_results.json").read_text())
    assert results["task_type"] == "binary" and results["metric"] == "auprc" and not results["block_level"]
    rows = {r["params"]["head"]: r for r in results["settings"]}
    assert set(rows) == {"linear", "mlp"} and sum(r["best"] for r in rows.values()) == 1
    for row in rows.values():
        assert row["seeds"] == [0, 1]
        mean, half = row["seed_mean"]["auroc"]
        value, lo, hi = row["ensemble"]["auroc"]
        assert mean > 0.75 and half >= 0 and lo <= value <= hi  # the signal is learnt (chance: 0.5; x0 alone: 0.92)
    other = next(r for r in rows.values() if not r["best"])
    assert {"delta", "low", "high", "p_value"} <= set(other["vs_best"]) and "mcnemar" in other["vs_best"]
    page = write_report(tmp_path / "p")
    text = open(page["html"]).read()
    assert page["probe"] and "<h2>Probe</h2>" in text and "linear" in text and "seed mean" in text
    assert main(args) == 2  # results are never overwritten
