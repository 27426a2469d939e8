"""Two sides of an interface -> one ATOMICA item (ATOMICA's `blocks_to_data` and `process_pdbs` id scheme).

  segments            side 1 (receptor, chain1) is segment 0, side 2 (partner or ligand, chain2) segment 1
  global block        each segment starts with a global block (block type GLB, one atom of the global atom type
                      and position code 'g') placed at the mean of the segment's atoms
  ids                 '<pdb_id>_<chain1 joined>_<chain2 joined>' for two sets of chains;
                      '<pdb_id>_<chain1 joined>_<ligand chain>_<lig_code>' for a ligand, with '_<k>' appended
                      when several ligands match (k counts every matching ligand, with an interface or not)
  block_to_pdb_indexes  block index -> '<chain>_<number>[insertion code]': 1..n0 for segment 0 (index 0 is its
                      global block), n0 + 2 .. for segment 1 (n0 + 1 is the second global block)
"""

from __future__ import annotations

import numpy as np

from atomica_ray.data.vocab import ATOM_GLOBAL, GLB, get_vocab

from .blocks import Block
from .interface import interface

GLOBAL_POSITION = get_vocab(None).atom_pos_to_idx("g")


def pair_id(pdb_id: str, chains1: list[str], chains2: list[str]) -> str:
    return f"{pdb_id}_{''.join(chains1)}_{''.join(chains2)}"


def ligand_id(pdb_id: str, chains1: list[str], lig_chain: str, lig_code: str, k: int, n_ligands: int) -> str:
    base = f"{pdb_id}_{''.join(chains1)}_{lig_chain}_{lig_code}"
    return f"{base}_{k}" if n_ligands > 1 else base


def item_data(*sides: list[Block]) -> dict:
    """ATOMICA's `data` dict: a global block then the blocks of each non-empty side, segment ids 0, 1, ..."""
    B, A, X, P, lengths, segments = [], [], [], [], [], []
    for seg, blocks in enumerate(sides):
        if not blocks:
            continue
        coords = np.concatenate([b.coords for b in blocks])  # [n_atoms, 3]
        B.append(GLB)
        A.append(ATOM_GLOBAL)
        P.append(GLOBAL_POSITION)
        X.append(coords.mean(0)[None])
        lengths.append(1)
        for b in blocks:
            B.append(b.type)
            A.extend(b.atom_types)
            P.extend(b.positions)
            lengths.append(len(b))
        X.append(coords)
        segments.extend([seg] * (len(blocks) + 1))
    return {"X": np.concatenate(X).astype(np.float32), "B": B, "A": A, "atom_positions": P,
            "block_lengths": lengths, "segment_ids": segments}


def interface_item(item_id: str, side1: list[Block], side2: list[Block], dist_th: float) -> dict | None:
    """The item of the blocks of two sides within `dist_th` of each other, or None without an interface."""
    keep1, keep2 = interface(side1, side2, dist_th)
    if len(keep1) == 0 or len(keep2) == 0:
        return None
    blocks1 = [side1[i] for i in keep1]
    blocks2 = [side2[i] for i in keep2]
    b2p = {i + 1: b.pdb_index for i, b in enumerate(blocks1)}
    b2p.update({len(blocks1) + 2 + i: b.pdb_index for i, b in enumerate(blocks2)})
    return {"id": item_id, "data": item_data(blocks1, blocks2), "block_to_pdb_indexes": b2p}
