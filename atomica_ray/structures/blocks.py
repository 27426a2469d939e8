"""ATOMICA's blocks: a residue or nucleotide per block, or one block per small-molecule atom.

The rules (ATOMICA `data/converter/pdb_to_list_blocks.py`, `pdb_lig_to_blocks.py`, `data/pdb_utils.py`):

  polymer chain   every residue but waters, in file order; a HETATM residue whose (number, insertion code) repeats
                  an earlier kept residue of the chain is skipped; hydrogens ('H') are dropped, deuterium ('D') is
                  kept (its atom type is the mask type, as ATOMICA's vocabulary has no 'D'); MSE counts as MET;
                  any other name outside the vocabulary (modified residues, ions, ligands) becomes one UNK block
                  holding its heavy atoms; trailing UNK blocks of a chain are dropped (solvent and ligands listed
                  after the polymer), and a chain left empty does not exist
  block type      the residue name looked up among the vocabulary's abbreviations. Those include element symbols
                  and, under a fragment vocabulary, fragment SMILES, so 'U' (uridine written as 'U') is the
                  uranium block and 'K' the potassium block, as in ATOMICA
  ligand          HETATM residues named `lig_code` in the ligand chain (and numbered `lig_resi` if given), each
                  one a separate ligand; one block per heavy atom, typed by its element
  atom type       the element in ATOMICA's case ('CL' -> 'Cl'); unknown elements get the mask type
  position code   the atom name with the element's letters stripped from its start and digits removed
                  ('CA' -> 'A', "C1'" -> "'", 'OP1' -> 'P'); codes outside the vocabulary get the mask code
  pdb index       '<chain>_<number><insertion code>' of residues; '<chain>_<number>' of ligand blocks
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atomica_ray.data.vocab import UNK, Vocab

from .read import Atom, Chain, Residue


@dataclass
class Block:
    type: int  # block vocabulary index
    atom_types: list[int]  # [n] atom vocabulary indices
    positions: list[int]  # [n] atom-position vocabulary indices
    coords: np.ndarray  # [n, 3] float64 (float32-rounded values)
    pdb_index: str

    def __len__(self) -> int:
        return len(self.atom_types)


def atomica_element(element: str) -> str:
    """ATOMICA's spelling of an element read upper case: 'CL' -> 'Cl', 'C' -> 'C'."""
    element = element.upper()
    return element[0] + element[1].lower() if len(element) == 2 else element


def position_code(atom_name: str, element: str) -> str:
    """ATOMICA's atom-position code: the name without leading letters of the (upper-case) element, no digits."""
    return "".join(c for c in atom_name.lstrip(element) if not c.isdigit())


def is_hydrogen(atom: Atom) -> bool:
    return atom.element == "H"


def atoms_block(block_type: int, atoms: list[Atom], pdb_index: str, vocab: Vocab) -> Block:
    return Block(
        type=block_type,
        atom_types=[vocab.atom_to_idx(atomica_element(a.element)) for a in atoms],
        positions=[vocab.atom_pos_to_idx(position_code(a.name, a.element)) for a in atoms],
        coords=np.array([a.coord for a in atoms], dtype=np.float64).reshape(-1, 3),
        pdb_index=pdb_index,
    )


def residue_type(residue_name: str, vocab: Vocab) -> int:
    return vocab.abrv_to_idx("MET" if residue_name == "MSE" else residue_name)


def residue_index(res: Residue) -> str:
    return f"{res.chain}_{res.number}{res.icode.strip()}"


def chain_blocks(chain: Chain, vocab: Vocab) -> list[Block]:
    """The blocks of one polymer chain (see the module docstring); empty if nothing but UNK blocks remain."""
    blocks: list[Block] = []
    kept: set[tuple[int, str]] = set()
    for res in chain.residues:
        if res.het == "W":
            continue
        number = (res.number, res.icode)
        if res.het != " " and number in kept:
            continue
        heavy = [a for a in res.atoms if not is_hydrogen(a)]
        blocks.append(atoms_block(residue_type(res.name, vocab), heavy, residue_index(res), vocab))
        kept.add(number)
    while blocks and blocks[-1].type == UNK:
        blocks.pop()
    return blocks


def ligand_residues(chain: Chain, lig_code: str, lig_resi: int | None) -> list[Residue]:
    """HETATM residues named `lig_code` (numbered `lig_resi` if given) of one chain, in file order."""
    return [res for res in chain.residues
            if res.het == f"H_{lig_code}" and (lig_resi is None or res.number == lig_resi)]


def ligand_atoms(res: Residue) -> list[Atom]:
    return [a for a in res.atoms if not is_hydrogen(a)]


def atom_blocks(atoms: list[Atom], pdb_index: str, vocab: Vocab) -> list[Block]:
    """One block per small-molecule atom, typed by its element ('d' for deuterium is not a block type: UNK)."""
    return [atoms_block(vocab.symbol_to_idx(atomica_element(a.element).lower()), [a], pdb_index, vocab)
            for a in atoms]
