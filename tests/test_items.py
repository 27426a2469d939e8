"""Readers and validation of ATOMICA item files: every bad input names the file, the item and the field."""

import copy
import gzip
import json
import os
import pickle

import numpy as np
import orjson
import pytest

from atomica_ray.data.items import DataError, iter_raw_items, read_records, validate_item

ITEMS_JSON = os.path.join(os.path.dirname(__file__), "data", "atomica_items.json")


@pytest.fixture(scope="module")
def raw_items():
    with open(ITEMS_JSON) as f:
        items = json.load(f)["items"]
    for it in items:
        it["label"] = it.pop("label_binary")
    return items


def test_valid_items_become_records(raw_items):
    for i, raw in enumerate(raw_items):
        rec = validate_item(raw, "items.json", i)
        n_atoms, n_blocks = len(raw["data"]["X"]), len(raw["data"]["B"])
        assert rec["X"].shape == (n_atoms, 3) and rec["X"].dtype == np.float32
        assert np.allclose(rec["X"], np.array(raw["data"]["X"]), atol=1e-5)
        for k in ("B", "block_lengths", "segment_ids"):
            assert rec[k].dtype == np.int64 and rec[k].tolist() == raw["data"][k]
        assert rec["A"].tolist() == raw["data"]["A"]
        assert rec["affinity"] == raw["affinity"]["neglog_aff"] and rec["label"] == raw["label"]
        tm = rec["torsion_mask"]
        assert tm[0]["type"] == 0 and len(tm[0]["edges"]) == int(np.sum(rec["segment_ids"] == 0)) - 1
        assert all(e is None or (e.dtype == np.int64 and e.shape[1] == 2) for e in tm[0]["edges"])
        if tm[1]["type"] == 1:  # the JSON file spells the type as a string; records hold ints
            n_lig = int(rec["block_lengths"][rec["segment_ids"] == 1].sum()) - 1
            assert tm[1]["mask_rotate"].shape == (len(tm[1]["edges"]), n_lig)
            assert tm[1]["mask_rotate"].dtype == bool


def _broken(raw, path, value):
    bad = copy.deepcopy(raw)
    target = bad
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return bad


_DELETE = object()

BROKEN = [
    (("data", "X"), lambda x: x[:-1], "field A"),  # len(X) != len(A)
    (("data", "A"), lambda a: a + [6], "field A"),
    (("data", "block_lengths"), lambda b: [b[0] + 1] + b[1:], "field block_lengths"),
    (("data", "segment_ids"), lambda s: s[:-1], "field segment_ids"),
    (("data", "B"), lambda b: [b[0], 999] + b[2:], "unknown block type index 999"),
    (("data", "A"), lambda a: [a[0], -1] + a[2:], "unknown atom type index -1"),
    (("data", "X"), lambda x: [x[0], [float("nan"), 0.0, 0.0]] + x[2:], "non-finite coordinate at atom 1"),
    (("data", "B"), [], "no blocks"),
    (("data", "X"), _DELETE, "field X: missing"),
    (("data", "segment_ids"), lambda s: [2] * len(s), "field segment_ids"),
    (("data", "torsion_mask"), lambda t: [t[0], {"type": 1, "edges": [[0, 1]], "mask_rotate": [[True]]}],
     "field torsion_mask[1].mask_rotate"),
    (("data", "torsion_mask"), lambda t: [{**t[0], "edges": t[0]["edges"][:-1]}, t[1]], "field torsion_mask[0]"),
    (("modality",), "XYZ", "field modality"),
    (("label",), "high", "field label"),
]


@pytest.mark.parametrize("path,value,message", BROKEN, ids=[m for *_, m in BROKEN])
def test_invalid_items_are_named(raw_items, path, value, message):
    bad = _broken(raw_items[2], path, value)
    with pytest.raises(DataError) as err:
        validate_item(bad, "set.pkl", 2)
    text = str(err.value)
    assert text.startswith("set.pkl, item 2 (id 'synthetic_0_2_Ppep')"), text
    assert message in text, text


def test_pickle_needs_opt_in(tmp_path, raw_items):
    path = tmp_path / "items.pkl"
    path.write_bytes(pickle.dumps(raw_items))
    with pytest.raises(DataError, match="refusing to unpickle.*--allow-pickle"):
        list(iter_raw_items(str(path)))
    assert [r["id"] for r in read_records(str(path), allow_pickle=True)] == [it["id"] for it in raw_items]


def test_jsonl_gz_and_its_errors(tmp_path, raw_items):
    path = tmp_path / "items.jsonl.gz"
    with gzip.open(path, "wb") as f:
        for it in raw_items:
            f.write(orjson.dumps(it) + b"\n")
    assert len(list(read_records(str(path)))) == len(raw_items)

    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated.jsonl.gz: truncated or corrupted"):
        list(read_records(str(truncated)))

    garbled = tmp_path / "garbled.jsonl.gz"
    with gzip.open(garbled, "wb") as f:
        f.write(orjson.dumps(raw_items[0]) + b"\n{not json\n")
    with pytest.raises(DataError, match="garbled.jsonl.gz, line 2: not valid JSON"):
        list(read_records(str(garbled)))


def test_corrupted_pickle(tmp_path, raw_items):
    blob = pickle.dumps(raw_items)
    (tmp_path / "cut.pkl").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(DataError, match="cut.pkl: truncated or corrupted pickle"):
        list(iter_raw_items(str(tmp_path / "cut.pkl"), allow_pickle=True))
    (tmp_path / "noise.pkl").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(DataError, match="noise.pkl: "):
        list(iter_raw_items(str(tmp_path / "noise.pkl"), allow_pickle=True))
    (tmp_path / "scalar.pkl").write_bytes(pickle.dumps(3))
    with pytest.raises(DataError, match="expected a list of ATOMICA item dicts"):
        list(iter_raw_items(str(tmp_path / "scalar.pkl"), allow_pickle=True))


def test_numpy_items_and_string_modality(raw_items):
    raw = copy.deepcopy(raw_items[0])
    raw["data"] = {k: (np.asarray(v) if k != "torsion_mask" else v) for k, v in raw["data"].items()}
    raw["modality"] = "PL"
    raw["block_to_pdb_indexes"] = {"1": "A_10", 2: "A_11"}
    rec = validate_item(raw, "x.pkl", 0)
    assert rec["modality"] == 1 and rec["block_to_pdb_indexes"] == {1: "A_10", 2: "A_11"}
