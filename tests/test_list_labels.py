"""List-valued labels end to end: per-block 0/1 labels (residue tasks) and per-item label vectors (multi-label)
read from ATOMICA items, validated, stored in Parquet, checked against the task, cropped and sampled with the
blocks they label, collated; and the interface label function (heavy atom within 4 Å of the partner)."""

from __future__ import annotations

import numpy as np
import pytest

from atomica_ray.data.collate import collate
from atomica_ray.data.crop import block_centroids, crop_item
from atomica_ray.data.items import DataError, validate_item
from atomica_ray.data.labels import interface_block_labels
from atomica_ray.data.loader import DataSpec, check_list_labels, make_loader, open_dataset
from atomica_ray.data.parquet import ParquetItems, write_dataset
from atomica_ray.data.transforms import BlockSampling
from atomica_ray.data.vocab import GLB
from list_label_data import demo_records


@pytest.fixture(scope="module")
def records():
    return demo_records(8, seed=2)


def centroid_labels(rec) -> np.ndarray:
    """A per-block property that survives cropping and sampling: the block's centroid lies above x = 0."""
    c = block_centroids(np.asarray(rec["X"], np.float64), np.asarray(rec["block_lengths"]))
    return (c[np.asarray(rec["B"]) != GLB, 0] > np.median(c[:, 0])).astype(np.int8)


def raw_item(rec, label) -> dict:
    data = {k: np.asarray(rec[k]).tolist() for k in ("X", "B", "A", "atom_positions", "block_lengths", "segment_ids")}
    return {"id": rec["id"], "data": data, "label": label}


def test_atomica_list_labels_are_read_and_validated(records):
    rec = records[0]
    n = int(np.sum(rec["B"] != GLB))
    blocks = validate_item(raw_item(rec, [int(v) for v in rec["block_labels"]]), "f.jsonl", 0)
    assert blocks["label"] is None and blocks["label_vector"] is None
    assert blocks["block_labels"].dtype == np.int8 and np.array_equal(blocks["block_labels"], rec["block_labels"])
    vector = validate_item(raw_item(rec, [0.0, 1.0, 0.5]), "f.jsonl", 0)
    assert vector["block_labels"] is None and np.allclose(vector["label_vector"], [0, 1, 0.5])
    # a 0/1 list of the right length is block labels unless told it is a vector
    told = validate_item(raw_item(rec, [1] * n), "f.jsonl", 0, list_labels="vector")
    assert told["block_labels"] is None and len(told["label_vector"]) == n
    with pytest.raises(DataError, match=r"f.jsonl, item 4 \(id .*\), field label: 3 block labels for \d+ non-global"):
        validate_item(raw_item(rec, [1, 0, 1]), "f.jsonl", 4, list_labels="block")
    with pytest.raises(DataError, match="field label: block label 2.0 at position 1 is not 0 or 1"):
        validate_item(raw_item(rec, [0, 2] + [0] * (n - 2)), "f.jsonl", 0, list_labels="block")
    with pytest.raises(DataError, match="field label: non-finite"):
        validate_item(raw_item(rec, [0.0, float("nan")]), "f.jsonl", 0)


def test_parquet_round_trip_and_task_checks(records, tmp_path):
    meta = write_dataset((("demo", r) for r in records), str(tmp_path / "ds"))
    assert meta["n_block_labels"] == len(records) and meta["label_vector_width"] == 3
    ds = ParquetItems(str(tmp_path / "ds"))
    for rec, back in zip(records, ds.iter_records()):
        assert back["block_labels"].dtype == np.int8 and np.array_equal(back["block_labels"], rec["block_labels"])
        assert back["label_vector"].dtype == np.float32 and np.array_equal(back["label_vector"], rec["label_vector"])
    assert list(ds.index["n_label_vector"]) == [3] * len(records)
    check_list_labels(ds, "residue")
    check_list_labels(ds, "multilabel", num_classes=3)
    with pytest.raises(DataError, match=r"item 0 \(id .*\), field label: a label vector of 3 values, but "
                                        "num_classifier_classes is 4"):
        check_list_labels(ds, "multilabel", num_classes=4)
    # an item without block labels is named
    missing = [dict(r) for r in records]
    missing[5]["block_labels"] = None
    write_dataset((("demo", r) for r in missing), str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"item 5 \(id .*\), field label: missing; kind 'residue' needs block labels"):
        check_list_labels(ParquetItems(str(tmp_path / "missing")), "residue")
    # label vectors of different widths in one dataset are refused when written
    ragged = [dict(r) for r in records]
    ragged[2]["label_vector"] = np.zeros(2, np.float32)
    with pytest.raises(DataError, match="field label: a label vector of 2 values, earlier items have 3"):
        write_dataset((("demo", r) for r in ragged), str(tmp_path / "ragged"))
    assert not (tmp_path / "ragged").exists()


def test_crop_and_block_sampling_keep_labels_with_their_blocks(records):
    rng = np.random.default_rng(0)
    for rec in records:
        rec = {**rec, "block_labels": centroid_labels(rec)}
        n = len(rec["B"])
        for out in (crop_item(rec, max(4, n // 2), rng), BlockSampling(p_keep=0.5)(rec, rng)):
            kept = out["B"] != GLB
            assert len(out["block_labels"]) == int(kept.sum()) < int(np.sum(rec["B"] != GLB))
            # the labels still describe the blocks they sit on: recompute the property on the kept blocks
            c = block_centroids(np.asarray(rec["X"], np.float64), np.asarray(rec["block_lengths"]))
            threshold = np.median(c[:, 0])
            c_out = block_centroids(np.asarray(out["X"], np.float64), np.asarray(out["block_lengths"]))
            assert np.array_equal(out["block_labels"], (c_out[kept, 0] > threshold).astype(np.int8))


def test_block_sampling_probabilities(records):
    rec = records[0]
    n = int(np.sum(rec["B"] != GLB))
    rng = np.random.default_rng(1)
    assert BlockSampling(p_keep=0.3, p_none=1.0)(rec, rng) is rec  # left whole
    whole = BlockSampling(p_keep=1.0)(rec, rng)
    assert np.array_equal(whole["B"], rec["B"]) and np.array_equal(whole["X"], rec["X"])
    one = BlockSampling(p_keep=0.0)(rec, rng)  # at least one block is always kept
    assert int(np.sum(one["B"] != GLB)) == 1 and int(np.sum(one["B"] == GLB)) == int(np.sum(rec["B"] == GLB))
    kept = [int(np.sum(BlockSampling(p_keep=0.6)(rec, rng)["B"] != GLB)) for _ in range(200)]
    assert abs(np.mean(kept) / n - 0.6) < 0.05
    with pytest.raises(ValueError, match="block_sampling_p_keep"):
        BlockSampling(p_keep=1.5)


def test_residue_and_multilabel_batches(records, tmp_path):
    write_dataset((("demo", r) for r in records), str(tmp_path / "ds"))
    for kind in ("residue", "multilabel"):
        spec = DataSpec(path=str(tmp_path / "ds"), kind=kind, max_n_vertex_per_gpu=120, max_n_vertex_per_item=40,
                        num_classes=3, random_block_sampling=kind == "residue", block_sampling_p_keep=0.7)
        batches = list(make_loader(spec, seed=0))
        assert sum(len(b["lengths"]) for b in batches) == len(records)
        for b in batches:
            assert int(b["lengths"].sum()) <= 120
            if kind == "residue":  # one label per non-global block of the (cropped, sampled) batch
                assert b["label"].dtype == b["X"].dtype and len(b["label"]) == int((b["B"] != GLB).sum())
                assert len(b["item_index"]) == len(b["lengths"])
            else:
                assert tuple(b["label"].shape) == (len(b["lengths"]), 3)
    with pytest.raises(DataError, match="num_classifier_classes is 5"):
        make_loader(DataSpec(path=str(tmp_path / "ds"), kind="multilabel", num_classes=5))
    # collate concatenates per-block labels in batch order
    out = collate(records[:2], "residue")
    assert np.array_equal(out["label"].numpy(), np.concatenate([r["block_labels"] for r in records[:2]]))


def test_atomica_file_with_list_labels_trains_as_its_task(records, tmp_path):
    """An ATOMICA .jsonl.gz of residue items is converted with its list labels read as block labels."""
    import gzip

    import orjson

    path = tmp_path / "residues.jsonl.gz"
    with gzip.open(path, "wb") as f:
        for r in records:
            f.write(orjson.dumps(raw_item(r, [int(v) for v in r["block_labels"]])) + b"\n")
    import os

    os.environ["ATOMICA_RAY_CACHE"] = str(tmp_path / "cache")
    try:
        ds = open_dataset(str(path), list_labels="block")
        check_list_labels(ds, "residue")
        assert np.array_equal(ds[3]["block_labels"], records[3]["block_labels"])
    finally:
        del os.environ["ATOMICA_RAY_CACHE"]
    from atomica_ray.cli.main import main

    # read as vectors instead, the lists (one per block) have different widths: refused
    assert main(["convert", str(path), "--out", str(tmp_path / "vectors"), "--list-labels", "vector"]) == 2
    one = tmp_path / "one.jsonl.gz"
    with gzip.open(one, "wb") as f:
        f.write(orjson.dumps(raw_item(records[3], [int(v) for v in records[3]["block_labels"]])) + b"\n")
    assert main(["convert", str(one), "--out", str(tmp_path / "vectors"), "--list-labels", "vector"]) == 0
    vectors = ParquetItems(str(tmp_path / "vectors"))
    assert vectors[0]["block_labels"] is None and np.array_equal(vectors[0]["label_vector"], records[3]["block_labels"])


def test_interface_labels():
    """Two blocks of segment 0, one of segment 1: distances chosen around the 4 Å cut-off; H atoms do not count."""
    C, H = 6 + 2, 1 + 2  # atom types: element Z at Z + 2
    X = np.array([[0, 0, 0],  # global 0
                  [0, 0, 0], [1, 0, 0],  # block 1 (seg 0): heavy atom at x=1 -> 3.0 Å from the ligand
                  [-20, 0, 0], [3.5, 0, 0],  # block 2 (seg 0): an H at 0.5 Å from the ligand, heavy atoms far
                  [4, 0, 0],  # global 1
                  [4, 0, 0],  # block 4 (seg 1): the ligand atom, 3.0 Å from block 1, 0.5 Å from block 2's H
                  [8.0, 0, 0]], dtype=np.float32)  # block 5 (seg 1): 7.0 Å from block 1's nearest heavy atom
    rec = {"X": X, "B": np.array([GLB, 4, 5, GLB, 40, 41]), "A": np.array([2, C, C, C, H, 2, C, C]),
           "block_lengths": np.array([1, 2, 2, 1, 1, 1]), "segment_ids": np.array([0, 0, 0, 1, 1, 1])}
    assert interface_block_labels(rec).tolist() == [1, 0, 1, 0]
    assert interface_block_labels(rec, cutoff=3.0).tolist() == [1, 0, 1, 0]  # inclusive: 3.0 Å counts
    assert interface_block_labels(rec, cutoff=2.9).tolist() == [0, 0, 0, 0]
    assert interface_block_labels(rec, cutoff=7.0).tolist() == [1, 0, 1, 1]


def test_interface_labels_match_brute_force(records):
    total = []
    for rec in records[:6]:
        lengths, B, seg, A = rec["block_lengths"], rec["B"], rec["segment_ids"], rec["A"]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        expect = []
        for b in np.flatnonzero(B != GLB):
            mine = [a for a in range(starts[b], starts[b] + lengths[b]) if A[a] not in (2, 3)]
            partner = [a for p in np.flatnonzero((seg != seg[b]) & (B != GLB))
                       for a in range(starts[p], starts[p] + lengths[p]) if A[a] not in (2, 3)]
            d = np.linalg.norm(rec["X"][mine][:, None].astype(np.float64) - rec["X"][partner][None], axis=-1)
            expect.append(int(d.min() <= 4.0))
        assert interface_block_labels(rec).tolist() == expect
        total += expect
    assert 0 < sum(total) < len(total)  # positives and negatives were both checked


def test_interface_labels_of_a_whole_dataset(records, tmp_path):
    from atomica_ray.data.labels import main

    plain = [{**r, "block_labels": None, "label_vector": None} for r in records]
    write_dataset((("demo", r) for r in plain), str(tmp_path / "complexes"))
    assert main([str(tmp_path / "complexes"), str(tmp_path / "residues")]) == 0
    labelled = ParquetItems(str(tmp_path / "residues"))
    check_list_labels(labelled, "residue")
    for rec, back in zip(records, labelled.iter_records()):
        assert np.array_equal(back["block_labels"], interface_block_labels(rec))
    assert main([str(tmp_path / "complexes"), str(tmp_path / "residues")]) == 2  # never overwrites unasked


def test_train_refuses_labels_of_the_wrong_width_on_the_driver(records, tmp_path, capsys):
    from atomica_ray.cli.main import main

    for split in ("train", "valid"):
        write_dataset((("demo", r) for r in records), str(tmp_path / split))
    code = main(["train", "--task", "multilabel_classifier", "--num_classifier_classes", "4", "--train_set",
                 str(tmp_path / "train"), "--valid_set", str(tmp_path / "valid"), "--storage-path", str(tmp_path),
                 "--fragmentation_method", "PS_300"])
    err = capsys.readouterr().err
    assert code == 2 and "train, item 0 (id" in err and "field label: a label vector of 3 values" in err
