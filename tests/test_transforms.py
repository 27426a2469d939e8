"""Pretraining transforms: ATOMICA parity on its own fixture (structure replayed, noise recovered from its
coordinates), scores against the applied perturbations, masking rules, determinism, and the loader path."""

import gzip
import json
import pickle
import types
from pathlib import Path

import numpy as np
import pytest

from atomica_ray.data import torus
from atomica_ray.data.items import validate_item
from atomica_ray.data.loader import DataSpec, make_loader
from atomica_ray.data.masking import mask_blocks
from atomica_ray.data.so3 import IGSO3, kabsch
from atomica_ray.data.torsion import (apply_torsions, atom_radii, backbone_atoms, compute_torsion_masks,
                                     rotatable_bonds, rotatable_bonds_one_graph, segment_torsions)
from atomica_ray.data.transforms import OUTPUT_KEYS, make_transform
from atomica_ray.data.vocab import GLB, MASK, UNK, get_vocab

DATA = Path(__file__).parent / "data"
RELEASED = dict(translation_noise=1.0, rotation_noise=0.25, max_rotation=0.5, torsion_noise=0.5, mask_proportion=0.1)


@pytest.fixture(scope="module")
def raw_items():
    return json.loads((DATA / "atomica_items.json").read_text())["items"]


@pytest.fixture(scope="module")
def records(raw_items):
    return [validate_item(it, "atomica_items.json", i) for i, it in enumerate(raw_items)]


@pytest.fixture(scope="module")
def atomica_batch():
    """ATOMICA's collated PretrainMaskedTorsionDataset batch of the 4 fixture items, split per item."""
    z = np.load(DATA / "atomica_pretrain_batch.npz")
    b = {k: z[k] for k in z.files}
    boff = np.concatenate([[0], np.cumsum(b["lengths"])])
    n_atoms = [b["block_lengths"][boff[i]:boff[i + 1]].sum() for i in range(len(b["lengths"]))]
    aoff = np.concatenate([[0], np.cumsum(n_atoms)])
    moff = np.concatenate([[0], np.cumsum([b["masked_blocks"][boff[i]:boff[i + 1]].sum() for i in range(4)])])
    items = []
    for i in range(len(b["lengths"])):
        blocks, atoms, tor = slice(boff[i], boff[i + 1]), slice(aoff[i], aoff[i + 1]), b["tor_batch"] == i
        items.append({
            "X": b["X"][atoms].astype(np.float64), "B": b["B"][blocks], "A": b["A"][atoms],
            "block_lengths": b["block_lengths"][blocks], "masked_blocks": b["masked_blocks"][blocks],
            "masked_labels": b["masked_labels"][moff[i]:moff[i + 1]], "tor_edges": b["tor_edges"][:, tor] - aoff[i],
            "tor_score": b["tor_score"][tor], "rot_score": b["rot_score"][i], "tr_score": b["tr_score"][i],
            "tr_eps": float(b["tr_eps"][i]), "noisy_segment": int(b["noisy_segment"][i]),
        })
    return json.loads(str(z["settings"])), items


def spec(kind, **kw):
    return DataSpec(path="unused", kind=kind, **kw)


def atom_segments(rec):
    return np.repeat(rec["segment_ids"], rec["block_lengths"]), np.repeat(rec["B"] == GLB, rec["block_lengths"])


def bonded(X, rec, segment):
    """Bonds for the checks (ATOMICA's covalent criterion) between non-global atoms, in the same block for a
    side-chain (type 0) segment, in the same segment otherwise (the synthetic items have close contacts between
    residues)."""
    seg, glob = atom_segments(rec)
    group = np.repeat(np.arange(len(rec["B"])), rec["block_lengths"])
    if rec["torsion_mask"][segment]["type"] == 1:
        group = seg
    d = np.linalg.norm(X[:, None] - X[None], axis=-1)
    same = (group[:, None] == group[None]) & (seg[:, None] == segment)
    r = atom_radii(rec["A"])
    with np.errstate(invalid="ignore"):
        return (d > 0.1) & (d < 1.3 * (r[:, None] + r[None])) & same & ~glob[:, None] & ~glob[None]


def torsion_changes(X0, X1, tors, nb, usable=None):
    """Signed change of each bond's torsion, measured as the rotation of a moving-side neighbour of the moving end
    about the axis moving end -> fixed end, relative to a fixed-side neighbour of the fixed end."""
    out = []
    for e in range(len(tors)):
        f, m = tors.fixed_end[e], tors.moving_end[e]
        moving = set(tors.moving[tors.ptr[e]:tors.ptr[e + 1]].tolist())
        a = [i for i in np.nonzero(nb[f])[0] if i not in moving and i != m]
        b = [i for i in np.nonzero(nb[m])[0] if i in moving and i != f]
        quad = [a[0], f, m, b[0]]
        if usable is not None and not usable[quad].all():
            out.append(np.nan)
            continue

        def angle(X):
            n = (X[f] - X[m]) / np.linalg.norm(X[f] - X[m])
            pa, pb = X[a[0]] - X[f], X[b[0]] - X[m]
            pa, pb = pa - (pa @ n) * n, pb - (pb @ n) * n
            return np.arctan2(n @ np.cross(pa, pb), pa @ pb)

        out.append((angle(X1) - angle(X0) + np.pi) % (2 * np.pi) - np.pi)
    return np.array(out)


def wrapped_normal_score_fd(x, sigma, h=1e-6):
    shifts = 2 * np.pi * np.arange(-100, 101)

    def logp(v):
        e = -((v[:, None] + shifts) ** 2) / (2 * sigma ** 2)
        m = e.max(1, keepdims=True)
        return (m + np.log(np.exp(e - m).sum(1, keepdims=True)))[:, 0]

    return (logp(x + h) - logp(x - h)) / (2 * h)


# --- ATOMICA parity -----------------------------------------------------------------------------------------------
def test_torsion_masks_are_recomputed_exactly_as_atomica_stored_them(raw_items):
    for it in raw_items:
        assert compute_torsion_masks(it["data"]) == it["data"]["torsion_mask"], it["id"]


def test_the_two_rotatable_bond_searches_agree_on_random_molecular_graphs():
    """Blocks use a batched reachability search, whole segments a DFS for bridges: same bonds, same moving sides."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        adj = np.zeros((n, n), bool)
        for v in range(1, n):  # a random tree, a few ring-closing bonds, sometimes an isolated atom
            u = rng.integers(0, v)
            adj[u, v] = adj[v, u] = True
        for _ in range(rng.integers(0, 4)):
            u, v = rng.integers(0, n, 2)
            adj[u, v] = adj[v, u] = u != v
        if rng.random() < 0.1:
            k = rng.integers(0, n)
            adj[k, :] = adj[:, k] = False
        perm = rng.permutation(n)
        adj = adj[perm][:, perm]
        _, edges, moving = rotatable_bonds(adj[None], np.ones((1, n), bool))
        edges_dfs, moving_dfs = rotatable_bonds_one_graph(adj)
        np.testing.assert_array_equal(edges, edges_dfs)
        np.testing.assert_array_equal(moving, moving_dfs)


def test_replaying_atomicas_choices_gives_its_batch_structure(records, atomica_batch):
    settings, batch = atomica_batch
    t = make_transform(spec("pretrain_masked_torsion", **{k: settings[k] for k in RELEASED}))
    for rec, ref in zip(records, batch):
        out = t(rec, np.random.default_rng(0), noisy_segment=ref["noisy_segment"], masked_blocks=ref["masked_blocks"])
        # rotatable bonds of the noisy segment, renumbered after masking (collapsed onto mask atoms as ATOMICA does)
        np.testing.assert_array_equal(out["tor_edges"], ref["tor_edges"])
        assert len(out["tor_score"]) == ref["tor_edges"].shape[1]
        for key in ("B", "A", "block_lengths", "masked_blocks", "masked_labels"):
            np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{rec['id']} {key}")
        assert out["B"][ref["masked_blocks"]].tolist() == [MASK] * int(ref["masked_blocks"].sum())
        # the other segment is untouched, including the mask atoms placed at block centroids
        seg = np.repeat(out["segment_ids"], out["block_lengths"])
        other = seg != ref["noisy_segment"]
        np.testing.assert_allclose(out["X"][other], ref["X"][other], atol=1e-5)
        assert set(OUTPUT_KEYS["pretrain_masked_torsion"]) <= set(out)


def test_noise_recovered_from_atomicas_coordinates_matches_its_scores(records, atomica_batch):
    """Measure the rotation, translation and torsion changes ATOMICA applied (from its noisy coordinates) and check
    that our tables and conventions turn them into ATOMICA's rot_score / tr_score / tor_score."""
    settings, batch = atomica_batch
    vocab = get_vocab("PS_300")
    igso3 = IGSO3(settings["rotation_noise"], settings["max_rotation"])
    tor_score = torus.TorusScore(settings["torsion_noise"])
    n_bonds = 0
    for rec, ref in zip(records, batch):
        s = ref["noisy_segment"]
        _, _, atom_map = mask_blocks(rec, ref["masked_blocks"], vocab)
        atom_block = np.repeat(np.arange(len(rec["B"])), rec["block_lengths"])
        kept = ~ref["masked_blocks"][atom_block]
        X0 = rec["X"].astype(np.float64)
        X1 = np.full_like(X0, np.nan)
        X1[kept] = ref["X"][atom_map[kept]]  # ATOMICA's noisy coordinates, in the raw item's atom order
        seg, glob = atom_segments(rec)

        tors = segment_torsions(rec, s, rec["torsion_mask"][s])
        delta = torsion_changes(X0, X1, tors, bonded(X0, rec, s), usable=kept)
        ok = ~np.isnan(delta)
        n_bonds += ok.sum()
        np.testing.assert_allclose(tor_score(delta[ok]), ref["tor_score"][ok], rtol=1e-4, atol=1e-4)

        tr = ref["tr_eps"] * ref["tr_score"]
        if rec["torsion_mask"][s]["type"] == 0:  # backbone atoms only feel the rotation and the translation
            bb = backbone_atoms(rec["A"], rec["atom_positions"], np.zeros(len(rec["A"]), bool)) & kept & (seg == s)
            R, _ = kabsch(X0[bb], X1[bb])
            theta = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
            axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(theta))
            k = np.argmin(np.abs(igso3.theta - theta))
            assert abs(igso3.theta[k] - theta) < 1e-5
            np.testing.assert_allclose(ref["rot_score"], axis * igso3.score[k], rtol=1e-5, atol=1e-5)
            centre = X0[(seg == s) & ~glob].mean(0)
            np.testing.assert_allclose(X1[bb] - (X0[bb] - centre) @ R.T - centre, np.broadcast_to(tr, X0[bb].shape),
                                       atol=2e-5)
        else:  # Kabsch keeps the centroid: the global atom moved by the translation alone
            g = np.nonzero((seg == s) & glob)[0]
            np.testing.assert_allclose(X1[g] - X0[g], tr[None], atol=2e-5)
            assert np.min(np.abs(igso3.score - np.linalg.norm(ref["rot_score"]))) < 1e-5
    assert n_bonds >= 40


# --- scores against the applied perturbation --------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_and_translation_scores_match_the_rigid_motion(records, seed):
    t = make_transform(spec("pretrain_atom", atom_noise=0, translation_noise=1.0, rotation_noise=0.25,
                            max_rotation=0.5, torsion_noise=None))
    igso3 = IGSO3(0.25, 0.5)
    for i, rec in enumerate(records):
        out = t(rec, np.random.default_rng([seed, i]))
        s = out["noisy_segment"]
        seg, glob = atom_segments(rec)
        X0, X1 = rec["X"].astype(np.float64), out["X"].astype(np.float64)
        np.testing.assert_array_equal(X1[seg != s], X0[seg != s])
        moved = (seg == s) & ~glob
        R, t_ = kabsch(X0[moved], X1[moved])
        assert np.abs(X0[moved] @ R.T + t_ - X1[moved]).max() < 1e-4  # rigid
        theta = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
        axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(theta))
        k = np.argmin(np.abs(igso3.theta - theta))
        assert abs(igso3.theta[k] - theta) < 1e-4
        np.testing.assert_allclose(out["rot_score"], axis * igso3.score[k], rtol=1e-3, atol=1e-3)
        # rotation about the centroid: the centroid moves by the translation only
        np.testing.assert_allclose(X1[moved].mean(0) - X0[moved].mean(0), out["tr_eps"] * out["tr_score"], atol=1e-4)
        assert 0.1 <= out["tr_eps"] <= 1.0
        np.testing.assert_allclose(X1[(seg == s) & glob][0], X1[moved].mean(0), atol=1e-4)
        np.testing.assert_array_equal(out["atom_score"], 0)


def test_no_rotation_when_a_segment_has_at_most_two_atoms(records):
    rec = records[0]
    seg = rec["segment_ids"]
    keep_blocks = (seg == 0) | (np.arange(len(seg)) <= np.argmax(seg == 1) + 1)  # ligand: global + first block
    keep_atoms = np.repeat(keep_blocks, rec["block_lengths"])
    small = {**rec, "B": rec["B"][keep_blocks], "block_lengths": rec["block_lengths"][keep_blocks].copy(),
             "segment_ids": seg[keep_blocks], "X": rec["X"][keep_atoms], "A": rec["A"][keep_atoms],
             "atom_positions": rec["atom_positions"][keep_atoms], "torsion_mask": None}
    small["block_lengths"][-1] = 1
    n = int(small["block_lengths"].sum())
    small["X"], small["A"], small["atom_positions"] = small["X"][:n], small["A"][:n], small["atom_positions"][:n]
    t = make_transform(spec("pretrain_atom", atom_noise=0, torsion_noise=None, **{
        k: v for k, v in RELEASED.items() if k != "torsion_noise"}))
    for seed in range(5):
        out = t(small, np.random.default_rng(seed))
        assert out["noisy_segment"] == 0  # the 2-atom segment is never chosen
        np.testing.assert_array_equal(out["rot_score"], 0)
        np.testing.assert_allclose(out["X"][: n - 2] - small["X"][: n - 2], np.broadcast_to(
            out["tr_eps"] * out["tr_score"], (n - 2, 3)), atol=1e-5)  # translated, not rotated


@pytest.mark.parametrize("segment", [0, 1])
def test_torsion_scores_match_the_applied_torsion_changes(records, segment):
    t = make_transform(spec("pretrain_torsion", torsion_noise=0.5, translation_noise=0, rotation_noise=0))
    for i, rec in enumerate(records):
        out = t(rec, np.random.default_rng([3, i]), noisy_segment=segment)
        seg, glob = atom_segments(rec)
        X0, X1 = rec["X"].astype(np.float64), out["X"].astype(np.float64)
        nb = bonded(X0, rec, segment)
        entry = rec["torsion_mask"][segment]
        tors = segment_torsions(rec, segment, entry)
        np.testing.assert_array_equal(out["tor_edges"], tors.edges.T)
        delta = torsion_changes(X0, X1, tors, nb)
        # the score is the derivative of the wrapped-normal log density at the change actually applied
        np.testing.assert_allclose(out["tor_score"], wrapped_normal_score_fd(delta, 0.5), rtol=2e-2, atol=2e-2)
        # bond lengths are kept, the other segment does not move, the global atom sits at the centroid
        u, v = np.nonzero(np.triu(nb))
        np.testing.assert_allclose(np.linalg.norm(X1[u] - X1[v], axis=1), np.linalg.norm(X0[u] - X0[v], axis=1),
                                   atol=1e-4)
        np.testing.assert_array_equal(X1[seg != segment], X0[seg != segment])
        np.testing.assert_allclose(X1[(seg == segment) & glob][0], X1[(seg == segment) & ~glob].mean(0), atol=1e-4)
        if entry["type"] == 0:  # side chains rotate in place: atoms no bond moves stay put
            still = np.ones(len(X0), bool)
            still[tors.moving] = False
            np.testing.assert_array_equal(X1[still & ~glob], X0[still & ~glob])
        else:  # the whole segment is aligned back (Kabsch keeps the centroid)
            np.testing.assert_allclose(X1[(seg == segment) & ~glob].mean(0), X0[(seg == segment) & ~glob].mean(0),
                                       atol=1e-4)


def test_one_torsion_moves_only_its_side_about_its_axis(records):
    rec = records[3]
    tors = segment_torsions(rec, 1, rec["torsion_mask"][1])
    tors.rigid_align = False  # look at the raw rotation, before ATOMICA's Kabsch re-alignment
    X0 = rec["X"].astype(np.float64)
    for e in range(len(tors)):
        delta = np.zeros(len(tors))
        delta[e] = 1.0
        X1 = apply_torsions(X0, tors, delta)
        moving = np.zeros(len(X0), bool)
        moving[tors.moving[tors.ptr[e]:tors.ptr[e + 1]]] = True
        np.testing.assert_array_equal(X1[~moving], X0[~moving])
        f, m = tors.fixed_end[e], tors.moving_end[e]
        axis = (X0[f] - X0[m]) / np.linalg.norm(X0[f] - X0[m])
        to_axis = lambda X: np.linalg.norm(np.cross(X[moving] - X0[f], axis), axis=1)  # noqa: E731
        np.testing.assert_allclose(to_axis(X1), to_axis(X0), atol=1e-9)
        d0 = np.linalg.norm(X0[moving][:, None] - X0[moving][None], axis=-1)
        d1 = np.linalg.norm(X1[moving][:, None] - X1[moving][None], axis=-1)
        np.testing.assert_allclose(d1, d0, atol=1e-9)
        assert np.abs(X1[moving] - X0[moving]).max() > 0.1


def test_gaussian_atom_noise_score(records):
    t = make_transform(spec("pretrain_atom", atom_noise=1.0, translation_noise=0, rotation_noise=0,
                            torsion_noise=None))
    scores = []
    for i, rec in enumerate(records):
        out = t(rec, np.random.default_rng([4, i]))
        s = out["noisy_segment"]
        seg, glob = atom_segments(rec)
        X0, X1 = rec["X"].astype(np.float64), out["X"].astype(np.float64)
        assert 0.1 <= out["atom_eps"] <= 1.0
        np.testing.assert_allclose(out["atom_score"] * out["atom_eps"], X0 - X1, atol=1e-5)
        np.testing.assert_array_equal(out["atom_score"][seg != s], 0)
        np.testing.assert_allclose(X1[(seg == s) & glob][0], X1[(seg == s) & ~glob].mean(0), atol=1e-5)
        scores.append(out["atom_score"][(seg == s) & ~glob])
    scores = np.concatenate(scores)  # -noise: standard normal
    assert abs(scores.mean()) < 0.1 and abs(scores.std() - 1) < 0.1


# --- masking -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.1, 0.35, 1.0])
def test_masking_count_and_rewrite(records, p):
    t = make_transform(spec("pretrain_masked", mask_proportion=p))
    for i, rec in enumerate(records):
        out = t(rec, np.random.default_rng([5, i]))
        masked = out["masked_blocks"]
        n_candidates = int((rec["B"] > GLB).sum())
        assert masked.sum() == max(1, int(p * n_candidates))
        assert not masked[rec["B"] == GLB].any()
        np.testing.assert_array_equal(out["masked_labels"], rec["B"][masked] - 4)  # maskable classes start at 4
        np.testing.assert_array_equal(out["B"], np.where(masked, MASK, rec["B"]))
        np.testing.assert_array_equal(out["block_lengths"], np.where(masked, 1, rec["block_lengths"]))
        starts = np.concatenate([[0], np.cumsum(out["block_lengths"])[:-1]])
        old_starts = np.concatenate([[0], np.cumsum(rec["block_lengths"])[:-1]])
        for b in range(len(rec["B"])):
            if masked[b]:
                assert out["A"][starts[b]] == 1 and out["atom_positions"][starts[b]] == 1
                centroid = rec["X"][old_starts[b]:old_starts[b] + rec["block_lengths"][b]].astype(np.float64).mean(0)
                np.testing.assert_allclose(out["X"][starts[b]], centroid, atol=1e-5)
            else:
                sl, old = slice(starts[b], starts[b] + out["block_lengths"][b]), slice(
                    old_starts[b], old_starts[b] + rec["block_lengths"][b])
                np.testing.assert_array_equal(out["X"][sl], rec["X"][old])
                np.testing.assert_array_equal(out["A"][sl], rec["A"][old])
        assert len(out["X"]) == len(out["A"]) == len(out["atom_positions"]) == out["block_lengths"].sum()


def test_masked_torsion_edges_point_at_the_masked_items_atoms(records):
    t = make_transform(spec("pretrain_masked_torsion", **{**RELEASED, "mask_proportion": 0.5}))
    n_collapsed = 0
    for i, rec in enumerate(records):
        out = t(rec, np.random.default_rng([6, i]))
        e = out["tor_edges"]
        assert e.shape == (2, len(out["tor_score"])) and e.max() < len(out["A"])
        atom_block = np.repeat(np.arange(len(out["B"])), out["block_lengths"])
        in_masked = out["masked_blocks"][atom_block[e]]  # [2, n_tor]
        collapsed = in_masked.all(0) & (atom_block[e[0]] == atom_block[e[1]])
        np.testing.assert_array_equal(e[0, collapsed], e[1, collapsed])  # both ends -> the block's mask atom
        n_collapsed += collapsed.sum()
        live = ~in_masked.any(0)
        lengths = np.linalg.norm(out["X"][e[0, live]] - out["X"][e[1, live]], axis=1)
        assert ((lengths > 1.0) & (lengths < 1.9)).all()  # still bonds in the masked item
        assert "torsion_mask" not in out
    assert n_collapsed > 0


def test_items_atomica_drops_are_dropped(records):
    rec = records[0]
    no_torsion = {**rec, "torsion_mask": [{"type": 0, "edges": [None] * (rec["segment_ids"] == 0).sum(),
                                           "mask_rotate": [None] * (rec["segment_ids"] == 0).sum()},
                                          {"type": 1, "edges": None, "mask_rotate": None}]}
    no_torsion["torsion_mask"][0]["edges"] = no_torsion["torsion_mask"][0]["edges"][1:]
    no_torsion["torsion_mask"][0]["mask_rotate"] = no_torsion["torsion_mask"][0]["mask_rotate"][1:]
    for kind in ("pretrain_torsion", "pretrain_masked_torsion"):
        assert make_transform(spec(kind))(no_torsion, np.random.default_rng(0)) is None
    B = rec["B"].copy()
    B[(rec["segment_ids"] == 1) & (B != GLB)] = UNK  # UNK is not maskable
    for kind in ("pretrain_masked", "pretrain_masked_torsion"):
        assert make_transform(spec(kind))({**rec, "B": B}, np.random.default_rng(0)) is None


# --- determinism, settings, missing masks ----------------------------------------------------------------------
def test_same_seed_epoch_item_reproduces_and_another_epoch_differs(records):
    t = make_transform(spec("pretrain_masked_torsion", **RELEASED))

    def run(seed, epoch):
        return [t(rec, np.random.default_rng([seed, epoch, i])) for i, rec in enumerate(records)]

    a, b, c = run(0, 3), run(0, 3), run(0, 4)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k
    assert any(not np.array_equal(x["X"], z["X"]) or x["noisy_segment"] != z["noisy_segment"] for x, z in zip(a, c))
    assert all(not np.array_equal(x["tor_score"], z["tor_score"]) for x, z in zip(a, c))


def test_transform_pickles_for_worker_processes(records):
    t = make_transform(spec("pretrain_masked_torsion", **RELEASED))
    first = t(records[0], np.random.default_rng(9))  # tables loaded
    clone = pickle.loads(pickle.dumps(t))
    again = clone(records[0], np.random.default_rng(9))
    for k in first:
        assert np.array_equal(np.asarray(first[k]), np.asarray(again[k])), k


def test_missing_torsion_masks_are_computed_on_the_fly(records):
    t = make_transform(spec("pretrain_torsion", **RELEASED))
    for i, rec in enumerate(records):
        stored = t(rec, np.random.default_rng([7, i]))
        computed = t({**rec, "torsion_mask": None}, np.random.default_rng([7, i]))
        np.testing.assert_array_equal(stored["X"], computed["X"])
        np.testing.assert_array_equal(stored["tor_edges"], computed["tor_edges"])


def test_make_transform_settings():
    for kind in ("affinity", "labelled", "multiclass", "plain", "prot_interface"):
        assert make_transform(spec(kind)) is None
    with pytest.raises(ValueError, match="kind"):
        make_transform(types.SimpleNamespace(kind="denoise"))
    with pytest.raises(ValueError, match="torsion_noise"):
        make_transform(spec("pretrain_torsion", torsion_noise=None))
    assert make_transform(spec("pretrain_atom", atom_noise=1.0)).settings.atom_noise == 1.0  # torsion_noise unused
    with pytest.raises(ValueError, match="mask_proportion"):
        make_transform(spec("pretrain_masked", mask_proportion=-0.1))
    # any object with the fields works; missing ones take ATOMICA's defaults (noise off, max_rotation π/4)
    t = make_transform(types.SimpleNamespace(kind="pretrain_torsion", torsion_noise=0.5))
    assert t.settings.translation_noise == 0 and t.igso3 is None and t.settings.max_rotation == pytest.approx(np.pi / 4)


def test_loader_streams_cropped_noised_masked_batches(raw_items, tmp_path):
    src = tmp_path / "items.jsonl.gz"
    with gzip.open(src, "wt") as fh:
        for it in raw_items:
            fh.write(json.dumps(it) + "\n")
    from atomica_ray.data.parquet import convert

    convert([str(src)], str(tmp_path / "ds"))
    data_spec = DataSpec(path=str(tmp_path / "ds"), kind="pretrain_masked_torsion", max_n_vertex_per_gpu=40,
                         max_n_vertex_per_item=16, **RELEASED)
    seen = 0
    for epoch in (0, 1):
        for batch in make_loader(data_spec, seed=0, epoch=epoch):
            assert (batch["lengths"] <= 16).all() and batch["lengths"].sum() <= 40
            assert batch["tor_edges"].shape[1] == batch["tor_score"].shape[0] == batch["tor_batch"].shape[0]
            assert batch["tor_edges"].max() < batch["A"].shape[0]
            assert batch["masked_labels"].shape[0] == int(batch["masked_blocks"].sum())
            assert (batch["B"][batch["masked_blocks"]] == MASK).all()
            assert batch["X"].shape[0] == batch["A"].shape[0] == int(batch["block_lengths"].sum())
            seen += len(batch["lengths"])
    assert seen > 0
