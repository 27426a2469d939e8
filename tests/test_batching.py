"""Epoch plans: a pure function of their inputs, whatever the world size; every item once, also across a resize;
balanced steps; the budget holds."""

import numpy as np
import pytest

from atomica_ray.data.batching import deal, eligible_items, item_caps, plan_epoch

SIZE_KEYS = ("n_blocks", "n_atoms", "n_blocks0", "n_atoms0", "n_atoms1", "n_rot0", "n_rot1", "n_mask0", "n_mask1")


def _index(n: int, seed: int = 0, low: int = 10, high: int = 400) -> dict:
    rng = np.random.default_rng(seed)
    idx = {k: rng.integers(0, 5, n).astype(np.int32) for k in SIZE_KEYS}
    idx["n_blocks"] = rng.integers(low, high, n).astype(np.int32)
    idx["n_blocks0"] = (idx["n_blocks"] * 0.7).astype(np.int32)
    idx["n_atoms0"] = idx["n_atoms1"] = np.full(n, 10, np.int32)
    return idx


def _check(plan, n_items, budget, each_once=True):
    for b in plan.batches:
        assert len(b) >= 1 and plan.sizes[b].sum() <= budget
    items = np.concatenate(plan.batches)
    if each_once:
        assert np.array_equal(np.sort(items), np.arange(n_items))


def _seen(plan, world_size, per_step, start=0, stop=None):
    """Items the ranks train on from batch position `start` to `stop` (a step boundary or the end)."""
    steps = plan.steps(world_size, per_step, start)
    if stop is not None:
        steps = steps[: (stop - start) // per_step]
    return [i for step in steps for rank in step.ranks for j in rank for i in plan.batches[j].tolist()]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_every_item_once_balanced_steps(world_size):
    idx = _index(997)
    plan = plan_epoch(idx, "labelled", 1000, 256, seed=0, epoch=4)
    _check(plan, 997, 1000)
    per_step = 2 * world_size
    steps = plan.steps(world_size, per_step)
    assert len(steps) == -(-len(plan.batches) // per_step) and all(s.size == per_step for s in steps[:-1])
    assert sorted(_seen(plan, world_size, per_step)) == list(range(997))  # every item once
    for step in steps[:-1]:  # full steps: 2 batches per rank, near-equal block totals (within one batch)
        assert [len(r) for r in step.ranks] == [2] * world_size
        totals = [sum(int(plan.sizes[plan.batches[j]].sum()) for j in r) for r in step.ranks]
        assert max(totals) - min(totals) <= 1000


def test_batches_do_not_depend_on_the_world_size():
    """A resize mid-epoch (elastic workers): up to position p on 3 ranks, then on 2, sees every item once."""
    idx = _index(500)
    plan = plan_epoch(idx, "labelled", 900, None, seed=1, epoch=2)
    per_step = 6  # e.g. --num-workers 2:6 with grad_accum 1: the global batch of every step
    p = 4 * per_step
    resized = _seen(plan, 3, per_step, 0, p) + _seen(plan, 2, per_step, p)
    assert sorted(resized) == list(range(500))
    assert sorted(_seen(plan, 2, per_step, 0, p)) == sorted(_seen(plan, 3, per_step, 0, p))  # the same items
    # a step holds the same batches whatever the world size; only their dealing to ranks differs
    for a, b in zip(plan.steps(3, per_step), plan.steps(2, per_step)):
        assert sorted(j for r in a.ranks for j in r) == sorted(j for r in b.ranks for j in r)


def test_deal_counts_differ_by_at_most_one():
    # rank 0 has room for 2: 9 to rank 0, 5 to the lighter rank 1, 1 to rank 0 (the only one with room)
    assert [r.tolist() for r in deal(np.array([5, 9, 1]), 2)] == [[1, 2], [0]]
    assert [len(r) for r in deal(np.array([3] * 7), 3)] == [3, 2, 2]
    assert [len(r) for r in deal(np.array([3]), 4)] == [1, 0, 0, 0]  # a short last step leaves ranks idle


def test_pure_function_of_seed_and_epoch():
    idx = _index(300)
    a = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1)
    b = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1)
    c = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=2)
    assert np.array_equal(np.concatenate(a.batches), np.concatenate(b.batches))
    assert not np.array_equal(np.concatenate(a.batches), np.concatenate(c.batches))
    ordered = plan_epoch(idx, "labelled", 800, None, seed=3, epoch=1, shuffle=False)
    assert np.array_equal(np.concatenate(ordered.batches), np.arange(300))


def test_fewer_items_than_ranks_leave_ranks_idle():
    idx = _index(3)
    plan = plan_epoch(idx, "labelled", 1000, None, seed=0, epoch=0)
    _check(plan, 3, 1000)
    assert sorted(_seen(plan, 4, 4)) == [0, 1, 2]  # no item repeated to fill the ranks


def test_oversized_items_are_cropped_not_dropped():
    idx = _index(200, low=100, high=3000)
    sizes, crop_to = item_caps(idx, "labelled", 1000, 256)
    big = idx["n_blocks"] > 256
    assert np.all(crop_to[big] == 256) and np.all(crop_to[~big] == 0) and sizes.max() <= 256
    # without an item cap, items above the budget are cropped to the budget
    sizes, crop_to = item_caps(idx, "labelled", 1000, None)
    assert np.all(crop_to[idx["n_blocks"] > 1000] == 1000) and sizes.max() <= 1000
    _check(plan_epoch(idx, "labelled", 1000, None, 0, 0), 200, 1000)
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
    plan = plan_epoch(idx, "labelled", 1000, None, 0, 0, balance="label", groups=labels)
    items = np.concatenate(plan.batches)
    assert len(items) == 1000
    frac = labels[items].mean()
    assert 0.43 < frac < 0.57, frac  # ~1:1 after weighting 1/count (was 1:9)
    mods = np.r_[np.zeros(990), np.ones(10)]
    plan = plan_epoch(idx, "labelled", 1000, None, 0, 0, balance="modality", groups=mods)
    frac = mods[np.concatenate(plan.batches)].mean()
    # weights 1/log(count): 10 * (1/log 10) vs 990 * (1/log 990) -> expected share ~0.029
    assert 0.01 < frac < 0.06, frac


def test_plan_of_100k_items_needs_no_decoding():
    idx = _index(100_000)
    plan = plan_epoch(idx, "pretrain_masked_torsion", 1000, 256, seed=0, epoch=0)
    steps = plan.steps(world_size=4, per_step=8)
    assert {len(r) for s in steps[:-1] for r in s.ranks} == {2} and plan.n_eligible <= 100_000
