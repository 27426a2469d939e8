"""Built-in demo data: protein-ligand and protein-peptide interfaces with plausible geometry, in ATOMICA's
item format (reference §1.2), generated in seconds.

Each item:
- segment 0, a protein: 1-3 ideal alpha helices (phi -57, psi -47, omega 180, standard bond lengths and
  angles) packed as a bundle, 8-16 residues each, random amino acids with heavy-atom side chains from
  internal-coordinate templates and chi angles near the staggered rotamers (60, 180, -60 degrees);
- segment 1, the partner: with probability 0.8 a small molecule (modality PL) - a benzene or pyridine ring (one
  PS_300 fragment block, or six element blocks without fragmentation) carrying 1-3 chains of 1-6 C/N/O atoms
  (one element block per atom) - else a 4-8 residue helical peptide (modality Ppeptide);
- the partner is placed along a random direction from the protein so that its closest heavy-atom approach to
  the protein is either 3.0-3.8 A (half the items) or 5.0-7.0 A;
- global blocks as ATOMICA makes them (one per segment, first, block type GLB, atom type 'g', at the mean of
  the segment's atoms); torsion masks as ATOMICA computes them (type 0, per residue: rotatable side-chain bonds
  - bridges of the residue's bond graph with > 1 atom on both sides and not backbone-backbone - rotating the
  side-chain part; type 1, small molecule: bridges with > 1 atom on both sides, rotating the smaller part).

Targets, deterministic functions of the final coordinates:
- `label` = 1.0 if the closest protein-partner heavy-atom distance is below 4.4 A, else 0.0 (the generator
  leaves a gap between 3.8 and 5.0 A, so the classes are separated by a margin; balanced in expectation);
- `affinity['neglog_aff']` = 2 + 0.35 * sum over partner atoms of sigmoid((5 - d_i) / 0.5), d_i the distance
  of partner atom i to its nearest protein atom (a smooth contact count);
- `modality` = MODALITIES['PL'] or MODALITIES['Ppeptide'].
Item i of seed s is generated from rng(s, i) alone, so splits (`write_demo_splits`) are disjoint and
reproducible.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from atomica_ray.data.items import validate_item
from atomica_ray.data.parquet import write_dataset
from atomica_ray.data.vocab import ATOM_GLOBAL, GLB, MODALITIES, get_vocab

CONTACT_LABEL_THRESHOLD = 4.4  # A
BACKBONE = ("N", "CA", "C", "O")

# Side-chain internal coordinates, in ATOMICA's atom order (pdb_utils SIDECHAIN):
# atom, bonded-to, angle-ref, dihedral-ref, bond length (A), bond angle (deg), dihedral (deg) or (chi k, offset).
_SC = {
    "ALA": [("CB", "CA", "N", "C", 1.53, 110.5, -122.6)],
    "VAL": [("CG1", "CB", "CA", "N", 1.53, 110.5, (1, 0)), ("CG2", "CB", "CA", "N", 1.53, 110.5, (1, 120))],
    "LEU": [("CG", "CB", "CA", "N", 1.53, 116.0, (1, 0)), ("CD1", "CG", "CB", "CA", 1.52, 110.5, (2, 0)),
            ("CD2", "CG", "CB", "CA", 1.52, 110.5, (2, 120))],
    "ILE": [("CG1", "CB", "CA", "N", 1.53, 110.0, (1, 0)), ("CG2", "CB", "CA", "N", 1.53, 110.5, (1, -120)),
            ("CD1", "CG1", "CB", "CA", 1.52, 114.0, (2, 0))],
    "PHE": [("CG", "CB", "CA", "N", 1.50, 114.0, (1, 0)), ("CD1", "CG", "CB", "CA", 1.39, 120.7, (2, 0)),
            ("CD2", "CG", "CB", "CA", 1.39, 120.7, (2, 180)), ("CE1", "CD1", "CG", "CB", 1.39, 120.0, 180.0),
            ("CE2", "CD2", "CG", "CB", 1.39, 120.0, 180.0), ("CZ", "CE1", "CD1", "CG", 1.39, 120.0, 0.0)],
    "TRP": [("CG", "CB", "CA", "N", 1.50, 114.0, (1, 0)), ("CD1", "CG", "CB", "CA", 1.37, 127.0, (2, 0)),
            ("CD2", "CG", "CB", "CA", 1.43, 126.6, (2, 180)), ("NE1", "CD1", "CG", "CB", 1.38, 110.0, 180.0),
            ("CE2", "CD2", "CG", "CB", 1.40, 107.3, 180.0), ("CE3", "CD2", "CG", "CB", 1.40, 133.9, 0.0),
            ("CZ2", "CE2", "CD2", "CG", 1.40, 122.3, 180.0), ("CZ3", "CE3", "CD2", "CG", 1.39, 118.8, 180.0),
            ("CH2", "CZ2", "CE2", "CD2", 1.37, 117.5, 0.0)],
    "TYR": [("CG", "CB", "CA", "N", 1.51, 114.0, (1, 0)), ("CD1", "CG", "CB", "CA", 1.39, 121.0, (2, 0)),
            ("CD2", "CG", "CB", "CA", 1.39, 121.0, (2, 180)), ("CE1", "CD1", "CG", "CB", 1.39, 121.0, 180.0),
            ("CE2", "CD2", "CG", "CB", 1.39, 121.0, 180.0), ("CZ", "CE1", "CD1", "CG", 1.38, 120.0, 0.0),
            ("OH", "CZ", "CE1", "CD1", 1.36, 120.0, 180.0)],
    "ASP": [("CG", "CB", "CA", "N", 1.52, 113.0, (1, 0)), ("OD1", "CG", "CB", "CA", 1.25, 119.0, (2, 0)),
            ("OD2", "CG", "CB", "CA", 1.25, 118.0, (2, 180))],
    "HIS": [("CG", "CB", "CA", "N", 1.50, 114.0, (1, 0)), ("ND1", "CG", "CB", "CA", 1.38, 122.7, (2, 0)),
            ("CD2", "CG", "CB", "CA", 1.36, 131.0, (2, 180)), ("CE1", "ND1", "CG", "CB", 1.32, 109.0, 180.0),
            ("NE2", "CD2", "CG", "CB", 1.37, 107.0, 180.0)],
    "ASN": [("CG", "CB", "CA", "N", 1.52, 113.0, (1, 0)), ("OD1", "CG", "CB", "CA", 1.23, 121.0, (2, 0)),
            ("ND2", "CG", "CB", "CA", 1.33, 116.0, (2, 180))],
    "GLU": [("CG", "CB", "CA", "N", 1.52, 114.0, (1, 0)), ("CD", "CG", "CB", "CA", 1.52, 113.0, (2, 0)),
            ("OE1", "CD", "CG", "CB", 1.25, 119.0, (3, 0)), ("OE2", "CD", "CG", "CB", 1.25, 118.0, (3, 180))],
    "LYS": [("CG", "CB", "CA", "N", 1.52, 114.0, (1, 0)), ("CD", "CG", "CB", "CA", 1.52, 111.0, (2, 0)),
            ("CE", "CD", "CG", "CB", 1.52, 111.0, (3, 0)), ("NZ", "CE", "CD", "CG", 1.49, 112.0, (4, 0))],
    "GLN": [("CG", "CB", "CA", "N", 1.52, 114.0, (1, 0)), ("CD", "CG", "CB", "CA", 1.52, 113.0, (2, 0)),
            ("OE1", "CD", "CG", "CB", 1.23, 121.0, (3, 0)), ("NE2", "CD", "CG", "CB", 1.33, 117.0, (3, 180))],
    "MET": [("CG", "CB", "CA", "N", 1.52, 114.0, (1, 0)), ("SD", "CG", "CB", "CA", 1.81, 113.0, (2, 0)),
            ("CE", "SD", "CG", "CB", 1.79, 100.0, (3, 0))],
    "ARG": [("CG", "CB", "CA", "N", 1.52, 114.0, (1, 0)), ("CD", "CG", "CB", "CA", 1.52, 111.0, (2, 0)),
            ("NE", "CD", "CG", "CB", 1.46, 112.0, (3, 0)), ("CZ", "NE", "CD", "CG", 1.33, 124.0, (4, 0)),
            ("NH1", "CZ", "NE", "CD", 1.33, 120.0, 0.0), ("NH2", "CZ", "NE", "CD", 1.33, 120.0, 180.0)],
    "SER": [("OG", "CB", "CA", "N", 1.42, 111.0, (1, 0))],
    "THR": [("OG1", "CB", "CA", "N", 1.43, 109.0, (1, 0)), ("CG2", "CB", "CA", "N", 1.52, 111.0, (1, -120))],
    "CYS": [("SG", "CB", "CA", "N", 1.81, 114.0, (1, 0))],
    "PRO": [("CG", "CB", "CA", "N", 1.50, 104.5, 30.0), ("CD", "CG", "CB", "CA", 1.51, 105.0, -35.0)],
    "GLY": [],
}
_RING_CLOSURES = {"PHE": [("CE2", "CZ")], "TYR": [("CE2", "CZ")], "TRP": [("NE1", "CE2"), ("CZ3", "CH2")],
                  "HIS": [("CE1", "NE2")], "PRO": [("CD", "N")]}
_N_ROTAMERS = 12


def _place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """NeRF: the atom d with |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion (radians)."""
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    return c - bond * math.cos(angle) * bc + bond * math.sin(angle) * (math.cos(torsion) * m + math.sin(torsion) * n)


def _frames(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Residue frames [..., 3, 3] (columns e1, e2, e3) from N, CA, C."""
    e1 = c - ca
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    u = n - ca
    e2 = u - np.sum(u * e1, axis=-1, keepdims=True) * e1
    e2 /= np.linalg.norm(e2, axis=-1, keepdims=True)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)


def _bridges(n_atoms: int, bonds: list[tuple[int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """(u, v, side of v) for every bond whose removal splits the graph with > 1 atom on both sides."""
    out = []
    for k, (u, v) in enumerate(bonds):
        adj = [[] for _ in range(n_atoms)]
        for j, (a, b) in enumerate(bonds):
            if j != k:
                adj[a].append(b)
                adj[b].append(a)
        side = np.zeros(n_atoms, dtype=bool)
        side[v] = True
        stack = [v]
        while stack:
            for w in adj[stack.pop()]:
                if not side[w]:
                    side[w] = True
                    stack.append(w)
        if not side[u] and 1 < side.sum() < n_atoms - 1:
            out.append((u, v, side))
    return out


def _bond_separation(n_atoms: int, bonds: list[tuple[int, int]]) -> np.ndarray:
    """[n, n] number of bonds on the shortest path between atoms (Floyd-Warshall; n is a residue)."""
    d = np.full((n_atoms, n_atoms), 99)
    np.fill_diagonal(d, 0)
    for a, b in bonds:
        d[a, b] = d[b, a] = 1
    for k in range(n_atoms):
        d = np.minimum(d, d[:, k:k + 1] + d[k:k + 1, :])
    return d


@functools.lru_cache(maxsize=None)
def _residue_library():
    """Per residue: atom names/elements/position codes, rotamers in the residue frame, torsion mask."""
    vocab = get_vocab(None)
    # a canonical backbone: N at origin, CA on x, C in the xy-plane
    n0 = np.zeros(3)
    ca0 = np.array([1.458, 0.0, 0.0])
    c0 = ca0 + 1.525 * np.array([-math.cos(math.radians(111.2)), math.sin(math.radians(111.2)), 0.0])
    frame0 = _frames(n0, ca0, c0)
    helix = _ideal_helix()  # the carbonyl O of a helix residue, in its residue frame
    o0 = ((helix[1, 3] - helix[1, 1]) @ _frames(*helix[1, :3])) @ frame0.T + ca0
    rng = np.random.default_rng(20240611)
    lib = {}
    for res, sc in _SC.items():
        names = list(BACKBONE) + ([] if res == "GLY" else ["CB"]) + [a[0] for a in sc if a[0] != "CB"]
        idx = {nm: i for i, nm in enumerate(names)}
        bonds = [(0, 1), (1, 2), (2, 3)]
        if res != "GLY":
            bonds.append((1, idx["CB"]))
        bonds += [(idx[p1], idx[name]) for name, p1, *_ in sc if name != "CB"]
        bonds += [(idx[a], idx[b]) for a, b in _RING_CLOSURES.get(res, [])]
        far = _bond_separation(len(names), bonds) >= 3  # pairs 1-4 and further apart
        rotamers = []
        while len(rotamers) < _N_ROTAMERS:  # staggered chis, rejecting internal clashes (< 2.6 A)
            chi = rng.choice([60.0, 180.0, -60.0], size=5) + rng.normal(0.0, 8.0, size=5)
            pos = {"N": n0, "CA": ca0, "C": c0, "O": o0}
            if res != "GLY":
                pos["CB"] = _place(c0, n0, ca0, 1.53, math.radians(110.5), math.radians(-122.6))
            for name, p1, p2, p3, bond, ang, tor in sc:
                if name == "CB":
                    continue
                t = tor if isinstance(tor, float) else chi[tor[0] - 1] + tor[1]
                pos[name] = _place(pos[p3], pos[p2], pos[p1], bond, math.radians(ang), math.radians(t))
            xyz = np.array([pos[nm] for nm in names])
            dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
            if np.any(dist[far] < 2.6):
                continue
            rotamers.append((xyz[4:] - ca0) @ frame0)  # side-chain atoms in the residue frame
        torsions = [(u, v, side) for u, v, side in _bridges(len(names), bonds) if not (u < 4 and v < 4)]
        lib[res] = {
            "block": vocab.abrv_to_idx(res),
            "atoms": np.array([vocab.atom_to_idx(nm[0]) for nm in names], dtype=np.int64),
            "positions": np.array([vocab.atom_pos_to_idx("".join(ch for ch in nm[1:] if not ch.isdigit()))
                                   for nm in names], dtype=np.int64),
            "rotamers": np.stack(rotamers),  # [n_rotamers, n_side_atoms, 3]
            "edges": np.array([[u, v] for u, v, _ in torsions], dtype=np.int64).reshape(-1, 2) if torsions else None,
            "masks": np.stack([side for *_, side in torsions]) if torsions else None,
        }
    return lib


@functools.lru_cache(maxsize=None)
def _ideal_helix(n_res: int = 32) -> np.ndarray:
    """Backbone N, CA, C, O [n_res, 4, 3] of an ideal alpha helix along z, centred on the origin."""
    phi, psi, omega = (math.radians(x) for x in (-57.0, -47.0, 180.0))
    n = [np.zeros(3)]
    ca = [np.array([1.458, 0.0, 0.0])]
    c = [ca[0] + 1.525 * np.array([-math.cos(math.radians(111.2)), math.sin(math.radians(111.2)), 0.0])]
    for _ in range(n_res - 1):
        n.append(_place(n[-1], ca[-1], c[-1], 1.329, math.radians(116.2), psi))
        ca.append(_place(ca[-1], c[-1], n[-1], 1.458, math.radians(121.7), omega))
        c.append(_place(c[-1], n[-1], ca[-1], 1.525, math.radians(111.2), phi))
    o = [_place(n[i + 1], ca[i], c[i], 1.231, math.radians(120.5), math.pi) for i in range(n_res - 1)]
    o.append(_place(n[-1], ca[-1], c[-1], 1.231, math.radians(120.5), psi + math.pi))
    bb = np.stack([np.array(n), np.array(ca), np.array(c), np.array(o)], axis=1)
    ca_xyz = bb[:, 1]
    centre = ca_xyz.mean(axis=0)
    axis = np.linalg.svd(ca_xyz - centre)[2][0]  # principal direction of the CA trace = helix axis
    rot = _rotation_to_z(axis)
    return (bb - centre) @ rot.T


def _rotation_to_z(v: np.ndarray) -> np.ndarray:
    v = v / np.linalg.norm(v)
    z = np.array([0.0, 0.0, 1.0])
    w = np.cross(v, z)
    s, cth = np.linalg.norm(w), float(v @ z)
    if s < 1e-8:
        return np.eye(3) if cth > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / s
    return np.eye(3) + s * k + (1 - cth) * (k @ k)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _rot_z(t: float) -> np.ndarray:
    return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _residues(rng: np.random.Generator, backbone: np.ndarray, context: np.ndarray | None = None) -> list[dict]:
    """Residue blocks on the given backbone [n, 4, 3]: random amino acids; each side chain takes, of the
    rotamer library, the one with the fewest contacts under 3 A to the backbone, the side chains placed so far
    and `context` atoms."""
    lib = _residue_library()
    names = list(_SC)
    frames = _frames(backbone[:, 0], backbone[:, 1], backbone[:, 2])  # [n, 3, 3]
    placed = [backbone.reshape(-1, 3)] + ([context] if context is not None else [])
    own = np.zeros(len(backbone) * 4, dtype=bool)
    out = []
    for i, res in enumerate(rng.choice(names, size=len(backbone))):
        r = lib[res]
        sides = r["rotamers"] @ frames[i].T + backbone[i, 1]  # [n_rotamers, n_side, 3]
        if sides.shape[1]:
            own[:] = False
            own[4 * i:4 * i + 4] = True
            others = np.concatenate([placed[0][~own]] + placed[1:])
            flat = sides.reshape(-1, 3)
            d2 = np.sum(flat**2, axis=1)[:, None] + np.sum(others**2, axis=1)[None, :] - 2.0 * flat @ others.T
            clashes = np.sum((d2 < 9.0).reshape(len(sides), -1), axis=1) + 1e-3 * rng.random(len(sides))
            side = sides[int(np.argmin(clashes))]
            placed.append(side)
        else:
            side = sides[0]
        out.append({"X": np.concatenate([backbone[i], side]), "res": r})
    return out


def _protein(rng: np.random.Generator) -> tuple[list[dict], list[str]]:
    """A bundle of 1-3 helices (residue blocks, 10 A between neighbouring axes) and their pdb indexes."""
    helix = _ideal_helix()
    n_helix = int(rng.integers(1, 4))
    radius = {1: 0.0, 2: 5.0, 3: 10.0 / math.sqrt(3.0)}[n_helix]
    backbones, pdb = [], []
    for h in range(n_helix):
        n_res = int(rng.integers(8, 17))
        start = int(rng.integers(0, len(helix) - n_res + 1))
        bb = helix[start:start + n_res] - helix[start:start + n_res, :, :].reshape(-1, 3).mean(axis=0)
        bb = bb @ _rot_z(rng.uniform(0, 2 * math.pi)).T  # phase about the helix axis
        if h % 2:
            bb = bb * np.array([1.0, -1.0, -1.0])  # antiparallel neighbour (rotation by pi about x)
        theta = 2 * math.pi * h / n_helix
        backbones.append(bb + np.array([radius * math.cos(theta), radius * math.sin(theta), 0.0]))
        pdb += [f"{'ABC'[h]}_{start + k + 1}" for k in range(n_res)]
    return _residues(rng, np.concatenate(backbones)), pdb


def _small_molecule(rng: np.random.Generator, fragments: bool) -> dict:
    """A ring with 1-3 short C/N/O chains: coordinates, atom types, blocks and the bond list."""
    vocab = get_vocab("PS_300" if fragments else None)
    pyridine = rng.random() < 0.3
    ring_el = ["C", "C", "C", "N", "C", "C"] if pyridine else ["C"] * 6
    ang = np.arange(6) * math.pi / 3
    X = [np.stack([1.39 * np.cos(ang), 1.39 * np.sin(ang), np.zeros(6)], axis=1)]
    elements = list(ring_el)
    bonds = [(k, (k + 1) % 6) for k in range(6)]
    sites = [k for k in range(6) if ring_el[k] == "C"]
    for site in rng.choice(sites, size=int(rng.integers(1, 4)), replace=False):
        site = int(site)
        xyz = np.concatenate(X)
        radial = xyz[site] / np.linalg.norm(xyz[site])
        chain = [xyz[(site + 1) % 6], xyz[site], xyz[site] + 1.50 * radial]
        parent, grand = site, -1
        for k in range(int(rng.integers(1, 7))):
            # grow by NeRF; a chain stops where every tried torsion clashes (< 2.5 A) with earlier atoms
            near = [parent, grand] if k else [site, (site + 1) % 6, (site + 5) % 6]  # 1-2 and 1-3 partners
            others = np.delete(np.concatenate(X), near, axis=0)
            for _ in range(10 if k else 1):
                if k:
                    t = math.radians(rng.choice([60.0, 180.0, -60.0]) + rng.normal(0.0, 10.0))
                    new = _place(chain[-3], chain[-2], chain[-1], 1.52, math.radians(111.0), t)
                else:
                    new = chain[-1]
                if np.min(np.linalg.norm(others - new, axis=1)) > 2.5:
                    break
            else:
                break
            if k:
                chain.append(new)
            X.append(chain[-1][None])
            elements.append(str(rng.choice(["C", "C", "C", "C", "N", "O"])) if k > 0 else "C")
            bonds.append((parent, len(elements) - 1))
            parent, grand = len(elements) - 1, parent
    X = np.concatenate(X)
    n = len(elements)
    if fragments:
        ring_block = vocab.abrv_to_idx("c1ccncc1" if pyridine else "c1ccccc1")
        blocks = [(ring_block, 6)] + [(vocab.element_block(e), 1) for e in elements[6:]]
    else:
        blocks = [(vocab.element_block(e), 1) for e in elements]
    # ATOMICA's type-1 torsion mask: bridges with > 1 atom each side; the smaller side rotates
    edges, masks = [], []
    for u, v, side in _bridges(n, bonds):
        if side.sum() > n - side.sum():
            u, v, side = v, u, ~side
        edges.append([u, v])
        masks.append(side)
    return {"X": X, "elements": elements, "blocks": blocks,
            "edges": np.array(edges, dtype=np.int64) if edges else None,
            "masks": np.stack(masks) if masks else None}


def _place_partner(rng: np.random.Generator, P: np.ndarray, L: np.ndarray, target: float) -> np.ndarray:
    """Move L (centred) along a random direction u from P's centre to the largest offset t at which some
    pair of atoms is exactly `target` apart, i.e. where L, coming in from far away, first touches that distance.

    For a pair with w = l + centre - p, |w + t u| = target at t = -w.u + sqrt((w.u)^2 - |w|^2 + target^2)."""
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    w = (L + P.mean(axis=0))[:, None, :] - P[None, :, :]  # [n_l, n_p, 3]
    wu = w @ u
    disc = wu * wu - np.sum(w * w, axis=-1) + target * target
    t = np.max(-wu[disc >= 0] + np.sqrt(disc[disc >= 0]))
    return L + P.mean(axis=0) + t * u


def make_item(seed: int, index: int, fragments: bool = True) -> dict:
    """Demo item `index` of `seed` as an ATOMICA item dict (numpy arrays in `data`)."""
    rng = np.random.default_rng([seed, index])
    vocab = get_vocab("PS_300" if fragments else None)
    protein, pdb = _protein(rng)
    R = _random_rotation(rng)
    P = np.concatenate([b["X"] for b in protein]) @ R.T
    peptide = rng.random() < 0.2
    if peptide:
        helix = _ideal_helix()
        n_res = int(rng.integers(4, 9))
        bb = helix[:n_res] - helix[:n_res].reshape(-1, 3).mean(axis=0)
        partner_res = _residues(rng, bb @ _random_rotation(rng).T)
        L = np.concatenate([b["X"] for b in partner_res])
    else:
        mol = _small_molecule(rng, fragments)
        L = (mol["X"] - mol["X"].mean(axis=0)) @ _random_rotation(rng).T
    target = rng.uniform(3.0, 3.8) if rng.random() < 0.5 else rng.uniform(5.0, 7.0)
    L = _place_partner(rng, P, L, target)

    # blocks: [GLB, residues...] [GLB, partner blocks...]
    pos_g = vocab.atom_pos_to_idx("g")
    lib_res = [b["res"] for b in protein]
    B = [GLB] + [r["block"] for r in lib_res]
    lengths = [1] + [len(r["atoms"]) for r in lib_res]
    A = [np.array([ATOM_GLOBAL])] + [r["atoms"] for r in lib_res]
    pos = [np.array([pos_g])] + [r["positions"] for r in lib_res]
    n_seg0 = len(B)
    tm0 = {"type": 0, "edges": [r["edges"] for r in lib_res], "mask_rotate": [r["masks"] for r in lib_res]}
    if peptide:
        part = [b["res"] for b in partner_res]
        B += [GLB] + [r["block"] for r in part]
        lengths += [1] + [len(r["atoms"]) for r in part]
        A += [np.array([ATOM_GLOBAL])] + [r["atoms"] for r in part]
        pos += [np.array([pos_g])] + [r["positions"] for r in part]
        tm1 = {"type": 0, "edges": [r["edges"] for r in part], "mask_rotate": [r["masks"] for r in part]}
        pdb += [f"P_{k + 1}" for k in range(len(part))]
    else:
        B += [GLB] + [b for b, _ in mol["blocks"]]
        lengths += [1] + [n for _, n in mol["blocks"]]
        A += [np.array([ATOM_GLOBAL])] + [np.array([vocab.atom_to_idx(e) for e in mol["elements"]])]
        pos += [np.array([pos_g])] + [np.full(len(mol["elements"]), vocab.atom_pos_to_idx("sm"))]
        tm1 = {"type": 1, "edges": mol["edges"], "mask_rotate": mol["masks"]}
        pdb += [f"L_{k + 1}" for k in range(len(mol["blocks"]))]
    X = np.concatenate([P.mean(axis=0, keepdims=True), P, L.mean(axis=0, keepdims=True), L])
    segment_ids = [0] * n_seg0 + [1] * (len(B) - n_seg0)
    keys = [k for k in range(1, len(B)) if B[k] != GLB]  # block_to_pdb_indexes skip the global blocks

    # targets from the final coordinates
    d = np.sqrt(np.min(np.sum((L[:, None, :] - P[None, :, :]) ** 2, axis=-1), axis=1))  # [n_partner_atoms]
    contacts = float(np.sum(1.0 / (1.0 + np.exp(-(5.0 - d) / 0.5))))
    modality = MODALITIES["Ppeptide" if peptide else "PL"]
    return {
        "id": f"demo_{seed}_{index:06d}_{'Ppep' if peptide else 'PL'}",
        "data": {
            "X": X,
            "B": np.array(B, dtype=np.int64),
            "A": np.concatenate(A),
            "atom_positions": np.concatenate(pos),
            "block_lengths": np.array(lengths, dtype=np.int64),
            "segment_ids": np.array(segment_ids, dtype=np.int64),
            "torsion_mask": [tm0, tm1],
        },
        "label": 1.0 if d.min() < CONTACT_LABEL_THRESHOLD else 0.0,
        "affinity": {"neglog_aff": 2.0 + 0.35 * contacts},
        "modality": modality,
        "dist_th": 8.0,
        "block_to_pdb_indexes": dict(zip(keys, pdb)),
    }


def demo_items(n_items: int, seed: int = 0, start: int = 0, fragments: bool = True) -> list[dict]:
    return [make_item(seed, i, fragments) for i in range(start, start + n_items)]


def write_demo_dataset(out: str, n_items: int = 1000, seed: int = 0, start: int = 0, overwrite: bool = False,
                       fragments: bool = True) -> dict:
    """Generate items start..start+n_items-1 of `seed` and write them as a Parquet dataset at `out`."""
    method = "PS_300" if fragments else None
    n_types = len(get_vocab(method))

    def records():
        for i in range(start, start + n_items):
            yield "demo", validate_item(make_item(seed, i, fragments), "demo", i, n_types)

    return write_dataset(records(), out, overwrite=overwrite,
                         extra_meta=lambda: {"fragmentation_method": method, "sources": [],
                                             "demo": {"seed": seed, "start": start, "n_items": n_items}})


def write_demo_splits(out_dir: str, n_train: int = 800, n_valid: int = 200, seed: int = 0,
                      overwrite: bool = False, fragments: bool = True) -> dict[str, str]:
    """DIR/train (items 0..n_train-1) and DIR/valid (the next n_valid items) of the same seed: disjoint."""
    paths = {"train": os.path.join(out_dir, "train"), "valid": os.path.join(out_dir, "valid")}
    write_demo_dataset(paths["train"], n_train, seed, 0, overwrite, fragments)
    write_demo_dataset(paths["valid"], n_valid, seed, n_train, overwrite, fragments)
    return paths
