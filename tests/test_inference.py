"""embed / predict / score on the Ray Data pipeline (atomica_ray/inference): a real local Ray, real files.

One module-scoped Ray; tiny models (hidden 8, 2 layers); a demo dataset many block budgets large. Checked: rows
equal each item's batch-of-one vectors (ATOMICA numerics), a stopped run resumes without recomputing finished
shards, a run directory's best / latest checkpoint, predictions, ATOMICAScore, and the refusals that happen on the
driver before Ray starts. Joining a running cluster (RAY_ADDRESS, as `ray job submit` and `--address` do) is
tests/test_job_submit.py's second job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from atomica_ray import representations as R
from atomica_ray.cli.main import main
from atomica_ray.data.collate import collate
from atomica_ray.data.demo import write_demo_dataset
from atomica_ray.data.loader import open_dataset
from atomica_ray.inference import checkpoints, pipeline
from atomica_ray.models import ClassifierModel, PredictionModel, load_atomica, save_atomica
from atomica_ray.models.backbone import set_batch_independent

TINY = dict(atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4, n_layers=2,
            fragmentation_method="PS_300")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 demo items (~400 blocks: 10+ batches of a 40-block budget), 4 more for ATOMICAScore (one
    protein-peptide), an encoder with ATOMICA's numerics, and a run directory of a binary classifier with two
    checkpoints (epoch 0 the better by val_auprc, the binary task's selection metric)."""
    root = tmp_path_factory.mktemp("inference")
    write_demo_dataset(str(root / "data"), 12, seed=5)
    write_demo_dataset(str(root / "complexes"), 4, seed=1)  # item 2 is protein-peptide
    torch.manual_seed(0)
    encoder = PredictionModel(**TINY, unk_is_global=True, attention_mask=False, direction_eps=0.0)
    save_atomica(encoder, root / "encoder")
    run = root / "runs" / "clf"
    for epoch in (0, 1):
        ckpt = run / f"checkpoint_epoch{epoch:04d}_step{(epoch + 1) * 10:08d}"
        torch.manual_seed(epoch + 1)
        save_atomica(ClassifierModel(**TINY), ckpt / "model", epoch=epoch, step=(epoch + 1) * 10)
        (ckpt / "metrics_history.jsonl").write_text("".join(
            json.dumps({"epoch": e, "global_step": (e + 1) * 10, "val_auprc": a}) + "\n"
            for e, a in ((0, 0.80), (1, 0.65))[:epoch + 1]))
        (ckpt / "train_config.yaml").write_text(yaml.safe_dump({"task": "binary_classifier"}))
    return {"root": root, "data": str(root / "data"), "complexes": str(root / "complexes"),
            "encoder": str(root / "encoder"), "run": str(run)}


def items_alone(model_dir: str, data: str, names, pool, segment) -> dict:
    """Reference: every item alone in its batch, in this process."""
    model = load_atomica(*checkpoints.model_files(Path(model_dir))).eval()
    ds = open_dataset(data)
    out = {}
    with torch.no_grad():
        for i in range(len(ds)):
            rec = ds[i]
            out[rec["id"]] = R.compute(model, collate([rec], "plain"), names, pool=pool, segment=segment)
    return out


def test_embed_streams_resumes_and_matches_items_alone(ray_local, files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb"  # a directory of parts: finished parts stay visible
    args = ["embed", "--checkpoint", files["encoder"], "--data_path", files["data"], "--output_path", str(out),
            "--representations", "h_block,z_graph,graph_embedding,z_atom,h_interface", "--pool", "mean_std_global",
            "--segment", "1", "--shard_items", "2", "--max_n_vertex_per_gpu", "40", "--device", "cpu",
            "--workers", "1"]

    # stop the run (as Ctrl-C would) as soon as one shard is reported (the worker may finish a few more meanwhile)
    update = pipeline.Progress.update

    def stop_after_one(self, summary):
        update(self, summary)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Progress, "update", stop_after_one)
    assert main(args) == 130
    monkeypatch.setattr(pipeline.Progress, "update", update)
    assert "run the same command again to resume" in capsys.readouterr().err
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 1 <= len(finished) < 6 and not (out / "_SUCCESS").exists()

    assert main(args) == 0
    printed = capsys.readouterr().out
    done = int(re.search(r"(\d+) done, resuming", printed).group(1))  # a part may land as the first run stops
    assert len(finished) <= done < 6 and f"embed: {12 - 2 * done} items on 1 CPU worker" in printed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in finished} == finished
    assert (out / "_SUCCESS").exists() and len(list(out.glob("part-*.parquet"))) == 6

    table = pq.read_table(out)  # the directory reads as one table
    ds = open_dataset(files["data"])
    assert table.column("id").to_pylist() == [ds[i]["id"] for i in range(len(ds))]  # dataset order
    assert table.column_names == ["id", "block_id", "atom_id", "h_block", "z_graph", "graph_embedding", "z_atom",
                                  "h_interface"]
    reference = items_alone(files["encoder"], files["data"], ["h_block", "z_graph", "h_graph", "z_atom",
                                                              "h_interface"], "mean_std_global", 1)
    for row in table.to_pylist():
        want = reference[row["id"]]
        for column, name in (("h_block", "h_block"), ("z_graph", "z_graph"), ("graph_embedding", "h_graph"),
                             ("z_atom", "z_atom"), ("h_interface", "h_interface")):
            got = np.asarray(row[column], dtype=np.float32).reshape(want[name].shape)
            # another process with another thread count sums in another order: float32 rounding, relative to
            # the vectors' scale (z_atom's Gram entries reach ~10); batch independence itself is held to 1e-5
            # in tests/test_representations.py
            scale = max(1.0, float(want[name].abs().max()))
            assert np.abs(got - want[name].numpy()).max() <= 1e-4 * scale, (row["id"], column)
        assert len(row["block_id"]) == len(row["h_block"]) and len(row["atom_id"]) == len(row["z_atom"])

    # complete: never replaced without --overwrite; another command on the same parts is refused by name
    assert main(args) == 2
    assert "exists (complete)" in capsys.readouterr().err
    (out / "_SUCCESS").unlink()
    assert main([*args[:-6], "--segment", "0", *args[-4:]]) == 2
    assert "'segment': 1" in capsys.readouterr().err


def test_predict_picks_a_run_directorys_best_or_latest_checkpoint(ray_local, files, tmp_path, capsys):
    run = Path(files["run"])
    best, why = checkpoints.pick_checkpoint(run, "best")
    assert best.name.startswith("checkpoint_epoch0000") and "val_auprc (max): 0.8" in why
    assert checkpoints.pick_checkpoint(run, "latest")[0].name.startswith("checkpoint_epoch0001")

    out = tmp_path / "pred.parquet"
    assert main(["predict", "--checkpoint", str(run), "--data_path", files["data"], "--output_path", str(out),
                 "--device", "cpu", "--shard_items", "10", "--max_n_vertex_per_gpu", "150"]) == 0
    assert "checkpoint_epoch0000" in capsys.readouterr().out  # says which checkpoint it used
    table = pq.read_table(out).to_pydict()
    model = set_batch_independent(load_atomica(*checkpoints.model_files(best)).eval())
    ds = open_dataset(files["data"])
    assert table["id"] == [ds[i]["id"] for i in range(len(ds))]
    with torch.no_grad():
        for i in range(len(ds)):  # each item alone
            batch = collate([dict(ds[i], label=0.0)], "labelled")
            prob = model(batch["X"], batch["B"], batch["A"], batch["block_lengths"], batch["lengths"],
                         batch["segment_ids"], batch["label"])[1]
            assert table["prediction"][i] == pytest.approx(float(prob), abs=1e-6)
    assert table["label"] == [float(ds[i]["label"]) for i in range(len(ds))]


def test_score_writes_jsonl_and_skips_what_it_cannot_score(ray_local, files, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--checkpoint", files["encoder"], "--data_path", files["complexes"], "--output_path",
                 str(out), "--device", "cpu", "--shard_items", "2", "--max_n_vertex_per_gpu", "400"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    printed = capsys.readouterr().out
    ds = open_dataset(files["complexes"])
    peptides = [ds[i]["id"] for i in range(len(ds)) if ds[i]["modality"] == 3]  # both sides amino acids
    assert len(peptides) == 1 and "1 items skipped" in printed and peptides[0] in printed
    assert [r["id"] for r in rows] == [ds[i]["id"] for i in range(len(ds)) if ds[i]["id"] not in peptides]
    for row in rows:
        assert row["ligand_segment"] == 1 and len(row["block_idx"]) == len(row["atomica_score"]) > 0
        assert sorted(row["ranking"]) == sorted(row["block_idx"])
        assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in row["atomica_score"])


def test_bad_input_is_refused_before_ray_starts(files, tmp_path, capsys):
    base = ["--checkpoint", files["encoder"], "--data_path", files["data"], "--output_path", str(tmp_path / "e")]
    cases = [
        (["embed", *base, "--representations", "z_graph"], "z_graph need --pool"),
        (["embed", *base, "--representations", "h_residue"], "unknown representation 'h_residue'"),
        (["embed", *base, "--representations", "z_interface", "--pool", "mean_std_global"], "need --segment"),
        (["embed", "--checkpoint", str(tmp_path / "nothing"), "--data_path", files["data"], "--output_path",
          str(tmp_path / "e")], "no such directory"),
        (["predict", *base], "PredictionModel makes no per-item prediction"),
        (["score", "--checkpoint", files["run"], "--which", "latest", "--data_path", str(tmp_path / "missing"),
          "--output_path", str(tmp_path / "s.jsonl")], "no such file or dataset directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "e").exists()
