"""Batches of a shard: consecutive items packed while a block budget and an atom budget both hold.

Items keep their order (outputs are written as they come). Nothing is cropped: an item larger than a budget is a
batch of its own, so every block gets its vectors and GPU memory is bounded by the budgets or by the largest item,
never by the dataset. The composition of a batch changes no output: the encoders run batch-independently
(models/backbone.py), so ATOMICA's reason to group batches by largest block (its vectors moved with a partner's
larger block) does not arise, and packing in order keeps batches full.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack(blocks: Sequence[int], atoms: Sequence[int], block_budget: int, atom_budget: int | None = None) -> list[
        list[int]]:
    """Indices of consecutive items, one list per batch."""
    if block_budget < 1 or (atom_budget is not None and atom_budget < 1):
        raise ValueError("budgets must be positive")
    batches: list[list[int]] = []
    current: list[int] = []
    n_blocks = n_atoms = 0
    for i, (b, a) in enumerate(zip(blocks, atoms)):
        over = n_blocks + b > block_budget or (atom_budget is not None and n_atoms + a > atom_budget)
        if current and over:
            batches.append(current)
            current, n_blocks, n_atoms = [], 0, 0
        current.append(i)
        n_blocks, n_atoms = n_blocks + b, n_atoms + a
    if current:
        batches.append(current)
    return batches


def pack_records(records: Sequence[dict], block_budget: int, atom_budget: int | None = None) -> list[list[dict]]:
    return [[records[i] for i in batch] for batch in
            pack([len(r["B"]) for r in records], [len(r["A"]) for r in records], block_budget, atom_budget)]
