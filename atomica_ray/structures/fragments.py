"""Principal-subgraph fragments of a ligand (ATOMICA's `fragmentation_method` PS_300 / PS_500).

A ligand's heavy atoms become fragment blocks as ATOMICA's `tokenize_3d` makes them (GET's principal subgraphs):

  1. bond orders from the SMILES: the SMILES graph (kekulized, heavy atoms) is matched onto the structure's bond
     graph (bonded when 0.1 Å < d < 1.3 (r_i + r_j), xyz2graph's covalent radii, float32 distances) by
     networkx's VF2 isomorphism; every SMILES bond is copied onto the matched structure atoms
  2. valence clean-up (`clean_bonds`): a non-carbon atom with a fractional valence gets its aromatic bond made
     double (a 4.5-valent N gets all its bonds made single); C and S above their maximum valence lose double /
     triple bonds until they fit. Atoms outside the valence table (metals, ...) make the molecule fail here
  3. a 4-valent neutral N gets charge +1, then RDKit sanitizes the molecule
  4. greedy merging: start from single atoms; repeatedly list every pair of a subgraph and an earlier-indexed
     neighbouring subgraph, take the merged SMILES with the highest corpus frequency in the vocabulary, and
     merge every listed pair with that SMILES (pairs whose parts were merged already are skipped)
  5. each fragment's block type is its canonical SMILES (a lone atom: its element); its atoms are listed in
     merge order, which is the order the block's atoms take in the item

Any failure (RDKit rejects the SMILES, the SMILES does not match the structure, an element outside the tables, a
fragment outside the vocabulary) raises `FragmentationError`; ATOMICA then keeps one block per atom, and so do we
(counted and reported). The orderings that decide ATOMICA's result (VF2's first match, dict and set iteration of
small ints) are reproduced by running the same library calls in the same order; that is why this module keeps
networkx and Python sets where a faster structure would do.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from atomica_ray.data.vocab import FRAGMENTATION_FILES

# xyz2graph's covalent radii (Å), as ATOMICA's bond perception uses them (deuterium included)
BOND_RADII = {
    "Ac": 1.88, "Ag": 1.59, "Al": 1.35, "Am": 1.51, "As": 1.21, "Au": 1.50, "B": 0.83, "Ba": 1.34, "Be": 0.35,
    "Bi": 1.54, "Br": 1.21, "C": 0.68, "Ca": 0.99, "Cd": 1.69, "Ce": 1.83, "Cl": 0.99, "Co": 1.33, "Cr": 1.35,
    "Cs": 1.67, "Cu": 1.52, "D": 0.23, "Dy": 1.75, "Er": 1.73, "Eu": 1.99, "F": 0.64, "Fe": 1.34, "Ga": 1.22,
    "Gd": 1.79, "Ge": 1.17, "H": 0.23, "Hf": 1.57, "Hg": 1.70, "Ho": 1.74, "I": 1.40, "In": 1.63, "Ir": 1.32,
    "K": 1.33, "La": 1.87, "Li": 0.68, "Lu": 1.72, "Mg": 1.10, "Mn": 1.35, "Mo": 1.47, "N": 0.68, "Na": 0.97,
    "Nb": 1.48, "Nd": 1.81, "Ni": 1.50, "Np": 1.55, "O": 0.68, "Os": 1.37, "P": 1.05, "Pa": 1.61, "Pb": 1.54,
    "Pd": 1.50, "Pm": 1.80, "Po": 1.68, "Pr": 1.82, "Pt": 1.50, "Pu": 1.53, "Ra": 1.90, "Rb": 1.47, "Re": 1.35,
    "Rh": 1.45, "Ru": 1.40, "S": 1.02, "Sb": 1.46, "Sc": 1.44, "Se": 1.22, "Si": 1.20, "Sm": 1.80, "Sn": 1.46,
    "Sr": 1.12, "Ta": 1.43, "Tb": 1.76, "Tc": 1.35, "Te": 1.47, "Th": 1.79, "Ti": 1.47, "Tl": 1.55, "Tm": 1.72,
    "U": 1.58, "V": 1.33, "W": 1.37, "Y": 1.78, "Yb": 1.94, "Zn": 1.45, "Zr": 1.56,
}
BOND_SCALE, BOND_MIN = 1.3, 0.1
# maximum valence used by the clean-up (GET's chem_utils.MAX_VALENCE)
MAX_VALENCE = {"B": 3, "Br": 1, "C": 4, "Cl": 1, "F": 1, "I": 1, "N": 5, "O": 2, "P": 5, "S": 6, "Se": 4, "Si": 4}
SINGLE, DOUBLE, TRIPLE, AROMATIC = 1, 2, 3, 4


class FragmentationError(ValueError):
    """ATOMICA's fragmentation fails for this ligand; it keeps one block per atom instead."""


@functools.lru_cache(maxsize=None)
def fragment_frequencies(method: str) -> dict[str, int]:
    """SMILES -> corpus frequency of a principal-subgraph vocabulary (the merge priority)."""
    text = resources.files("atomica_ray.data").joinpath("vocabs", FRAGMENTATION_FILES[method]).read_text()
    lines = text.strip().split("\n")
    if json.loads(lines[0]).get("kekulize"):
        raise ValueError(f"{method}: kekulized vocabularies are not supported")
    out = {}
    for line in lines[1:]:
        smiles, _n_atoms, freq = line.strip().split("\t")
        out[smiles] = int(freq)
    return out


def fragment_ligand(elements: list[str], coords: np.ndarray, smiles: str, method: str) -> list[tuple[str, list[int]]]:
    """(fragment SMILES, atom indices in block order) for a ligand's heavy atoms, in ATOMICA's block order.

    elements: ATOMICA spelling ('C', 'Cl'); coords [n, 3] (float32 values)."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:  # the `structures` extra
        raise ImportError("fragmentation_method PS_300 / PS_500 needs RDKit: pip install 'atomica-ray[structures]'") \
            from e
    RDLogger.DisableLog("rdApp.*")  # RDKit's own parse messages; the failure is reported once, by the caller
    try:
        mol = bonded_molecule(elements, coords, smiles)
        groups = principal_subgraphs(mol, fragment_frequencies(method))
        return [(fragment_smiles(mol, group), group) for group in groups]
    except FragmentationError:
        raise
    except Exception as e:  # noqa: BLE001 - RDKit and networkx fail in many ways; ATOMICA catches them all
        raise FragmentationError(f"{type(e).__name__}: {' '.join(str(e).split()) or 'failed'}") from e


# --- 1-3: the ligand as an RDKit molecule with the SMILES' bond orders ------------------------------------------
def smiles_graph(smiles: str):
    """networkx graph of the SMILES' heavy atoms (kekulized), bond types on the edges."""
    import networkx as nx
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise FragmentationError(f"RDKit cannot parse the SMILES {smiles!r}")
    Chem.Kekulize(mol, True)
    g = nx.Graph()
    kept = []
    for atom in mol.GetAtoms():
        keep = atom.GetSymbol() != "H"
        if keep:
            g.add_node(atom.GetIdx(), atom=atom.GetSymbol())
        kept.append(keep)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if kept[i] and kept[j]:
            g.add_edge(i, j, bond_type=bond.GetBondType())
    return g


def structure_graph(elements: list[str], coords: np.ndarray):
    """networkx graph of the structure's atoms, bonded by distance (float32, as ATOMICA computes it)."""
    import networkx as nx

    missing = [e for e in elements if e not in BOND_RADII]
    if missing:
        raise FragmentationError(f"no covalent radius for element {missing[0]!r}")
    x = np.asarray(coords, dtype=np.float32)
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)  # [n, n] float32
    radius = np.array([BOND_RADII[e] for e in elements])  # [n]
    bonded = (np.float32(BOND_MIN) < dist) & ((radius[:, None] + radius[None, :]) * BOND_SCALE > dist)
    g = nx.Graph()
    for i, e in enumerate(elements):
        g.add_node(i, atom=e)
    for i, j in zip(*np.nonzero(bonded)):
        g.add_edge(int(i), int(j))
    return g


def smiles_bonds(elements: list[str], coords: np.ndarray, smiles: str) -> list[tuple[int, int, int]]:
    """(atom, atom, bond type) of the structure, bond orders taken from the SMILES by graph isomorphism."""
    from networkx.algorithms import isomorphism
    from rdkit.Chem.rdchem import BondType

    code = {BondType.SINGLE: SINGLE, BondType.DOUBLE: DOUBLE, BondType.TRIPLE: TRIPLE, BondType.AROMATIC: AROMATIC}
    g1, g2 = smiles_graph(smiles), structure_graph(elements, coords)
    matcher = isomorphism.GraphMatcher(g1, g2, node_match=lambda a, b: a["atom"] == b["atom"])
    if not matcher.is_isomorphic():
        raise FragmentationError(f"the SMILES ({len(g1)} heavy atoms) does not match the structure's "
                                 f"{len(g2)} atoms and bonds")
    m = matcher.mapping
    bonds = []
    for i, j, attr in g1.edges.data():
        if attr["bond_type"] not in code:
            raise FragmentationError(f"bond type {attr['bond_type']} in the SMILES")
        bonds.append((m[i], m[j], code[attr["bond_type"]]))
    return bonds


def clean_bonds(elements: list[str], bonds: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """GET's valence clean-up (see the module docstring, step 2)."""
    valence = {i: 0.0 for i in range(len(elements))}
    atom_bonds: dict[int, list[int]] = {i: [] for i in range(len(elements))}
    for k, (a, b, kind) in enumerate(bonds):
        v = 1.5 if kind == AROMATIC else kind
        valence[a] += v
        valence[b] += v
        atom_bonds[a].append(k)
        atom_bonds[b].append(k)
    bonds = list(bonds)
    for i in valence:
        if int(valence[i]) == valence[i] or elements[i] == "C":
            continue
        if elements[i] == "N" and valence[i] == 4.5:
            for k in atom_bonds[i]:
                a, b, _ = bonds[k]
                bonds[k] = (a, b, SINGLE)
                valence[a] += 0.5
                valence[b] += 0.5
            continue
        k = next((k for k in atom_bonds[i] if bonds[k][2] == AROMATIC), None)
        if k is None:
            raise FragmentationError(f"atom {i} ({elements[i]}) has a fractional valence without aromatic bonds")
        a, b, _ = bonds[k]
        bonds[k] = (a, b, DOUBLE)
        valence[a] += 0.5
        valence[b] += 0.5
    for i in valence:
        if elements[i] not in MAX_VALENCE:
            raise FragmentationError(f"element {elements[i]!r} is not in the valence table")
        if valence[i] > MAX_VALENCE[elements[i]] and elements[i] in ("C", "S"):
            while valence[i] > MAX_VALENCE[elements[i]]:
                k = next((k for k in atom_bonds[i] if 1 < bonds[k][2] < AROMATIC), None)
                if k is None:
                    break
                a, b, kind = bonds[k]
                bonds[k] = (a, b, kind - 1)
                valence[a] -= 1
                valence[b] -= 1
    return bonds


def bonded_molecule(elements: list[str], coords: np.ndarray, smiles: str):
    """The sanitized RDKit molecule of the ligand's atoms (in their order) with the SMILES' bond orders."""
    from rdkit import Chem
    from rdkit.Chem.rdchem import BondType

    order = {SINGLE: BondType.SINGLE, DOUBLE: BondType.DOUBLE, TRIPLE: BondType.TRIPLE, AROMATIC: BondType.AROMATIC}
    rw = Chem.RWMol()
    for e in elements:
        rw.AddAtom(Chem.Atom(e))
    for a, b, kind in clean_bonds(elements, smiles_bonds(elements, coords, smiles)):
        rw.AddBond(a, b, order[kind])
    rw.UpdatePropertyCache(strict=False)
    for atom in rw.GetAtoms():
        if atom.GetAtomicNum() == 7 and explicit_valence(atom) == 4 and atom.GetFormalCharge() == 0:
            atom.SetFormalCharge(1)
    mol = rw.GetMol()
    Chem.SanitizeMol(mol)
    return mol


def explicit_valence(atom) -> int:
    from rdkit import Chem

    if hasattr(Chem, "ValenceType"):  # RDKit >= 2024.09 deprecates GetExplicitValence
        return atom.GetValence(Chem.ValenceType.EXPLICIT)
    return atom.GetExplicitValence()


# --- 4-5: greedy merging ------------------------------------------------------------------------------------------
def subgraph_smiles(mol, atoms: list[int]) -> str:
    """Canonical SMILES of the subgraph on `atoms` (a lone atom: its element; GET writes silicon '[Si]')."""
    from rdkit import Chem

    if len(atoms) == 1:
        symbol = mol.GetAtomWithIdx(atoms[0]).GetSymbol()
        lone = Chem.MolFromSmiles("[Si]" if symbol == "Si" else symbol)
        if lone is None:
            raise FragmentationError(f"a lone {symbol} atom is not a SMILES of the organic subset")
        return Chem.MolToSmiles(lone)
    inside = set(atoms)
    edges = [b.GetIdx() for b in mol.GetBonds() if b.GetBeginAtomIdx() in inside and b.GetEndAtomIdx() in inside]
    return Chem.MolToSmiles(Chem.PathToSubmol(mol, edges))


def principal_subgraphs(mol, frequency: dict[str, int]) -> list[list[int]]:
    """Atom groups of the greedy merge (step 4), in GET's order: atoms never merged (by index), then merged
    groups in the order they were formed; atoms within a group in merge order."""
    groups: dict[int, dict[int, None]] = {a.GetIdx(): {a.GetIdx(): None} for a in mol.GetAtoms()}  # pid -> atoms
    owner = {aid: aid for aid in groups}  # atom -> pid
    next_pid = len(groups)
    while True:
        candidates: dict[str, list[tuple[int, int]]] = {}  # merged SMILES -> (pid, neighbouring pid) pairs
        for pid, atoms in groups.items():
            earlier = []
            for aid in atoms:
                for nei in mol.GetAtomWithIdx(aid).GetNeighbors():
                    j = nei.GetIdx()
                    if j in atoms or j > aid:  # only bonds to earlier-indexed atoms outside the group
                        continue
                    earlier.append(owner[j])
            for other in set(earlier):  # Python's set order, as GET iterates it
                merged = list({**atoms, **groups[other]})
                candidates.setdefault(subgraph_smiles(mol, merged), []).append((pid, other))
        best, best_freq = None, -1
        for smi in candidates:
            if smi in frequency and frequency[smi] > best_freq:
                best, best_freq = smi, frequency[smi]
        if best is None:
            return [list(atoms) for atoms in groups.values()]
        for pid, other in candidates[best]:
            if pid not in groups or other not in groups:
                continue  # one side was merged by an earlier pair of this round
            merged = groups[pid]
            merged.update(groups[other])
            del groups[pid], groups[other]
            groups[next_pid] = merged
            for aid in merged:
                owner[aid] = next_pid
            next_pid += 1


def fragment_smiles(mol, group: list[int]) -> str:
    """The block abbreviation of one group, checked the way GET's `Molecule` checks it: the group's SMILES must
    match the molecule within the group's atoms."""
    from rdkit import Chem

    smi = subgraph_smiles(mol, group)
    if len(group) > 1:
        pattern = Chem.MolFromSmiles(smi, sanitize=False)
        inside = set(group)
        if not any(set(match) <= inside for match in mol.GetSubstructMatches(pattern)):
            raise FragmentationError(f"fragment {smi} does not map back onto its atoms")
    return smi
