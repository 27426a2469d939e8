"""Demo data: valid ATOMICA items with plausible geometry, consistent torsion masks, documented targets."""

import numpy as np
import pytest

from atomica_ray.cli.main import main
from atomica_ray.data.demo import CONTACT_LABEL_THRESHOLD, demo_items, write_demo_splits
from atomica_ray.data.items import validate_item
from atomica_ray.data.parquet import ParquetItems
from atomica_ray.data.vocab import GLB, MODALITIES, get_vocab


@pytest.fixture(scope="module")
def items():
    return demo_items(60, seed=3)


def _segments(it):
    d = it["data"]
    atom_seg = np.repeat(d["segment_ids"], d["block_lengths"])
    atom_glb = np.repeat(d["B"] == GLB, d["block_lengths"])
    X = np.asarray(d["X"])
    return X[(atom_seg == 0) & ~atom_glb], X[(atom_seg == 1) & ~atom_glb], X, atom_seg, atom_glb


def test_items_are_valid_and_deterministic(items):
    n_types = len(get_vocab("PS_300"))
    for i, it in enumerate(items):
        rec = validate_item(it, "demo", i, n_types)
        assert rec["segment_ids"][0] == 0 and rec["segment_ids"][-1] == 1
        starts = np.nonzero(np.diff(np.r_[-1, rec["segment_ids"]]))[0]
        assert np.all(rec["B"][starts] == GLB) and np.sum(rec["B"] == GLB) == 2  # one global block per segment
    again = demo_items(3, seed=3, start=10)
    assert [a["id"] for a in again] == [b["id"] for b in items[10:13]]
    assert all(np.array_equal(a["data"]["X"], b["data"]["X"]) for a, b in zip(again, items[10:13]))
    assert not np.array_equal(demo_items(1, seed=4)[0]["data"]["X"][:5], items[0]["data"]["X"][:5])


def test_geometry_is_plausible(items):
    v = get_vocab(None)
    close, total = 0, 0
    for it in items:
        P, L, X, atom_seg, atom_glb = _segments(it)
        # globals sit at the mean of their segment's atoms
        for s, part in ((0, P), (1, L)):
            assert np.allclose(X[(atom_seg == s) & atom_glb][0], part.mean(0))
        # residues: consecutive CA 3.8 A apart within a helix (ideal alpha helix)
        d = it["data"]
        res = [k for k, b in enumerate(d["B"]) if b in v.aa_range and d["segment_ids"][k] == 0]
        starts = np.r_[0, np.cumsum(d["block_lengths"])[:-1]]
        ca = X[starts[res] + 1]
        step = np.linalg.norm(np.diff(ca, axis=0), axis=1)
        assert np.median(step) == pytest.approx(3.80, abs=0.05)
        dist = np.linalg.norm(P[:, None] - P[None], axis=-1) + 10 * np.eye(len(P))
        nearest = dist.min(1)
        assert np.median(nearest) == pytest.approx(1.45, abs=0.15)  # covalent neighbours
        close += int(np.sum(nearest < 1.0))
        total += len(P)
    assert close / total < 0.01  # steric clashes are rare


def test_targets_follow_the_documented_functions(items):
    labels = []
    for it in items:
        P, L, *_ = _segments(it)
        d = np.sqrt(((L[:, None] - P[None]) ** 2).sum(-1)).min(1)
        assert it["label"] == float(d.min() < CONTACT_LABEL_THRESHOLD)
        assert not 3.85 < d.min() < 4.95  # the margin between the classes
        contacts = np.sum(1 / (1 + np.exp(-(5 - d) / 0.5)))
        assert it["affinity"]["neglog_aff"] == pytest.approx(2 + 0.35 * contacts)
        assert it["modality"] in (MODALITIES["PL"], MODALITIES["Ppeptide"])
        labels.append(it["label"])
    assert 0.3 < np.mean(labels) < 0.7


def test_torsion_masks_cut_exactly_one_bond(items):
    """Each rotatable bond's mask is one side of the molecule: no other bond (< 1.9 A, C-S included) crosses it."""
    checked = 0
    for it in items:
        d = it["data"]
        starts = np.r_[0, np.cumsum(d["block_lengths"])[:-1]]
        X = np.asarray(d["X"])
        for s, tm in enumerate(d["torsion_mask"]):
            blocks = [k for k in range(len(d["B"])) if d["segment_ids"][k] == s and d["B"][k] != GLB]
            if tm["type"] == 0:
                groups = [(starts[k], d["block_lengths"][k], e, m)
                          for k, e, m in zip(blocks, tm["edges"], tm["mask_rotate"]) if e is not None]
            else:
                first = starts[blocks[0]]
                groups = [] if tm["edges"] is None else [(first, int(sum(d["block_lengths"][k] for k in blocks)),
                                                          tm["edges"], tm["mask_rotate"])]
            for start, n, edges, masks in groups:
                xyz = X[start:start + n]
                bonded = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) < 1.9
                np.fill_diagonal(bonded, False)
                for (u, v), side in zip(edges, masks):
                    side = np.asarray(side, bool)
                    assert bonded[u, v] and side[v] and not side[u]
                    crossing = np.argwhere(bonded & side[:, None] & ~side[None, :])
                    assert crossing.tolist() == [[v, u]], (it["id"], crossing)
                    assert 1 < side.sum() < n - 1
                    checked += 1
    assert checked > 500


def test_cli_and_splits(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "one"), "--n-items", "40", "--seed", "1"]) == 0
    ds = ParquetItems(str(tmp_path / "one"))
    assert len(ds) == 40 and ds.meta["fragmentation_method"] == "PS_300"
    assert main(["demo-data", "--out", str(tmp_path / "one"), "--n-items", "40"]) == 2  # never overwrites silently
    paths = write_demo_splits(str(tmp_path / "split"), n_train=30, n_valid=10, seed=1)
    train, valid = ParquetItems(paths["train"]), ParquetItems(paths["valid"])
    ids = lambda ds: {r["id"] for r in ds.iter_records(fields=())}  # noqa: E731
    assert len(train) == 30 and len(valid) == 10 and not ids(train) & ids(valid)
    assert ids(train) <= ids(ds)  # the same seed gives the same items
    assert main(["demo-data", "--out", str(tmp_path / "nofrag"), "--n-items", "5", "--no-fragments"]) == 0
    assert ParquetItems(str(tmp_path / "nofrag")).meta["max_block_type"] < len(get_vocab(None))
