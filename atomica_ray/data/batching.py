"""Epoch plans: which items, in which batches, in which optimizer step, on which rank.

An epoch's batches are a pure function of (size index, kind, budget, seed, epoch, shuffle, balance), the same
whatever the number of ranks: no item is decoded, so planning a 100k-item epoch takes milliseconds, and a resumed
or resized run re-plans the same batches. Ranks only enter when the batches are dealt (step 4), so a run that
changes size mid-epoch (elastic workers) goes on from a position in that one sequence and still sees every item of
the epoch once.

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
4. Steps and ranks: from a position `start` in the batch sequence, every `per_step` consecutive batches make one
   optimizer step (the global batch; the epoch's last step may be shorter). A step's batches are dealt to the
   ranks, counts differing by at most one, largest first to the rank with the fewest blocks among those with room,
   and each rank keeps them in epoch order. A rank may get no batch in a short last step (the engine then adds a
   zero gradient), so every item of the epoch is seen exactly once (without balance) whatever the world size.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# kinds whose items need rotatable bonds / maskable blocks (ATOMICA drops the other items)
TORSION_KINDS = frozenset({"pretrain_torsion", "pretrain_masked_torsion"})
MASKED_KINDS = frozenset({"pretrain_masked_torsion", "pretrain_masked"})


@dataclasses.dataclass(frozen=True)
class Step:
    """One optimizer step of an epoch: `size` batches over all ranks, `ranks[r]` the indices (into the epoch's
    batch list) that rank r trains on."""

    size: int
    ranks: list[list[int]]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    batches: list[np.ndarray]  # [batch] -> global item indices, in epoch order (independent of the world size)
    sizes: np.ndarray  # [n_items] planned block count of every dataset item (after cropping)
    crop_to: np.ndarray  # [n_items] block cap applied when the item is loaded (0 = no crop)
    n_eligible: int  # items that pass the kind's filters

    def steps(self, world_size: int, per_step: int, start: int = 0) -> list[Step]:
        """The optimizer steps from batch position `start` to the end of the epoch, dealt to `world_size` ranks."""
        if per_step < 1 or world_size < 1:
            raise ValueError(f"per_step ({per_step}) and world_size ({world_size}) must be >= 1")
        if not 0 <= start <= len(self.batches):
            raise ValueError(f"start {start} outside 0..{len(self.batches)}")
        totals = np.array([self.sizes[b].sum() for b in self.batches], dtype=np.int64)
        out = []
        for first in range(start, len(self.batches), per_step):
            positions = np.arange(first, min(first + per_step, len(self.batches)))
            dealt = deal(totals[positions], world_size)
            out.append(Step(size=len(positions), ranks=[positions[d].tolist() for d in dealt]))
        return out

    def rank_batches(self, rank: int, world_size: int, per_step: int | None = None,
                     start: int = 0) -> list[np.ndarray]:
        """Global item indices of rank `rank`'s batches from `start` on (per_step: default one batch per rank)."""
        steps = self.steps(world_size, per_step or world_size, start)
        return [self.batches[j] for step in steps for j in step.ranks[rank]]


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


def deal(totals: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Positions 0..n-1 of one step's batches (block totals `totals`) to ranks: rank r gets n // world_size
    batches, one more for the first n % world_size ranks; largest batch first, to the rank with the fewest blocks
    that still has room (stable: ties go in epoch order). Returns each rank's positions, ascending."""
    n = len(totals)
    room = np.array([n // world_size + (r < n % world_size) for r in range(world_size)], dtype=np.int64)
    load = np.zeros(world_size, dtype=np.int64)
    owner = np.empty(n, dtype=np.int64)
    for j in np.argsort(-np.asarray(totals), kind="stable"):
        open_ranks = np.nonzero(room > 0)[0]
        r = int(open_ranks[np.argmin(load[open_ranks])])
        owner[j], load[r], room[r] = r, load[r] + totals[j], room[r] - 1
    return [np.nonzero(owner == r)[0] for r in range(world_size)]


def plan_epoch(index: dict[str, np.ndarray], kind: str, budget: int, max_per_item: int | None, seed: int,
               epoch: int, shuffle: bool = True, balance: str | None = None,
               groups: np.ndarray | None = None) -> EpochPlan:
    """The batches of one epoch, in order (see the module docstring); `EpochPlan.steps` deals them to ranks."""
    items = eligible_items(index, kind)
    if len(items) == 0:
        raise ValueError(f"no item of the dataset can be used for kind {kind!r}")
    sizes, crop_to = item_caps(index, kind, budget, max_per_item)
    order = epoch_order(items, seed, epoch, shuffle, balance, None if groups is None else groups[items])
    return EpochPlan(batches=pack(order, sizes, budget), sizes=sizes, crop_to=crop_to, n_eligible=len(items))
