"""make_loader end to end on ATOMICA-format pickles: convert, inspect, stream across 2 ranks with worker
processes; every item once per epoch, budget kept, equal batch counts, exact mid-epoch resume; ATOMICA's keys."""

import copy
import json
import os
import pickle

import numpy as np
import pytest
import torch

from atomica_ray.cli.main import main
from atomica_ray.data import DataSpec, make_loader, open_dataset
from atomica_ray.data.items import DataError
from atomica_ray.data.loader import EpochBatches

HERE = os.path.dirname(__file__)
ITEMS_JSON = os.path.join(HERE, "data", "atomica_items.json")
BATCHES = os.path.join(HERE, "data", "atomica_batches.npz")
N_ITEMS = 46


def _reference_items():
    with open(ITEMS_JSON) as f:
        return json.load(f)["items"]


def _variants(n):
    """n distinct ATOMICA items (the reference items moved apart; the item's first atom identifies it)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        it = copy.deepcopy(_reference_items()[i % 4])
        it["id"] = f"{it['id']}_v{i}"
        it["label"] = it.pop("label_binary")
        it["data"]["X"] = (np.array(it["data"]["X"]) + rng.uniform(-50, 50, 3)).tolist()
        it["modality"] = int(rng.choice([1, 3]))
        out.append(it)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    items = _variants(N_ITEMS)
    (d / "part1.pkl").write_bytes(pickle.dumps(items[:30]))
    (d / "part2.pkl").write_bytes(pickle.dumps(items[30:]))
    out = d / "ds"
    assert main(["convert", str(d / "part1.pkl"), str(d / "part2.pkl"), "--out", str(out), "--allow-pickle",
                 "--row-group-items", "8"]) == 0
    fingerprint = {tuple(np.float32(it["data"]["X"][0])): it["id"] for it in items}
    return str(out), items, fingerprint


def _item_ids(batch, fingerprint):
    """Ids of a batch's items, recovered from its content (first atom of each item)."""
    atoms_per_item = torch.zeros(len(batch["lengths"]), dtype=torch.long).index_add_(
        0, torch.repeat_interleave(torch.arange(len(batch["lengths"])), batch["lengths"]), batch["block_lengths"])
    starts = torch.cumsum(atoms_per_item, 0) - atoms_per_item
    return [fingerprint[tuple(batch["X"][s].numpy())] for s in starts.tolist()]


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and torch.equal(a, b)


def test_inspect_the_converted_pickles(dataset, capsys):
    path, items, _ = dataset
    assert main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert f"items: {N_ITEMS}" in text
    n_blocks = [len(it["data"]["B"]) for it in items]
    assert f"blocks per item: min {min(n_blocks)}, median {np.median(n_blocks):g}, max {max(n_blocks)}" in text


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_every_item_once(dataset, workers):
    path, items, fingerprint = dataset
    spec = DataSpec(path, kind="labelled", max_n_vertex_per_gpu=100)
    orders = []
    for epoch in (0, 1):
        seen, counts = [], []
        for rank in (0, 1):
            loader = make_loader(spec, seed=5, epoch=epoch, rank=rank, world_size=2, num_workers=workers)
            batches = list(loader)
            counts.append(len(batches))
            assert len(loader) == len(batches)
            for b in batches:
                assert int(b["lengths"].sum()) <= 100  # block budget
                assert len(b["label"]) == len(b["lengths"])
                seen += _item_ids(b, fingerprint)
        assert abs(counts[0] - counts[1]) <= 1 and sum(counts) == loader.n_batches  # one batch per rank per step
        assert sorted(seen) == sorted(it["id"] for it in items)  # every item exactly once
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shuffle each epoch


def test_resize_mid_epoch_sees_every_item_once(dataset):
    """3 ranks up to batch position p, then 2 ranks from p on (an elastic run that lost a worker): every item of
    the epoch once, and each step's batches are the same items whatever the world size."""
    path, items, fingerprint = dataset
    spec = DataSpec(path, kind="labelled", max_n_vertex_per_gpu=80)
    per_step = 6
    before = [make_loader(spec, seed=2, epoch=1, rank=r, world_size=3, per_step=per_step) for r in range(3)]
    p = per_step * (len(before[0].step_plan) // 2)
    seen = []
    for loader in before:
        for (size, batches), _ in zip(loader.steps(), range(p // per_step)):
            seen += [i for b in batches for i in _item_ids(b, fingerprint)]
    for r in range(2):
        loader = make_loader(spec, seed=2, epoch=1, rank=r, world_size=2, start_batch=p, per_step=per_step)
        assert loader.n_batches == before[0].n_batches
        seen += [i for b in loader for i in _item_ids(b, fingerprint)]
    assert sorted(seen) == sorted(it["id"] for it in items)


@pytest.mark.parametrize("kind", ["labelled", "pretrain_masked_torsion"])
def test_resume_mid_epoch_is_exact(dataset, kind):
    path, _, _ = dataset
    spec = DataSpec(path, kind=kind, max_n_vertex_per_gpu=120, max_n_vertex_per_item=40)
    full = list(make_loader(spec, seed=1, epoch=3, rank=1, world_size=2, num_workers=2))
    mine = len(full) // 2  # rank 1's batches before the resume point: one per step of 2
    resumed = make_loader(spec, seed=1, epoch=3, rank=1, world_size=2, start_batch=2 * mine, num_workers=1)
    tail = list(resumed)
    assert len(tail) == len(resumed) == len(full) - mine
    assert all(_equal(a, b) for a, b in zip(tail, full[mine:]))
    other_epoch = list(make_loader(spec, seed=1, epoch=4, rank=1, world_size=2))
    assert not all(_equal(a, b) for a, b in zip(other_epoch, full))


def test_oversized_items_are_cropped(dataset):
    path, _, _ = dataset
    spec = DataSpec(path, kind="labelled", max_n_vertex_per_gpu=64, max_n_vertex_per_item=20)
    n = 0
    for rank in (0, 1):
        for b in make_loader(spec, seed=0, epoch=0, rank=rank, world_size=2):
            assert int(b["lengths"].max()) <= 20 and int(b["lengths"].sum()) <= 64
            n += len(b["lengths"])
    assert n == N_ITEMS  # none dropped


def test_batches_match_atomica_collate(tmp_path):
    """The 4 reference items, collated by kind, equal ATOMICA's own batches key for key, dtype for dtype."""
    items = _reference_items()
    ref = np.load(BATCHES)
    for cls, kind, label in (("ClassifierModel", "labelled", "label_binary"),
                             ("MultiClassClassifierModel", "multiclass", "label_multiclass"),
                             ("AffinityPredictor", "affinity", None)):
        src = tmp_path / f"{kind}.pkl"
        src.write_bytes(pickle.dumps([{**it, **({"label": it[label]} if label else {})} for it in items]))
        batches = list(make_loader(DataSpec(str(src), kind=kind, allow_pickle=True), shuffle=False))
        assert len(batches) == 1
        batch = batches[0]
        assert list(batch) == ref[f"{cls}/__keys__"].tolist()
        for k, v in batch.items():
            expected = torch.from_numpy(ref[f"{cls}/{k}"])
            assert v.dtype == expected.dtype and torch.equal(v, expected), (cls, k)


def test_every_kind_yields_atomica_keys(dataset):
    path, _, _ = dataset
    ref = np.load(BATCHES)
    dtypes = dict(zip(ref["DenoisePretrainModel/__keys__"].tolist(), ref["DenoisePretrainModel/__dtypes__"].tolist()))
    base = {"X": torch.float32, "B": torch.int64, "A": torch.int64, "atom_positions": torch.int64,
            "block_lengths": torch.int64, "segment_ids": torch.int64, "lengths": torch.int64}
    for kind in ("plain", "prot_interface", "pretrain_torsion", "pretrain_masked_torsion", "pretrain_masked",
                 "pretrain_atom"):
        spec = DataSpec(path, kind=kind, max_n_vertex_per_gpu=150, max_n_vertex_per_item=60,
                        atom_noise=0.5 if kind == "pretrain_atom" else None,
                        torsion_noise=None if kind == "pretrain_atom" else 0.5)
        b = next(iter(make_loader(spec, seed=0, epoch=0)))
        if kind == "prot_interface":
            assert set(b) == {"prot", "cmplx"} and set(b["prot"]) == set(base) == set(b["cmplx"])
            assert torch.all(b["prot"]["segment_ids"] == 0)
            assert torch.equal(b["prot"]["lengths"], torch.bincount(
                torch.repeat_interleave(torch.arange(len(b["cmplx"]["lengths"])), b["cmplx"]["lengths"]),
                weights=(b["cmplx"]["segment_ids"] == 0).double()).long())
            continue
        for k, t in base.items():
            assert b[k].dtype == t, (kind, k)
        if kind == "pretrain_masked_torsion":  # ATOMICA's PretrainMaskedTorsionDataset batch, key for key
            assert list(b) == list(dtypes)
            for k, v in b.items():
                assert (v is None and dtypes[k] == "None") or str(v.dtype) == dtypes[k] or k == "modality", k
            n_atoms = len(b["A"])
            assert b["tor_edges"].shape == (2, len(b["tor_score"])) and int(b["tor_edges"].max()) < n_atoms
            assert torch.equal(b["tor_batch"], torch.sort(b["tor_batch"]).values)
            assert b["masked_blocks"].shape == b["B"].shape and torch.all(b["B"][b["masked_blocks"]] == 1)
        if kind == "pretrain_atom":
            assert b["atom_score"].shape == b["X"].shape and b["tor_edges"] is None
        if kind == "pretrain_masked":
            assert len(b["masked_labels"]) == int(b["masked_blocks"].sum())


def test_dropped_items_keep_the_batch_count(dataset):
    """Items a transform drops leave their batch smaller; an emptied batch borrows the next usable item."""
    path, _, _ = dataset
    loader = make_loader(DataSpec(path, kind="plain", max_n_vertex_per_gpu=50), seed=0, epoch=0)
    eb = loader.dataset
    keep = {int(eb.batches[-1][0])}  # only one item of the epoch survives
    dropper = EpochBatches(eb.items, eb.batches, eb.crop_to, None, DataSpec(path, kind="plain"), 0, 0,
                           lambda rec, rng: rec if rng is not None and rec["id"] in {eb.items[i]["id"] for i in keep}
                           else None)
    out = [dropper[b] for b in range(len(dropper))]
    assert len(out) == len(eb.batches) and all(len(b["lengths"]) == 1 for b in out)


def test_open_dataset_converts_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMICA_RAY_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "set.pkl"
    src.write_bytes(pickle.dumps(_variants(5)))
    with pytest.raises(DataError, match="refusing to unpickle"):
        open_dataset(str(src))
    ds = open_dataset(str(src), allow_pickle=True)
    assert ds.path.startswith(str(tmp_path / "cache")) and len(ds) == 5
    stamp = os.stat(os.path.join(ds.path, "items.parquet")).st_mtime_ns
    assert open_dataset(str(src), allow_pickle=True).path == ds.path
    assert os.stat(os.path.join(ds.path, "items.parquet")).st_mtime_ns == stamp  # reused, not rewritten


def test_missing_labels_are_reported(tmp_path):
    items = _variants(3)
    del items[1]["label"]
    del items[1]["affinity"]
    src = tmp_path / "nolabel.pkl"
    src.write_bytes(pickle.dumps(items))
    with pytest.raises(DataError, match=r"item 1 \(id 'synthetic_0_1_PL_v1'\), field label"):
        make_loader(DataSpec(str(src), kind="labelled", allow_pickle=True))


def test_items_without_torsion_masks_still_pretrain(tmp_path):
    items = _variants(6)
    for it in items:
        del it["data"]["torsion_mask"]
    src = tmp_path / "nomask.pkl"
    src.write_bytes(pickle.dumps(items))
    spec = DataSpec(str(src), kind="pretrain_torsion", allow_pickle=True, max_n_vertex_per_gpu=200)
    batches = list(make_loader(spec, seed=0, epoch=0))
    assert sum(len(b["lengths"]) for b in batches) == 6  # masks computed on the fly; no item dropped
    assert all(b["tor_edges"].shape[1] == len(b["tor_score"]) > 0 for b in batches)
