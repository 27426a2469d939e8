"""One index row -> its items (ATOMICA's `process_pdb` and `process_PL_pdb`), or the reason it has none.

A row never raises for bad data: a missing or unparsable file, a chain or ligand that is not there, or no
interface within the cut-off make a `RowResult` with `error` set. A ligand whose fragmentation fails keeps one
block per atom, as in ATOMICA, and the row carries a note saying so.

Where we depart from ATOMICA's `process_pdbs` (each on purpose, none changes an item of a single-model file):
  - ATOMICA reads the receptor of a ligand row from every model of the file (its chain from the last model
    wins); we read every side from the first model.
  - ATOMICA looks residue names up in its global vocabulary, which holds the fragment SMILES only once a ligand
    was fragmented earlier in the same run; we use the fragment vocabulary of the run from the first row (this
    matters only for residue names spelled like a fragment SMILES: CO, NO, CCN, ...).
  - ATOMICA stops at the first bad row (and reads neither .gz nor .ent); we report it and go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atomica_ray.data.items import DataError, validate_item
from atomica_ray.data.vocab import UNK, get_vocab

from .blocks import Block, atom_blocks, atomica_element, chain_blocks, ligand_atoms, ligand_residues
from .complexes import interface_item, ligand_id, pair_id
from .index import Row
from .read import Chain, StructureError, read_first_model


@dataclass(frozen=True)
class Options:
    fragmentation_method: str | None = None  # None, 'PS_300' or 'PS_500'
    interface_dist_th: float = 8.0
    torsion: bool = False  # add ATOMICA's torsion masks (pretraining data)


@dataclass
class RowResult:
    row: Row
    records: list[dict] = field(default_factory=list)  # validated records (atomica_ray.data.items)
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. a fragmentation that fell back to atom blocks
    fallbacks: int = 0  # ligands kept as one block per atom because fragmentation failed


class RowError(Exception):
    """A row without items; the message is the reason written to errors.csv."""


def process_row(row: Row, options: Options) -> RowResult:
    result = RowResult(row)
    try:
        chains = read_first_model(row.path)
        if row.chains1 is None:
            items = chain_pair_items(row, chains, options)
        elif row.lig_code is None:
            items = [pair_item(row, chains, options)]
        else:
            items = ligand_items(row, chains, options, result)
        vocab = get_vocab(options.fragmentation_method)
        for item in items:
            if row.label is not None:
                item["label"] = row.label
            if options.torsion:
                from atomica_ray.data.torsion import compute_torsion_masks

                item["data"]["torsion_mask"] = compute_torsion_masks(item["data"], as_lists=False)
            result.records.append(validate_item(item, row.path, row.line, len(vocab)))
    except (StructureError, RowError, DataError) as e:
        result.records, result.error = [], str(e)
    return result


def polymer_chains(chains: list[Chain], options: Options) -> dict[str, list[Block]]:
    """Blocks of every chain that has any (ATOMICA: a chain of UNK blocks only does not exist)."""
    vocab = get_vocab(options.fragmentation_method)
    out = {}
    for chain in chains:
        blocks = chain_blocks(chain, vocab)
        if blocks:
            out[chain.name] = blocks
    return out


def side_blocks(row: Row, polymers: dict[str, list[Block]], names: tuple[str, ...]) -> list[Block]:
    for name in names:
        if name not in polymers:
            raise RowError(f"chain {name} not found (chains with residues: {', '.join(polymers) or 'none'})")
    return [b for name in names for b in polymers[name]]


def pair_item(row: Row, chains: list[Chain], options: Options) -> dict:
    polymers = polymer_chains(chains, options)
    side1 = side_blocks(row, polymers, row.chains1)
    side2 = side_blocks(row, polymers, row.chains2)
    item = interface_item(pair_id(row.pdb_id, row.chains1, row.chains2), side1, side2, options.interface_dist_th)
    if item is None:
        raise RowError(f"no interface between chains {'_'.join(row.chains1)} and {'_'.join(row.chains2)} within "
                       f"{options.interface_dist_th:g} Å")
    return item


def chain_pair_items(row: Row, chains: list[Chain], options: Options) -> list[dict]:
    """Folder rows: one item per pair of chains in contact, in chain order."""
    polymers = polymer_chains(chains, options)
    names = list(polymers)
    if len(names) < 2:
        raise RowError(f"fewer than two chains with residues ({', '.join(names) or 'none'})")
    items = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            item = interface_item(pair_id(row.pdb_id, [a], [b]), polymers[a], polymers[b],
                                  options.interface_dist_th)
            if item is not None:
                items.append(item)
    if not items:
        raise RowError(f"no pair of chains in contact within {options.interface_dist_th:g} Å")
    return items


def ligand_items(row: Row, chains: list[Chain], options: Options, result: RowResult) -> list[dict]:
    lig_chain = row.chains2[0]
    found = [res for chain in chains if chain.name == lig_chain
             for res in ligand_residues(chain, row.lig_code, row.lig_resi)]
    if not found:
        at = f" numbered {row.lig_resi}" if row.lig_resi is not None else ""
        raise RowError(f"ligand {row.lig_code}{at} not found in chain {lig_chain}")
    receptor = side_blocks(row, polymer_chains(chains, options), row.chains1)
    items = []
    for k, res in enumerate(found):
        blocks = ligand_blocks(res, row, options, result)
        item = interface_item(ligand_id(row.pdb_id, row.chains1, lig_chain, row.lig_code, k, len(found)),
                              receptor, blocks, options.interface_dist_th)
        if item is not None:
            items.append(item)
    if not items:
        raise RowError(f"no interface between chains {'_'.join(row.chains1)} and ligand {row.lig_code} within "
                       f"{options.interface_dist_th:g} Å")
    return items


def ligand_blocks(res, row: Row, options: Options, result: RowResult) -> list[Block]:
    """Atom blocks, or fragment blocks under a fragmentation method when a SMILES is given."""
    vocab = get_vocab(options.fragmentation_method)
    atoms = ligand_atoms(res)
    pdb_index = f"{res.chain}_{res.number}"
    blocks = atom_blocks(atoms, pdb_index, vocab)
    if options.fragmentation_method is None:
        return blocks
    where = f"ligand {row.lig_code} {pdb_index}"
    if row.lig_smiles is None:
        result.notes.append(f"{where}: no lig_smiles, one block per atom")
        return blocks
    from .fragments import FragmentationError, fragment_ligand

    try:
        fragments = fragment_ligand([atomica_element(a.element) for a in atoms],
                                    np.array([a.coord for a in atoms], dtype=np.float32).reshape(-1, 3),
                                    row.lig_smiles, options.fragmentation_method)
        out = []
        for smiles, group in fragments:
            block_type = vocab.abrv_to_idx(smiles)
            if block_type == UNK:
                raise FragmentationError(f"fragment {smiles} is not in the {options.fragmentation_method} vocabulary")
            members = [blocks[i] for i in group]
            out.append(Block(block_type, [t for b in members for t in b.atom_types],
                             [p for b in members for p in b.positions],
                             np.concatenate([b.coords for b in members]), pdb_index))
        return out
    except FragmentationError as e:
        result.fallbacks += 1
        result.notes.append(f"{where}: fragmentation failed ({e}), one block per atom")
        return blocks
