"""Block masking for masked-block pretraining (ATOMICA `PretrainMaskedDataset` / `PretrainMaskedTorsionDataset`).

Candidates are the blocks whose type is maskable (every non-special block: amino acids, nucleotides, elements,
fragments) in both segments; max(1, int(p·n)) of them are drawn without replacement. A masked block becomes
B = MASK with a single atom of type 'm' (atom-type mask) at the centroid of its atoms, block length 1; its label
is the index of its original type among the maskable classes. ATOMICA drops items where segment 0 or segment 1
has no candidate; here `sample_masked_blocks` returns None for them.

One deviation: `atom_positions` is shortened like `A` (the masked atom gets the position code 'm'); ATOMICA left
it at its pre-masking length, which no model reads.
"""

from __future__ import annotations

import numpy as np

from atomica_ray.data.vocab import ATOM_MASK, MASK, Vocab

ATOM_POSITION_MASK = 1  # 'm' in the atom-position vocabulary


def sample_masked_blocks(B: np.ndarray, segment_ids: np.ndarray, proportion: float, vocab: Vocab,
                         rng: np.random.Generator) -> np.ndarray | None:
    """Masked-block flags [Nblock] bool, or None when segment 0 or 1 has no maskable block (ATOMICA drops those)."""
    B, seg = np.asarray(B), np.asarray(segment_ids)
    maskable = (B >= 0) & (B < len(vocab)) & (vocab.block_to_masked_class[np.clip(B, 0, len(vocab) - 1)] >= 0)
    cand0, cand1 = np.nonzero(maskable & (seg == 0))[0], np.nonzero(maskable & (seg == 1))[0]
    if len(cand0) == 0 or len(cand1) == 0:
        return None
    candidates = np.concatenate([cand0, cand1])
    n = max(1, int(proportion * len(candidates)))
    masked = np.zeros(len(B), dtype=bool)
    masked[rng.choice(candidates, size=n, replace=False)] = True
    return masked


def mask_blocks(data: dict, masked: np.ndarray, vocab: Vocab) -> tuple[dict, np.ndarray, np.ndarray]:
    """Rewrite the masked blocks of `data` (a copy is returned).

    Returns (data, masked_labels [n_masked] (maskable-class index, in block order), atom_map [Natom_old] giving the
    new index of every old atom: atoms of a masked block all map to its single mask atom).
    """
    masked = np.asarray(masked, dtype=bool)
    B = np.array(data["B"], dtype=np.int64)
    lengths = np.array(data["block_lengths"], dtype=np.int64)
    X = np.asarray(data["X"])
    n_atoms = len(X)
    block_of = np.repeat(np.arange(len(B)), lengths)  # [Natom]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    labels = vocab.block_to_masked_class[B[masked]]
    if (labels < 0).any():
        raise ValueError(f"cannot mask blocks of non-maskable types {sorted(set(B[masked][labels < 0].tolist()))}")
    # keep every atom of unmasked blocks and the first atom of each masked block (rewritten below)
    first = np.zeros(n_atoms, dtype=bool)
    first[starts[lengths > 0]] = True
    atom_masked = masked[block_of]
    keep = ~atom_masked | first
    new_index = np.cumsum(keep) - 1  # [Natom] new index of kept atoms
    atom_map = np.where(atom_masked, new_index[starts[block_of]], new_index)

    centroid = np.stack([np.bincount(block_of, weights=X[:, k], minlength=len(B)) for k in range(3)], 1)
    centroid /= np.maximum(lengths, 1)[:, None]  # [Nblock, 3]
    mask_slots = new_index[starts[masked]]  # new atom index of each masked block's atom

    out = dict(data)
    newX = np.array(X[keep])
    newX[mask_slots] = centroid[masked]
    out["X"] = newX
    A = np.array(np.asarray(data["A"])[keep])
    A[mask_slots] = ATOM_MASK
    out["A"] = A
    if "atom_positions" in data and data["atom_positions"] is not None:
        pos = np.array(np.asarray(data["atom_positions"])[keep])
        pos[mask_slots] = ATOM_POSITION_MASK
        out["atom_positions"] = pos
    B[masked] = MASK
    lengths[masked] = 1
    out["B"], out["block_lengths"] = B, lengths
    out["segment_ids"] = np.asarray(data["segment_ids"])
    seg = np.asarray(data["segment_ids"])
    if data.get("block_embeddings") is not None:
        emb = np.array(data["block_embeddings"], dtype=np.float64)
        emb[masked] = 0.0
        out["block_embeddings"] = emb
    for s in (0, 1):  # per-segment embeddings: one row per block of that segment, its global block included
        key = f"block_embeddings{s}"
        if data.get(key) is not None:
            emb = np.array(data[key], dtype=np.float64)
            emb[masked[seg == s]] = 0.0
            out[key] = emb
    return out, labels.astype(np.int64), atom_map
