"""Crop an item around its interface (ATOMICA `CropTransform`, `utils/noise_transforms.py`).

Block positions are the centroids of their atoms. One of the 5 closest (segment-0 block, segment-1 block) pairs is
drawn as the centre; every block is ranked by its distance to the centre block of its own segment, and the closest
ones over both segments are kept. Global blocks are rebuilt (one per non-empty segment, at the mean of its kept
atoms) and torsion masks are made consistent with the kept atoms: side-chain masks (type 0) are per block and are
subset; whole-segment masks (type 1) are recomputed from the kept atoms (cutting a molecule changes which bonds
are rotatable), as ATOMICA recomputes them.

Per-block labels (`block_labels`, one per non-global block) are subset with the blocks they label.

`max_blocks` counts every block of the result, global blocks included, so `crop_item(d, n)` fits a per-item cap n
(ATOMICA: `CropTransform(max_n_vertex_per_item - 2)` keeps n - 2 non-global blocks of a two-segment item).
Differences: kept blocks stay in their original order (ATOMICA orders them by distance to the centre, which no model
reads), and a single-segment item is cropped around a random block of it (ATOMICA cannot crop those).
"""

from __future__ import annotations

import numpy as np

from atomica_ray.data.torsion import RESIDUE_BLOCKS, _ranges, segment_torsion_mask
from atomica_ray.data.vocab import ATOM_GLOBAL, GLB

TOP_K_PAIRS = 5
ATOM_POSITION_GLOBAL = 2  # 'g' in the atom-position vocabulary
PER_ATOM = ("X", "A", "atom_positions")
PER_BLOCK = ("B", "block_lengths", "segment_ids")


def block_centroids(X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[Nblock, 3] mean of each block's atoms."""
    block_of = np.repeat(np.arange(len(lengths)), lengths)
    sums = np.stack([np.bincount(block_of, weights=X[:, k], minlength=len(lengths)) for k in range(3)], 1)
    return sums / np.maximum(lengths, 1)[:, None]


def choose_blocks(centroids: np.ndarray, seg_blocks: list[np.ndarray], budget: int, rng: np.random.Generator):
    """Indices of the non-global blocks to keep (sorted), at most `budget` of them."""
    present = [b for b in seg_blocks if len(b)]  # segments 0 and 1 (records have no others)
    if len(present) == 2:
        b0, b1 = present
        c0, c1 = centroids[b0], centroids[b1]
        d = np.linalg.norm(c0[:, None, :] - c1[None, :, :], axis=-1)  # [n0, n1]
        closest = np.argsort(d, axis=None, kind="stable")[:TOP_K_PAIRS]
        i0, i1 = np.unravel_index(rng.choice(closest), d.shape)
        dist = np.concatenate([np.linalg.norm(c0 - c0[i0], axis=1), np.linalg.norm(c1 - c1[i1], axis=1)])
        candidates = np.concatenate([b0, b1])
    else:
        candidates = present[0]
        centre = candidates[rng.integers(len(candidates))]
        dist = np.linalg.norm(centroids[candidates] - centroids[centre], axis=1)
    keep = candidates[np.argsort(dist, kind="stable")[:budget]]
    return np.sort(keep)


def crop_item(data: dict, max_blocks: int, rng: np.random.Generator, return_indices: bool = False):
    """The item cropped to at most `max_blocks` blocks (globals included); returned unchanged if it already fits.

    With `return_indices`, also returns the old block index of every new block ([new Nblock]; a rebuilt global
    block maps to its segment's old global block, or -1 if there was none).
    """
    B = np.asarray(data["B"], dtype=np.int64)
    if len(B) <= max_blocks:
        return (data, np.arange(len(B))) if return_indices else data
    lengths = np.asarray(data["block_lengths"], dtype=np.int64)
    seg = np.asarray(data["segment_ids"], dtype=np.int64)
    X = np.asarray(data["X"])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    segments = np.unique(seg)
    seg_blocks = [np.nonzero((seg == s) & (B != GLB))[0] for s in segments]
    n_present = sum(1 for b in seg_blocks if len(b))
    if n_present == 0:
        raise ValueError(f"crop_item: item {data.get('id')!r} has no non-global block to crop around")
    budget = max_blocks - n_present  # room left once every segment has its global block
    if budget < 1:
        raise ValueError(f"crop_item: max_blocks={max_blocks} leaves no room besides {n_present} global blocks "
                         f"(item {data.get('id')!r})")
    keep = choose_blocks(block_centroids(X, lengths), seg_blocks, budget, rng)

    # new block order: per segment, its rebuilt global block then its kept blocks in original order
    new_blocks = []
    for s, blocks in zip(segments, seg_blocks):
        kept = keep[np.isin(keep, blocks)]
        if len(kept) == 0:
            continue
        old_glob = np.nonzero((seg == s) & (B == GLB))[0]
        new_blocks.append(np.concatenate([[old_glob[0] if len(old_glob) else -1], kept]))
    order = np.concatenate(new_blocks)  # [new Nblock]; -1 = a global block with no old counterpart
    is_glob = np.zeros(len(order), dtype=bool)
    is_glob[np.cumsum([0] + [len(b) for b in new_blocks[:-1]])] = True

    # per-block arrays
    new_seg = np.concatenate([np.full(len(b), seg[b[1]]) for b in new_blocks])
    new_B = np.where(is_glob, GLB, B[np.maximum(order, 0)])
    new_len = np.where(is_glob, 1, lengths[np.maximum(order, 0)])
    # per-atom arrays: a placeholder row for each global atom, filled below
    src = np.where(np.repeat(is_glob, new_len), -1,
                   _ranges(np.where(is_glob, 0, starts[np.maximum(order, 0)]), new_len))  # [new Natom]
    glob_atoms = np.nonzero(src < 0)[0]
    out = dict(data)
    newX = np.array(X[np.maximum(src, 0)])
    atom_seg = np.repeat(new_seg, new_len)
    for g in glob_atoms:
        members = (atom_seg == atom_seg[g]) & (src >= 0)
        newX[g] = newX[members].mean(0)
    out["X"] = newX
    A = np.array(np.asarray(data["A"])[np.maximum(src, 0)])
    A[glob_atoms] = ATOM_GLOBAL
    out["A"] = A
    if data.get("atom_positions") is not None:
        pos = np.array(np.asarray(data["atom_positions"])[np.maximum(src, 0)])
        pos[glob_atoms] = ATOM_POSITION_GLOBAL
        out["atom_positions"] = pos
    out["B"], out["block_lengths"], out["segment_ids"] = new_B, new_len, new_seg

    if data.get("torsion_mask") is not None:
        out["torsion_mask"] = _crop_torsion_masks(data["torsion_mask"], segments, seg_blocks, keep, B, out)
    if data.get("block_embeddings") is not None:
        emb = np.asarray(data["block_embeddings"])
        out["block_embeddings"] = np.where((order >= 0)[:, None], emb[np.maximum(order, 0)], 0).astype(emb.dtype)
    for s in (0, 1):
        key = f"block_embeddings{s}"
        if data.get(key) is not None:  # rows = the blocks of segment s, its global block first
            emb = np.asarray(data[key])
            row_in_segment = np.cumsum(seg == s) - 1  # [Nblock] row of each old block of segment s
            picked = order[new_seg == s]
            out[key] = emb[np.where(picked >= 0, row_in_segment[np.maximum(picked, 0)], 0)]
    if data.get("block_labels") is not None:  # one per non-global block: follow the kept blocks
        out["block_labels"] = subset_block_labels(data["block_labels"], B, order[~is_glob])
    if data.get("block_to_pdb_indexes"):
        old_to_new = {int(o): n for n, o in enumerate(order) if o >= 0}
        out["block_to_pdb_indexes"] = {old_to_new[int(k)]: v for k, v in data["block_to_pdb_indexes"].items()
                                       if int(k) in old_to_new}
    return (out, order) if return_indices else out


def subset_block_labels(labels: np.ndarray, B: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The labels of the kept non-global blocks. `labels` has one entry per non-global block of the original item
    (`B` its block types), `kept` the original indices of the non-global blocks kept, in their new order."""
    rank = np.cumsum(np.asarray(B) != GLB) - 1  # [Nblock] position of each non-global block among them
    return np.asarray(labels)[rank[kept]]


def _crop_torsion_masks(masks: list, segments, seg_blocks, keep, B, new_data) -> list:
    out = []
    for s, entry in enumerate(masks):
        if entry is None:
            out.append(None)
            continue
        where = np.nonzero(segments == s)[0]
        blocks = seg_blocks[where[0]] if len(where) else np.zeros(0, np.int64)
        kept_pos = np.nonzero(np.isin(blocks, keep))[0]  # positions of kept blocks within the segment
        if entry["type"] == 0 and np.isin(B[blocks[kept_pos]], RESIDUE_BLOCKS).any():
            out.append({"type": 0, "edges": [entry["edges"][i] for i in kept_pos],
                        "mask_rotate": [entry["mask_rotate"][i] for i in kept_pos]})
        elif entry["type"] == 1 and len(kept_pos) == len(blocks):
            out.append(entry)
        else:  # recompute over the kept atoms (a type-0 segment left without residues becomes type 1)
            seg_new = np.asarray(new_data["segment_ids"])
            normal = (seg_new == s) & (np.asarray(new_data["B"]) != GLB)
            atoms = np.repeat(normal, new_data["block_lengths"])
            edges, mask = segment_torsion_mask(new_data["A"][atoms], new_data["X"][atoms]) if atoms.any() \
                else (None, None)
            out.append({"type": 1, "edges": edges, "mask_rotate": mask})
    return out
