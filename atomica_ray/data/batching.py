"""Epoch plans: which items, in which batches, on which rank.

A plan is a pure function of (size index, kind, budget, seed, epoch, world_size, shuffle, balance): no item is
decoded, so planning a 100k-item epoch takes milliseconds, and a resumed run re-plans the same batches.

1. Eligible items: the kind's filters, from the size index (torsion kinds need a segment with rotatable bonds
   and > 2 atoms; masked kinds need maskable blocks in both segments, as ATOMICA's pretraining datasets do).
   Items stored without torsion masks stay eligible for torsion kinds: their masks are computed when noised,
   and the transform drops the item if it has none.
2. Order: a permutation from rng(seed, epoch), or, with `balance`, a resample with replacement of as many items
   (label: weight 1/count(label); modality: 1/log(count(modality)), counts below 2 taken as 2 so a singleton
   modality gets a finite weight, unlike ATOMICA).
3. Packing: items in that order fill a batch until the next would exceed the block budget (ATOMICA's
   `DynamicBatchWrapper`). An item's size is its block count after cropping: items above
   `max_n_vertex_per_item` are cropped to it, and items above the budget itself are cropped to the budget
   (never dropped).
4. Sharding: whole batches go to ranks, so every item of the epoch is seen exactly once (without balance).
   If the batch count is not divisible by world_size, the largest multi-item batches are split in two until it
   is. Batches are then dealt largest-first to the rank with the fewest blocks among those still short of
   their share (equal counts, near-equal block totals), and each rank keeps them in epoch order.
   Only when there are too few items to split (fewer items than ranks) are batches repeated to fill ranks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# kinds whose items need rotatable bonds / maskable blocks (ATOMICA drops the other items)
TORSION_KINDS = frozenset({"pretrain_torsion", "pretrain_masked_torsion"})
MASKED_KINDS = frozenset({"pretrain_masked_torsion", "pretrain_masked"})


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    batches: list[list[np.ndarray]]  # [rank][batch] -> global item indices
    sizes: np.ndarray  # [n_items] planned block count of every dataset item (after cropping)
    crop_to: np.ndarray  # [n_items] block cap applied when the item is loaded (0 = no crop)
    n_eligible: int  # items that pass the kind's filters
    repeated: int  # batches repeated to fill ranks (0 unless there are fewer items than ranks)

    def rank_batches(self, rank: int) -> list[np.ndarray]:
        return self.batches[rank]


def eligible_items(index: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """Indices of the items a kind can use (ATOMICA's pretraining datasets drop the others)."""
    n = len(index["n_blocks"])
    ok = np.ones(n, dtype=bool)
    if kind in TORSION_KINDS:
        # n_rot < 0: the item has no stored torsion masks; the transform computes them and may still drop it
        rot0, rot1 = index["n_rot0"] != 0, index["n_rot1"] != 0
        ok &= (rot0 & (index["n_atoms0"] > 2)) | (rot1 & (index["n_atoms1"] > 2))
    if kind in MASKED_KINDS:
        ok &= (index["n_mask0"] > 0) & (index["n_mask1"] > 0)
    if kind == "pretrain_atom":
        ok &= (index["n_atoms0"] > 2) | (index["n_atoms1"] > 2)
    return np.nonzero(ok)[0]


def item_caps(index: dict[str, np.ndarray], kind: str, budget: int,
              max_per_item: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(planned block count, crop cap or 0) per item.

    prot_interface items count twice (complex + protein alone, as ATOMICA's `len`), so their complex is cropped
    to (budget + 1) // 2 blocks at most: complex c blocks + protein <= c - 1 blocks fits the budget."""
    n = index["n_blocks"].astype(np.int64)
    if kind == "prot_interface":
        limit = (budget + 1) // 2
        cap = limit if max_per_item is None else min(max_per_item, limit)
        n0 = index["n_blocks0"].astype(np.int64)
        cropped = n > cap
        sizes = np.where(cropped, 2 * cap - 1, n + n0)
    else:
        cap = budget if max_per_item is None else min(max_per_item, budget)
        cropped = n > cap
        sizes = np.minimum(n, cap)
    return sizes, np.where(cropped, cap, 0)


def epoch_order(items: np.ndarray, seed: int, epoch: int, shuffle: bool, balance: str | None,
                groups: np.ndarray | None = None) -> np.ndarray:
    """The epoch's item sequence: `items` permuted (or in order), or a weighted resample for `balance`."""
    rng = np.random.default_rng([seed, epoch])
    if balance is None:
        return rng.permutation(items) if shuffle else items.copy()
    if groups is None:
        raise ValueError("balance needs the group (label or modality) of every item")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if balance == "label":
        w = 1.0 / counts[inverse]
    else:  # modality, ATOMICA's PretrainBalancedDynamicBatchWrapper
        w = 1.0 / np.log(np.maximum(counts[inverse], 2))
    return rng.choice(items, size=len(items), replace=True, p=w / w.sum())


def pack(order: np.ndarray, sizes: np.ndarray, budget: int) -> list[np.ndarray]:
    """Greedy dynamic batches over `order`: a new batch starts when the next item would exceed `budget`."""
    batches, start, total = [], 0, 0
    s = sizes[order].tolist()
    for i, n in enumerate(s):
        if total + n > budget and i > start:
            batches.append(order[start:i])
            start, total = i, 0
        total += n
    if len(s) > start:
        batches.append(order[start:])
    return batches


def _split(batch: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of a batch with near-equal block counts."""
    c = np.cumsum(sizes[batch])
    cut = int(np.clip(np.searchsorted(c, c[-1] / 2), 1, len(batch) - 1))
    return batch[:cut], batch[cut:]


def shard(batches: list[np.ndarray], sizes: np.ndarray, world_size: int) -> tuple[list[list[np.ndarray]], int]:
    """Deal batches to `world_size` ranks: equal batch counts, near-equal block totals (module docstring)."""
    batches = list(batches)
    # 1. split the largest splittable batches until the count divides evenly
    while len(batches) % world_size:
        totals = [int(sizes[b].sum()) if len(b) > 1 else -1 for b in batches]
        j = int(np.argmax(totals))
        if totals[j] < 0:
            break
        a, b = _split(batches[j], sizes)
        batches[j:j + 1] = [a, b]  # keeps epoch order
    # 2. too few items to split: repeat batches (deterministically) to fill the last ranks
    repeated = 0
    if len(batches) % world_size:
        repeated = world_size - len(batches) % world_size
        batches += [batches[i % len(batches)] for i in range(repeated)]
    per_rank = len(batches) // world_size
    totals = np.array([sizes[b].sum() for b in batches], dtype=np.int64)
    # 3. largest first to the lightest rank that still has room (stable sort: ties go in epoch order)
    load = np.zeros(world_size, dtype=np.int64)
    count = np.zeros(world_size, dtype=np.int64)
    owner = np.empty(len(batches), dtype=np.int64)
    for j in np.argsort(-totals, kind="stable"):
        room = np.nonzero(count < per_rank)[0]
        r = int(room[np.argmin(load[room])])
        owner[j] = r
        load[r] += totals[j]
        count[r] += 1
    return [[batches[j] for j in np.nonzero(owner == r)[0]] for r in range(world_size)], repeated


def plan_epoch(index: dict[str, np.ndarray], kind: str, budget: int, max_per_item: int | None, seed: int,
               epoch: int, world_size: int, shuffle: bool = True, balance: str | None = None,
               groups: np.ndarray | None = None) -> EpochPlan:
    """Every rank's batches for one epoch (see the module docstring)."""
    items = eligible_items(index, kind)
    if len(items) == 0:
        raise ValueError(f"no item of the dataset can be used for kind {kind!r}")
    sizes, crop_to = item_caps(index, kind, budget, max_per_item)
    order = epoch_order(items, seed, epoch, shuffle, balance, None if groups is None else groups[items])
    batches, repeated = shard(pack(order, sizes, budget), sizes, world_size)
    return EpochPlan(batches=batches, sizes=sizes, crop_to=crop_to, n_eligible=len(items), repeated=repeated)
