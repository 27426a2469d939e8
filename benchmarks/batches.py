"""Batches of a chosen size from ATOMICA's reference batches (`bench_batches.pt`): split into items, packed again.

The reference batches are ATOMICA's dynamic batches of <= 1000 blocks. `batches_of(batches, budget)` re-packs their
items into batches of at most `budget` blocks (items reused, in order, when the budget needs more than the 8
batches hold), so that step time and memory can be given per block budget (250, 1000, 4000, 16000 blocks).
"""

from __future__ import annotations

import itertools

import torch

PER_BLOCK = ("B", "block_lengths", "segment_ids", "masked_blocks")
PER_ATOM = ("X", "A")
PER_ITEM = ("lengths", "label", "noisy_segment", "tr_score", "tr_eps", "rot_score")


def split_items(batch: dict) -> list[dict]:
    """The items of an ATOMICA batch, each with item-local indices."""
    lengths = batch["lengths"].tolist()
    block_end = torch.cumsum(batch["lengths"], 0).tolist()
    atom_end = torch.cumsum(batch["block_lengths"], 0)
    items = []
    masked = batch.get("masked_blocks")
    masked_rank = torch.cumsum(masked.long(), 0) if masked is not None else None
    for i, n in enumerate(lengths):
        b1 = block_end[i]
        b0 = b1 - n
        a0 = int(atom_end[b0 - 1]) if b0 > 0 else 0
        a1 = int(atom_end[b1 - 1])
        item = {k: batch[k][b0:b1] for k in PER_BLOCK if batch.get(k) is not None}
        item.update({k: batch[k][a0:a1] for k in PER_ATOM})
        item.update({k: batch[k][i:i + 1] for k in PER_ITEM if batch.get(k) is not None})
        if masked is not None:
            m0 = int(masked_rank[b0 - 1]) if b0 > 0 else 0
            item["masked_labels"] = batch["masked_labels"][m0:int(masked_rank[b1 - 1])]
        if batch.get("tor_edges") is not None:
            keep = batch["tor_batch"] == i
            item["tor_edges"] = batch["tor_edges"][:, keep] - a0
            item["tor_score"] = batch["tor_score"][keep]
        items.append(item)
    return items


def merge_items(items: list[dict]) -> dict:
    """One ATOMICA batch of these items (indices offset, segments and torsion items renumbered)."""
    out = {}
    for key in items[0]:
        if key == "tor_edges":
            offsets = itertools.accumulate([0] + [it["X"].shape[0] for it in items[:-1]])
            out[key] = torch.cat([it[key] + o for it, o in zip(items, offsets)], dim=1)
            out["tor_batch"] = torch.cat([torch.full((it[key].shape[1],), i, dtype=torch.long)
                                          for i, it in enumerate(items)])
        else:
            out[key] = torch.cat([it[key] for it in items])
    return out


def batches_of(batches: list[dict], budget: int, count: int = 8) -> list[dict]:
    """`count` batches of at most `budget` blocks (at least one item each) from the items of `batches`."""
    items = [it for b in batches for it in split_items(b)]
    pool = itertools.cycle(items)
    out, current, blocks = [], [], 0
    while len(out) < count:
        item = next(pool)
        n = item["B"].shape[0]
        if current and blocks + n > budget:
            out.append(merge_items(current))
            current, blocks = [], 0
        current.append(item)
        blocks += n
    return out


def prepared(batches: list[dict], budget: int | None, device) -> list[dict]:
    """The batches, re-packed into batches of <= `budget` blocks when it is given, with their tensors on `device`."""
    if budget:
        batches = batches_of(batches, budget)
    return [{k: v.to(device) for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
