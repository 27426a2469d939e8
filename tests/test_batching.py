"""Epoch plans: a pure function of their inputs; every item once; equal batch counts; the budget holds."""

import numpy as np
import pytest

from atomica_ray.data.batching import eligible_items, item_caps, pack, plan_epoch, shard

SIZE_KEYS = ("n_blocks", "n_atoms", "n_blocks0", "n_atoms0", "n_atoms1", "n_rot0", "n_rot1", "n_mask0", "n_mask1")


def _index(n: int, seed: int = 0, low: int = 10, high: int = 400) -> dict:
    rng = np.random.default_rng(seed)
    idx = {k: rng.integers(0, 5, n).astype(np.int32) for k in SIZE_KEYS}
    idx["n_blocks"] = rng.integers(low, high, n).astype(np.int32)
    idx["n_blocks0"] = (idx["n_blocks"] * 0.7).astype(np.int32)
    idx["n_atoms0"] = idx["n_atoms1"] = np.full(n, 10, np.int32)
    return idx


def _check(plan, n_items, budget, world_size, each_once=True):
    counts = [len(r) for r in plan.batches]
    assert len(set(counts)) == 1, counts  # every rank the same number of batches
    for rank in plan.batches:
        for b in rank:
            assert len(b) >= 1 and plan.sizes[b].sum() <= budget
    items = np.concatenate([b for rank in plan.batches for b in rank])
    if each_once:
        assert np.array_equal(np.sort(items), np.arange(n_items))


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_every_item_once_equal_counts(world_size):
    idx = _index(997)
    plan = plan_epoch(idx, "labelled", 1000, 256, seed=0, epoch=4, world_size=world_size)
    _check(plan, 997, 1000, world_size)
    totals = [sum(int(plan.sizes[b].sum()) for b in r) for r in plan.batches]
    assert max(totals) - min(totals) <= 1000  # near-equal block totals (within one batch)
    assert plan.repeated == 0


def test_pure_function_of_seed_and_epoch():
    idx = _index(300)
    a = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1, world_size=2)
    b = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1, world_size=2)
    c = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=2, world_size=2)
    flat = lambda p: np.concatenate([x for r in p.batches for x in r])  # noqa: E731
    assert np.array_equal(flat(a), flat(b))
    assert not np.array_equal(flat(a), flat(c))
    ordered = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1, world_size=1, shuffle=False)
    assert np.array_equal(flat(ordered), np.arange(300))


def test_split_to_divisible_counts():
    sizes = np.array([300] * 7)
    batches = pack(np.arange(7), sizes, 1000)  # 3 + 3 + 1 items
    assert [len(b) for b in batches] == [3, 3, 1]
    ranks, repeated = shard(batches, sizes, 4)  # 3 batches -> split into 4
    assert repeated == 0 and [len(r) for r in ranks] == [1, 1, 1, 1]
    assert sorted(np.concatenate([b for r in ranks for b in r]).tolist()) == list(range(7))


def test_fewer_items_than_ranks_repeat():
    idx = _index(3)
    plan = plan_epoch(idx, "labelled", 1000, None, seed=0, epoch=0, world_size=4)
    _check(plan, 3, 1000, 4, each_once=False)
    assert plan.repeated == 1


def test_oversized_items_are_cropped_not_dropped():
    idx = _index(200, low=100, high=3000)
    sizes, crop_to = item_caps(idx, "labelled", 1000, 256)
    big = idx["n_blocks"] > 256
    assert np.all(crop_to[big] == 256) and np.all(crop_to[~big] == 0) and sizes.max() <= 256
    # without an item cap, items above the budget are cropped to the budget
    sizes, crop_to = item_caps(idx, "labelled", 1000, None)
    assert np.all(crop_to[idx["n_blocks"] > 1000] == 1000) and sizes.max() <= 1000
    _check(plan_epoch(idx, "labelled", 1000, None, 0, 0, 2), 200, 1000, 2)
    # prot_interface counts complex + protein; the complex is cropped so both fit
    sizes, crop_to = item_caps(idx, "prot_interface", 1000, None)
    assert sizes.max() <= 1000 and np.all(crop_to[idx["n_blocks"] > 500] == 500)
    small = idx["n_blocks"] <= 500
    assert np.array_equal(sizes[small], (idx["n_blocks"] + idx["n_blocks0"])[small])


def test_kind_filters():
    idx = _index(6)
    idx["n_rot0"][:] = [0, 3, 0, 0, 2, 1]
    idx["n_rot1"][:] = [0, 0, 2, 0, 0, 0]
    idx["n_atoms0"][:] = [9, 9, 9, 9, 2, 9]
    idx["n_mask0"][:] = [1, 1, 1, 0, 1, 1]
    idx["n_mask1"][:] = [1, 1, 0, 1, 1, 1]
    assert eligible_items(idx, "labelled").tolist() == [0, 1, 2, 3, 4, 5]
    assert eligible_items(idx, "pretrain_torsion").tolist() == [1, 2, 5]  # item 4: torsions only in a 2-atom segment
    assert eligible_items(idx, "pretrain_masked").tolist() == [0, 1, 4, 5]
    assert eligible_items(idx, "pretrain_masked_torsion").tolist() == [1, 5]
    idx["n_rot0"][:] = idx["n_rot1"][:] = -1  # no stored torsion masks: computed later, so kept
    assert eligible_items(idx, "pretrain_torsion").tolist() == [0, 1, 2, 3, 5]


def test_label_balance_resamples():
    idx = _index(1000)
    labels = np.r_[np.zeros(900), np.ones(100)]
    plan = plan_epoch(idx, "labelled", 1000, None, 0, 0, 1, balance="label", groups=labels)
    items = np.concatenate(plan.batches[0])
    assert len(items) == 1000
    frac = labels[items].mean()
    assert 0.43 < frac < 0.57, frac  # ~1:1 after weighting 1/count (was 1:9)
    mods = np.r_[np.zeros(990), np.ones(10)]
    plan = plan_epoch(idx, "labelled", 1000, None, 0, 0, 1, balance="modality", groups=mods)
    frac = mods[np.concatenate(plan.batches[0])].mean()
    # weights 1/log(count): 10 * (1/log 10) vs 990 * (1/log 990) -> expected share ~0.029
    assert 0.01 < frac < 0.06, frac


def test_plan_of_100k_items_needs_no_decoding():
    idx = _index(100_000)
    plan = plan_epoch(idx, "pretrain_masked_torsion", 1000, 256, seed=0, epoch=0, world_size=4)
    assert len({len(r) for r in plan.batches}) == 1 and plan.n_eligible <= 100_000
