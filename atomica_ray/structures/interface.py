"""The interface cut: which blocks of two sides are kept (ATOMICA's `blocks_interface`).

A block of side 1 and a block of side 2 are in contact when, for some atom slot k, the k-th atom of one and the
k-th atom of the other are closer than `dist_th` (8 Å by default). This is ATOMICA's rule as its code computes it
(GET's `dist_matrix_from_coords` on blocks padded to a common length): atoms are compared slot by slot, not every
atom with every atom, so a one-atom ligand block is compared with the first atom (N) of each residue only. We keep
the rule because the items must equal ATOMICA's. Every block of either side with at least one contact is kept, in
its original order.
"""

from __future__ import annotations

import numpy as np

from .blocks import Block


def padded_coords(blocks: list[Block], slots: int) -> tuple[np.ndarray, np.ndarray]:
    """coords [n_blocks, slots, 3] (0 where padded) and valid [n_blocks, slots]."""
    coords = np.zeros((len(blocks), slots, 3))
    valid = np.zeros((len(blocks), slots), dtype=bool)
    for i, b in enumerate(blocks):
        coords[i, :len(b)] = b.coords
        valid[i, :len(b)] = True
    return coords, valid


def slot_distances(blocks1: list[Block], blocks2: list[Block]) -> np.ndarray:
    """[n1, n2] minimum over atom slots k of |x1[i, k] - x2[j, k]| (ATOMICA's block distance); 1e6 when no slot
    holds an atom in both blocks."""
    slots = max([len(b) for b in blocks1 + blocks2], default=0)
    c1, v1 = padded_coords(blocks1, slots)
    c2, v2 = padded_coords(blocks2, slots)
    out = np.full((len(blocks1), len(blocks2)), np.inf)
    for k in range(slots):  # one slot at a time: [n1, n2] memory instead of [n1, n2, slots, 3]
        d = np.sqrt(((c1[:, None, k] - c2[None, :, k]) ** 2).sum(-1))  # [n1, n2]
        d = d + ~(v1[:, None, k] & v2[None, :, k]) * 1e6
        np.minimum(out, d, out=out)
    return out


def interface(blocks1: list[Block], blocks2: list[Block], dist_th: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the blocks of each side in contact with the other side."""
    if not blocks1 or not blocks2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    dist = slot_distances(blocks1, blocks2)
    contact = dist < dist_th
    return np.nonzero(contact.any(1))[0], np.nonzero(contact.any(0))[0]
