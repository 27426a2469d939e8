"""Structure files -> the first model's chains, residues and atoms, as ATOMICA's reader sees them.

ATOMICA reads structures with Biopython (`PDBParser` / `MMCIFParser`). We parse with gemmi (a maintained C++
parser, several times faster, and it reads `.gz` directly), then assemble chains, residues and atoms with the
rules Biopython applies, because ATOMICA's items depend on them:

  model       the first model only (NMR ensembles, multi-model mmCIF)
  chains      by name, in order of first appearance; a chain that reappears later (ligands or waters after TER)
              continues the earlier one
  residues    identified by (hetero field, number, insertion code); the hetero field is ' ' for ATOM records,
              'W' for HETATM waters (HOH / WAT) and 'H_<name>' for other HETATM records. An ATOM residue seen
              again with the same name continues the first one; a HETATM residue seen again is dropped
  altlocs     one atom per name: the alternate location with the highest occupancy (the first one on a tie); a
              blank-altloc atom followed by altloc copies of itself joins them and moves to the end of its residue
  atoms       a second atom of the same name without altloc is dropped
  elements    upper case as in the file ('C', 'CL', 'SE', 'D'); coordinates rounded to float32 as Biopython
              stores them (ATOMICA's distances and centroids are computed from those values)

Where gemmi and Biopython differ (an element column left empty in an old PDB file: gemmi infers the element from
the atom name by its own rules), the item may differ from ATOMICA's; such files are rare since 1996.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
WATER_NAMES = ("HOH", "WAT")


class StructureError(ValueError):
    """A structure file that cannot be read."""


@dataclass
class Atom:
    name: str  # as in the file, without padding
    element: str  # upper case, e.g. 'C', 'CL', 'D'
    coord: tuple[float, float, float]  # float32-rounded
    occupancy: float
    altloc: str  # ' ' when none


@dataclass
class Residue:
    chain: str
    name: str  # residue name without padding
    het: str  # ' ', 'W' or 'H_<name>'
    number: int
    icode: str  # ' ' when none
    atoms: list[Atom] = field(default_factory=list)
    disordered: set[str] = field(default_factory=set, repr=False)  # atom names held as alternate locations


@dataclass
class Chain:
    name: str
    residues: list[Residue] = field(default_factory=list)


def is_structure_file(path: str) -> bool:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(STRUCTURE_SUFFIXES)


def hetero_field(record_het: bool, name: str) -> str:
    """Biopython's hetero field of a residue id."""
    if not record_het:
        return " "
    return "W" if name in WATER_NAMES else f"H_{name}"


def read_first_model(path: str) -> list[Chain]:
    """Chains of the first model of a .pdb / .ent / .cif / .mmcif file (optionally .gz), see the module docstring."""
    import gemmi  # the `structures` extra

    if not os.path.isfile(path):
        raise StructureError(f"{path}: no such file")
    if not is_structure_file(path):
        raise StructureError(f"{path}: not a structure file (expected .pdb, .ent, .cif or .mmcif, optionally .gz)")
    try:
        st = gemmi.read_structure(path, merge_chain_parts=False)
    except Exception as e:  # gemmi raises RuntimeError / ValueError / OSError with a one-line reason
        raise StructureError(f"{path}: cannot parse ({' '.join(str(e).split())})") from e
    if len(st) == 0 or len(st[0]) == 0:
        raise StructureError(f"{path}: no atoms")
    return assemble_model(st[0])


def assemble_model(model) -> list[Chain]:
    """Biopython's chains / residues / atoms of one gemmi model."""
    chains: dict[str, Chain] = {}
    residue_keys: dict[str, dict[tuple, Residue | None]] = {}
    for g_chain in model:
        chain = chains.setdefault(g_chain.name, Chain(g_chain.name))
        keys = residue_keys.setdefault(g_chain.name, {})
        for g_res in g_chain:
            het = hetero_field(g_res.het_flag == "H", g_res.name)
            key = (het, g_res.seqid.num, g_res.seqid.icode)
            if key in keys:
                existing = keys[key]
                if het == " " and existing is not None and existing.name == g_res.name:
                    add_atoms(existing, g_res)  # an ATOM residue continued later in the file
                # HETATM residue defined twice, or a point mutation: Biopython keeps the first residue only
                continue
            res = Residue(chain.name, g_res.name, het, g_res.seqid.num, g_res.seqid.icode)
            add_atoms(res, g_res)
            keys[key] = res
            chain.residues.append(res)
    return list(chains.values())


def add_atoms(res: Residue, g_res) -> None:
    """Append a gemmi residue's atoms with Biopython's alternate-location and duplicate-name rules."""
    for g_atom in g_res:
        altloc = g_atom.altloc if g_atom.altloc != "\0" else " "
        pos = g_atom.pos
        xyz = np.array([pos.x, pos.y, pos.z], dtype=np.float32).tolist()
        atom = Atom(g_atom.name, g_atom.element.name.upper(), tuple(xyz), float(g_atom.occ), altloc)
        i = next((k for k, a in enumerate(res.atoms) if a.name == atom.name), None)
        if i is None:
            res.atoms.append(atom)
            if altloc != " ":
                res.disordered.add(atom.name)
            continue
        held = res.atoms[i]
        if altloc == " ":
            continue  # same name twice without altloc: Biopython drops the second
        if atom.name not in res.disordered:
            # blank altloc then an altloc copy: both join one disordered atom, re-added at the residue's end;
            # the copy is selected unless the blank one has a strictly higher occupancy
            del res.atoms[i]
            res.atoms.append(held if held.occupancy > atom.occupancy else atom)
        elif atom.occupancy > held.occupancy:
            res.atoms[i] = atom
        res.disordered.add(atom.name)
