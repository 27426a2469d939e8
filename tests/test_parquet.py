"""Parquet datasets: faithful round trip, atomic writes, clear failures, schema version, CLI convert / inspect."""

import copy
import gzip
import json
import os
import pickle

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from atomica_ray.cli.main import main
from atomica_ray.data.items import DataError, validate_item
from atomica_ray.data.parquet import SCHEMA_VERSION, ParquetItems, convert

ITEMS_JSON = os.path.join(os.path.dirname(__file__), "data", "atomica_items.json")


def _variants(n: int, seed: int = 0) -> list[dict]:
    """n ATOMICA items: the reference items, moved, relabelled, some with extras (embeddings, pdb indexes)."""
    with open(ITEMS_JSON) as f:
        base = json.load(f)["items"]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        it = copy.deepcopy(base[i % len(base)])
        it["id"] = f"{it['id']}_v{i}"
        it["label"] = int(it.pop("label_multiclass"))
        it.pop("label_binary"), it.pop("label_regression")
        it["data"]["X"] = (np.array(it["data"]["X"]) + rng.normal(0, 5, 3)).tolist()
        it["modality"] = int(rng.choice([0, 1, 3]))
        if i % 3 == 0:
            nb = len(it["data"]["B"])
            it["data"]["block_embeddings"] = rng.normal(size=(nb, 5)).astype(np.float32).tolist()
            it["block_to_pdb_indexes"] = {k: f"A_{k + 10}" for k in range(1, nb) if it["data"]["B"][k] != 3}
        out.append(it)
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    items = _variants(70)
    (d / "a.pkl").write_bytes(pickle.dumps(items[:40]))
    with gzip.open(d / "b.jsonl.gz", "wb") as f:
        for it in items[40:]:  # ATOMICA's jsonl writer turns block_to_pdb_indexes keys into strings
            f.write(orjson.dumps(it, option=orjson.OPT_NON_STR_KEYS) + b"\n")
    return d, items


def test_round_trip(sources, tmp_path):
    d, items = sources
    out = tmp_path / "ds"
    meta = convert([str(d / "a.pkl"), str(d / "b.jsonl.gz")], str(out), allow_pickle=True, row_group_items=16)
    assert meta["n_items"] == 70 and meta["files"][0]["row_groups"] == [16, 16, 16, 16, 6]
    assert [s["n_items"] for s in meta["sources"]] == [40, 30]
    ds = ParquetItems(str(out))
    expected = [validate_item(it, "x", i) for i, it in enumerate(items)]
    order = np.random.default_rng(1).permutation(70)
    for rec, i in zip(ds.get(order), order):  # random access across row groups
        assert _same(rec, expected[i]), expected[i]["id"]
    assert all(_same(a, b) for a, b in zip(ds.iter_records(), expected))  # streaming
    # the size index matches the items and needs no item decoding
    assert ds.index["n_blocks"].tolist() == [len(r["B"]) for r in expected]
    assert ds.index["n_atoms"].tolist() == [len(r["A"]) for r in expected]
    assert ds.index["n_blocks0"].tolist() == [int(np.sum(r["segment_ids"] == 0)) for r in expected]
    assert ds.index["modality"].tolist() == [r["modality"] for r in expected]
    # the index is one small row group; items.parquet holds the same columns if it is missing
    assert pq.ParquetFile(out / "index.parquet").metadata.num_row_groups == 1
    os.remove(out / "index.parquet")
    assert all(np.array_equal(ParquetItems(str(out)).index[k], v) for k, v in ds.index.items())
    # fields a caller does not ask for are not read
    rec = ds.get([0], fields=())[0]
    assert "torsion_mask" not in rec and "block_embeddings" not in rec and rec["label"] == expected[0]["label"]


def test_schema_version_and_metadata(sources, tmp_path):
    d, _ = sources
    out = tmp_path / "ds"
    convert([str(d / "a.pkl")], str(out), allow_pickle=True)
    md = pq.read_schema(out / "items.parquet").metadata
    assert md[b"atomica_ray.schema_version"] == str(SCHEMA_VERSION).encode()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["label_kind"] == "int"
    assert meta["embedding_dims"] == {"block_embeddings": 5}
    meta["schema_version"] = SCHEMA_VERSION + 1
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="schema version 2 is not supported"):
        ParquetItems(str(out))


def _leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p != "src")


@pytest.mark.parametrize("damage", ["truncate_pickle", "truncate_gzip", "bad_item"])
def test_failed_conversion_leaves_nothing(sources, tmp_path, damage, capsys):
    d, items = sources
    if damage == "truncate_pickle":
        src = tmp_path / "cut.pkl"
        blob = (d / "a.pkl").read_bytes()
        src.write_bytes(blob[: int(len(blob) * 0.7)])
        message = "cut.pkl: truncated or corrupted pickle"
    elif damage == "truncate_gzip":
        src = tmp_path / "cut.jsonl.gz"
        blob = (d / "b.jsonl.gz").read_bytes()
        src.write_bytes(blob[: int(len(blob) * 0.7)])
        message = "cut.jsonl.gz: truncated or corrupted file"
    else:
        bad = copy.deepcopy(items[:40])
        bad[33]["data"]["A"] = bad[33]["data"]["A"][:-1]
        src = tmp_path / "bad.pkl"
        src.write_bytes(pickle.dumps(bad))
        message = f"bad.pkl, item 33 (id '{bad[33]['id']}'), field A"
    out = tmp_path / "out"
    before = _leftovers(tmp_path)
    rc = main(["convert", str(src), "--out", str(out), "--allow-pickle", "--row-group-items", "8"])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert _leftovers(tmp_path) == before  # no temporary directory left behind either


def test_existing_output_is_kept(sources, tmp_path, capsys):
    d, items = sources
    out = tmp_path / "ds"
    assert main(["convert", str(d / "b.jsonl.gz"), "--out", str(out)]) == 0
    first = (out / "dataset.json").read_text()
    assert main(["convert", str(d / "b.jsonl.gz"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # a failing --overwrite keeps the old dataset
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes((d / "b.jsonl.gz").read_bytes()[:200])
    assert main(["convert", str(bad), "--out", str(out), "--overwrite"]) == 2
    assert (out / "dataset.json").read_text() == first
    # a successful one replaces it
    assert main(["convert", str(d / "a.pkl"), "--out", str(out), "--overwrite", "--allow-pickle"]) == 0
    assert ParquetItems(str(out)).meta["n_items"] == 40
    assert _leftovers(tmp_path) == ["bad.jsonl.gz", "ds"]


def test_inspect(sources, tmp_path, capsys):
    d, items = sources
    out = tmp_path / "ds"
    assert main(["convert", str(d / "a.pkl"), str(d / "b.jsonl.gz"), "--out", str(out), "--allow-pickle"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    n_blocks = [len(it["data"]["B"]) for it in items]
    n_atoms = [len(it["data"]["X"]) for it in items]
    assert "items: 70" in text
    assert f"blocks per item: min {min(n_blocks)}, median {np.median(n_blocks):g}, max {max(n_blocks)}" in text
    assert f"atoms per item:  min {min(n_atoms)}, median {np.median(n_atoms):g}, max {max(n_atoms)}" in text
    labels = [it["label"] for it in items]
    assert "label: " + ", ".join(f"{v}: {labels.count(v)}" for v in sorted(set(labels))) in text
    assert main(["inspect", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 70 and stats["modality"] == {
        name: sum(it["modality"] == m for it in items) for name, m in (("PP", 0), ("PL", 1), ("Ppeptide", 3))}
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not an atomica-ray dataset" in capsys.readouterr().err
