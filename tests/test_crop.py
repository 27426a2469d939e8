"""Interface crop (ATOMICA CropTransform): which blocks are kept, how the item is rebuilt, torsion masks."""

import json
from pathlib import Path

import numpy as np
import pytest

from atomica_ray.data.crop import crop_item
from atomica_ray.data.items import validate_item
from atomica_ray.data.loader import DataSpec
from atomica_ray.data.torsion import compute_torsion_masks
from atomica_ray.data.transforms import make_transform
from atomica_ray.data.vocab import ATOM_GLOBAL, GLB

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def records():
    items = json.loads((DATA / "atomica_items.json").read_text())["items"]
    return [validate_item(it, "atomica_items.json", i) for i, it in enumerate(items)]


def candidate_crops(rec, budget):
    """Every block set ATOMICA's crop can produce: for each of the 5 closest cross-segment block pairs, the `budget`
    non-global blocks closest to the pair's block of their own segment (brute force, plain Python)."""
    starts = np.concatenate([[0], np.cumsum(rec["block_lengths"])[:-1]])
    centre = {b: rec["X"][starts[b]:starts[b] + rec["block_lengths"][b]].astype(np.float64).mean(0)
              for b in range(len(rec["B"])) if rec["B"][b] != GLB}
    seg = {b: int(rec["segment_ids"][b]) for b in centre}
    pairs = sorted((float(np.linalg.norm(centre[i] - centre[j])), i, j)
                   for i in centre for j in centre if seg[i] == 0 and seg[j] == 1)[:5]
    out = []
    for _, i, j in pairs:
        ranked = sorted(centre, key=lambda b: (np.linalg.norm(centre[b] - centre[i if seg[b] == 0 else j]), b))
        out.append(frozenset(ranked[:budget]))
    return out


def same_masks(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict):
        return a["type"] == b["type"] and same_masks(a["edges"], b["edges"]) and same_masks(a["mask_rotate"],
                                                                                          b["mask_rotate"])
    if isinstance(a, list) and (len(a) == 0 or a[0] is None or isinstance(a[0], (list, np.ndarray, dict))):
        return len(a) == len(b) and all(same_masks(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("cap", [6, 10, 20])
def test_crop_keeps_the_blocks_around_one_of_the_five_closest_pairs(records, cap):
    for rec in records:
        candidates = candidate_crops(rec, cap - 2)
        chosen = set()
        for seed in range(12):
            out, old = crop_item(rec, cap, np.random.default_rng(seed), return_indices=True)
            assert len(out["B"]) == cap
            kept = frozenset(old[out["B"] != GLB].tolist())
            assert kept in candidates, rec["id"]
            chosen.add(kept)
        if len(set(candidates)) > 1:
            assert len(chosen) > 1  # the centre pair is drawn, not fixed


def test_cropped_item_is_rebuilt_like_atomicas_blocks_to_data(records):
    for rec in records:
        out, old = crop_item(rec, 12, np.random.default_rng(0), return_indices=True)
        n = len(out["B"])
        assert len(out["block_lengths"]) == len(out["segment_ids"]) == n
        assert len(out["X"]) == len(out["A"]) == len(out["atom_positions"]) == out["block_lengths"].sum()
        starts = np.concatenate([[0], np.cumsum(out["block_lengths"])[:-1]])
        old_starts = np.concatenate([[0], np.cumsum(rec["block_lengths"])[:-1]])
        for s in (0, 1):
            blocks = np.nonzero(out["segment_ids"] == s)[0]
            g = blocks[0]  # each segment starts with its rebuilt global block
            assert out["B"][g] == GLB and out["block_lengths"][g] == 1
            assert out["A"][starts[g]] == ATOM_GLOBAL and out["atom_positions"][starts[g]] == 2
            normal = np.concatenate([np.arange(starts[b], starts[b] + out["block_lengths"][b]) for b in blocks[1:]])
            np.testing.assert_allclose(out["X"][starts[g]], out["X"][normal].astype(np.float64).mean(0), atol=1e-5)
            assert np.all(np.diff(old[blocks[1:]]) > 0)  # kept blocks stay in their original order
            for b in blocks[1:]:
                o = old[b]
                assert rec["segment_ids"][o] == s and rec["B"][o] == out["B"][b]
                sl, osl = slice(starts[b], starts[b] + out["block_lengths"][b]), slice(
                    old_starts[o], old_starts[o] + rec["block_lengths"][o])
                np.testing.assert_array_equal(out["X"][sl], rec["X"][osl])
                np.testing.assert_array_equal(out["A"][sl], rec["A"][osl])
                np.testing.assert_array_equal(out["atom_positions"][sl], rec["atom_positions"][osl])


@pytest.mark.parametrize("cap", [5, 8, 14, 30])
def test_torsion_masks_of_a_crop_are_those_of_the_cropped_atoms(records, cap):
    """Subsetting side-chain masks and recomputing whole-segment ones equals ATOMICA's recomputation from scratch
    (compute_torsion_masks reproduces ATOMICA's stored masks exactly, see test_transforms)."""
    t = make_transform(DataSpec(path="unused", kind="pretrain_torsion"))
    recomputed_ligand = 0
    for rec in records:
        for seed in range(3):
            out = crop_item(rec, cap, np.random.default_rng(seed))
            assert same_masks(out["torsion_mask"], compute_torsion_masks(out, as_lists=False)), (rec["id"], cap)
            lig = rec["torsion_mask"][1]
            if lig["type"] == 1 and (out["segment_ids"] == 1).sum() < (rec["segment_ids"] == 1).sum():
                recomputed_ligand += 1
            noisy = t(out, np.random.default_rng(seed))
            if noisy is not None:
                assert noisy["tor_edges"].max() < len(noisy["A"])
    if cap < 14:
        assert recomputed_ligand > 0  # a cut ligand was exercised


def test_crop_extras_determinism_and_limits(records):
    rec = dict(records[0])
    n = len(rec["B"])
    rec["block_embeddings"] = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    rec["block_to_pdb_indexes"] = {b: f"A_{b}" for b in range(n) if rec["B"][b] != GLB}
    seg = rec["segment_ids"]
    for s in (0, 1):  # per-segment embeddings: one row per block of the segment, its global block first
        rec[f"block_embeddings{s}"] = np.nonzero(seg == s)[0][:, None].astype(np.float32)
    out, old = crop_item(rec, 10, np.random.default_rng(5), return_indices=True)
    np.testing.assert_array_equal(out["block_embeddings"], rec["block_embeddings"][old])
    for s in (0, 1):
        np.testing.assert_array_equal(out[f"block_embeddings{s}"][:, 0], old[out["segment_ids"] == s])
    assert out["block_to_pdb_indexes"] == {i: f"A_{o}" for i, o in enumerate(old) if out["B"][i] != GLB}
    again = crop_item(rec, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(again["X"], out["X"])
    assert crop_item(rec, n, np.random.default_rng(0)) is rec  # already fits
    with pytest.raises(ValueError, match="max_blocks"):
        crop_item(rec, 2, np.random.default_rng(0))

    # a single-segment item is cropped around one of its blocks
    one = {k: rec[k] for k in ("id", "X", "A", "atom_positions")}
    seg0 = rec["segment_ids"] == 0
    atoms0 = np.repeat(seg0, rec["block_lengths"])
    one.update(X=rec["X"][atoms0], A=rec["A"][atoms0], atom_positions=rec["atom_positions"][atoms0],
               B=rec["B"][seg0], block_lengths=rec["block_lengths"][seg0], segment_ids=rec["segment_ids"][seg0])
    out = crop_item(one, 7, np.random.default_rng(1))
    assert len(out["B"]) == 7 and out["B"][0] == GLB and (out["segment_ids"] == 0).all()
