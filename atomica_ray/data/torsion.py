"""Rotatable bonds (torsion masks) and applying torsion-angle changes to coordinates.

Torsion masks, as ATOMICA stores them in `data['torsion_mask']` (one entry per segment, `data/get_torsion_mask.py`):
  type 0 (the segment holds amino-acid / nucleotide blocks): per non-global block of the segment, either None or
         edges [n_rot, 2] (block-local atom indices) and mask_rotate [n_rot, block_len]; only side-chain bonds.
  type 1 (any other segment, e.g. a ligand): edges [n_rot, 2] and mask_rotate [n_rot, n_segment_atoms] over the
         segment's non-global atoms in order, or None.
mask_rotate[e, a] is True for the atoms on the side of bond e that its torsion moves.

How ATOMICA finds them (re-implemented here, vectorised):
  bonds: 0.1 Å < |x_i - x_j| < 1.3 (r_i + r_j) with the covalent radii of xyz2graph (`struct_to_topology`);
  a bond is rotatable if the graph is connected and removing the bond splits it into two parts of > 1 atom each;
  the moving side is the smaller part (on a tie, the part holding the first atom); edges are (u < v), sorted.
  Side chains (type 0): bonds between two backbone atoms are skipped; if the moving side holds a backbone atom the
  other side moves instead; if both sides hold backbone atoms the bond is skipped. Backbone atoms: N, C, O with
  position code '' or 'A' (N, CA, C, O); in nucleotide blocks P and every atom with position code "'" or 'P'.
Where ATOMICA would fail on an element missing from the radius table, the block (type 0) or segment (type 1) gets
no rotatable bonds.

Applying torsion changes (`modify_conformer_torsion_angles`): for each bond in turn, the moving side is rotated by
Δθ about the bond axis pointing from its moving end to its fixed end (right-handed). Blocks are independent, so
the k-th bonds of all blocks are applied together (one vectorised step per round, not per bond).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atomica_ray.data.so3 import kabsch, rotvec_to_matrix
from atomica_ray.data.vocab import ATOM_POSITIONS, ELEMENTS, GLB

# Covalent radii (Å) used by ATOMICA's bond perception (xyz2graph's table); elements absent there bond to nothing.
COVALENT_RADII = {
    "Ac": 1.88, "Ag": 1.59, "Al": 1.35, "Am": 1.51, "As": 1.21, "Au": 1.50, "B": 0.83, "Ba": 1.34, "Be": 0.35,
    "Bi": 1.54, "Br": 1.21, "C": 0.68, "Ca": 0.99, "Cd": 1.69, "Ce": 1.83, "Cl": 0.99, "Co": 1.33, "Cr": 1.35,
    "Cs": 1.67, "Cu": 1.52, "Dy": 1.75, "Er": 1.73, "Eu": 1.99, "F": 0.64, "Fe": 1.34, "Ga": 1.22, "Gd": 1.79,
    "Ge": 1.17, "H": 0.23, "Hf": 1.57, "Hg": 1.70, "Ho": 1.74, "I": 1.40, "In": 1.63, "Ir": 1.32, "K": 1.33,
    "La": 1.87, "Li": 0.68, "Lu": 1.72, "Mg": 1.10, "Mn": 1.35, "Mo": 1.47, "N": 0.68, "Na": 0.97, "Nb": 1.48,
    "Nd": 1.81, "Ni": 1.50, "Np": 1.55, "O": 0.68, "Os": 1.37, "P": 1.05, "Pa": 1.61, "Pb": 1.54, "Pd": 1.50,
    "Pm": 1.80, "Po": 1.68, "Pr": 1.82, "Pt": 1.50, "Pu": 1.53, "Ra": 1.90, "Rb": 1.47, "Re": 1.35, "Rh": 1.45,
    "Ru": 1.40, "S": 1.02, "Sb": 1.46, "Sc": 1.44, "Se": 1.22, "Si": 1.20, "Sm": 1.80, "Sn": 1.46, "Sr": 1.12,
    "Ta": 1.43, "Tb": 1.76, "Tc": 1.35, "Te": 1.47, "Th": 1.79, "Ti": 1.47, "Tl": 1.55, "Tm": 1.72, "U": 1.58,
    "V": 1.33, "W": 1.37, "Y": 1.78, "Yb": 1.94, "Zn": 1.45, "Zr": 1.56,
}
BOND_SCALE, BOND_MIN = 1.3, 0.1
FIRST_ELEMENT_ATOM = 3  # atom-type index of H; element with atomic number Z has index Z + 2

# radius by atom-type index; NaN = not an element with a known radius ('p', 'm', 'g', noble gases, ...)
_RADIUS = np.full(FIRST_ELEMENT_ATOM + len(ELEMENTS), np.nan)
for _z, _el in enumerate(ELEMENTS):
    _RADIUS[FIRST_ELEMENT_ATOM + _z] = COVALENT_RADII.get(_el, np.nan)

_POS = {code: i for i, code in enumerate(ATOM_POSITIONS)}
_N, _C, _O, _P = (FIRST_ELEMENT_ATOM + ELEMENTS.index(e) for e in ("N", "C", "O", "P"))
RESIDUE_BLOCKS = range(4, 32)  # 20 amino acids + 8 nucleotides: segments holding any of them are type 0
NUCLEOTIDE_BLOCKS = range(24, 32)


def atom_radii(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A)
    out = np.full(A.shape, np.nan)
    ok = (A >= 0) & (A < len(_RADIUS))
    out[ok] = _RADIUS[A[ok]]
    return out


def backbone_atoms(A: np.ndarray, positions: np.ndarray, nucleotide: np.ndarray) -> np.ndarray:
    """Backbone flags per atom (ATOMICA `get_backbone_mask`); `nucleotide` is per atom (its block is DA..RU)."""
    protein = np.isin(A, (_N, _C, _O)) & np.isin(positions, (_POS[""], _POS["A"]))
    nucleic = (A == _P) | np.isin(positions, (_POS["'"], _POS["P"]))
    return np.where(nucleotide, nucleic, protein)


# --- rotatable bonds of many small graphs at once ------------------------------------------------------------------
def _reach(adj: np.ndarray, graph: np.ndarray, start: np.ndarray, cut: np.ndarray | None = None,
           stop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Atoms reachable from `start` [Q] in graph `graph` [Q] of `adj` [G, L, L], without edge `cut` [Q, 2].

    Returns reach [Q, L] and, if `stop` [Q] is given, whether stop was reached (early exit per query).
    """
    Q, L = len(start), adj.shape[1]
    reach = np.zeros((Q, L), dtype=bool)
    reach[np.arange(Q), start] = True
    hit = np.zeros(Q, dtype=bool)
    active = np.arange(Q)
    while len(active):
        r = reach[active].astype(np.float32)  # [q, L]
        if adj.shape[0] == 1:
            count = r @ adj[0].astype(np.float32)  # [q, L]
        else:
            count = np.einsum("ql,qlm->qm", r, adj[graph[active]].astype(np.float32))
        if cut is not None:  # remove the cut edge's contribution in both directions
            q = np.arange(len(active))
            u, v = cut[active, 0], cut[active, 1]
            count[q, v] -= r[q, u]
            count[q, u] -= r[q, v]
        new = reach[active] | (count > 0.5)
        changed = (new != reach[active]).any(1)
        reach[active] = new
        done = ~changed
        if stop is not None:
            got = new[np.arange(len(active)), stop[active]]
            hit[active] = got
            done |= got
        active = active[~done]
    return reach, hit


def rotatable_bonds(adj: np.ndarray, valid: np.ndarray):
    """Rotatable bonds of G graphs (padded to L nodes): adj [G, L, L] bool, valid [G, L] bool.

    Returns graph [n], edges [n, 2] (u < v, sorted per graph), moving side [n, L] bool (ATOMICA's choice of side).
    """
    G, L = valid.shape
    adj = adj & valid[:, :, None] & valid[:, None, :]
    g, u, v = np.nonzero(np.triu(adj, 1))  # lexicographic per graph = networkx's edge order here
    empty = (np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, L), bool))
    if len(g) == 0:
        return empty
    # graphs must be connected (ATOMICA: a disconnected molecule has no torsions)
    first = valid.argmax(1)
    reach_all, _ = _reach(adj, np.arange(G), first)
    connected = ~(valid & ~reach_all).any(1)
    keep = connected[g]
    g, u, v = g[keep], u[keep], v[keep]
    if len(g) == 0:
        return empty
    edges = np.stack([u, v], 1)
    side_u, cycle = _reach(adj, g, u, cut=edges, stop=v)  # side_u: component of u once the bond is cut
    n_valid = valid.sum(1)[g]
    size_u = side_u.sum(1)
    bridge = ~cycle & (size_u > 1) & (n_valid - size_u > 1)
    side_v = valid[g] & ~side_u
    # smaller side moves; on a tie, the side holding the graph's first node
    u_first = side_u[np.arange(len(g)), first[g]]
    use_u = (size_u < n_valid - size_u) | ((size_u == n_valid - size_u) & u_first)
    moving = np.where(use_u[:, None], side_u, side_v)
    return g[bridge], edges[bridge], moving[bridge]


def rotatable_bonds_one_graph(adj: np.ndarray):
    """Rotatable bonds of one graph, adj [n, n] bool: (edges [k, 2], moving side [k, n]); same rules as
    `rotatable_bonds`, found in O(n + bonds) by one depth-first search (Tarjan's bridges), for large molecules.

    The DFS starts at atom 0, so the far side of a bridge (parent p, child c) is c's DFS subtree, a contiguous
    range of preorder numbers; the side holding atom 0 is the other one.
    """
    n = len(adj)
    nbrs = [np.nonzero(row)[0].tolist() for row in adj]
    pre, low, size, parent = [-1] * n, [0] * n, [1] * n, [-1] * n
    pre[0], counter = 0, 1
    stack, bridges = [(0, iter(nbrs[0]))], []
    while stack:
        v, it = stack[-1]
        for w in it:
            if pre[w] == -1:
                parent[w], pre[w], low[w] = v, counter, counter
                counter += 1
                stack.append((w, iter(nbrs[w])))
                break
            if w != parent[v]:
                low[v] = min(low[v], pre[w])
        else:
            stack.pop()
            if stack:
                p = stack[-1][0]
                low[p], size[p] = min(low[p], low[v]), size[p] + size[v]
                if low[v] > pre[p]:
                    bridges.append((p, v))
    empty = np.zeros((0, 2), np.int64), np.zeros((0, n), bool)
    if counter < n:  # disconnected: no torsions
        return empty
    pre_arr = np.array(pre)
    keep = [(p, c) for p, c in bridges if 1 < size[c] < n - 1]
    if not keep:
        return empty
    keep.sort(key=lambda pc: (min(pc), max(pc)))
    edges = np.array([(min(p, c), max(p, c)) for p, c in keep], dtype=np.int64)
    child = np.array([c for _, c in keep])
    lo, sz = pre_arr[child], np.array(size)[child]
    subtree = (pre_arr[None, :] >= lo[:, None]) & (pre_arr[None, :] < (lo + sz)[:, None])  # [k, n]
    moving = np.where((sz < n - sz)[:, None], subtree, ~subtree)  # smaller side; on a tie the side with atom 0
    return edges, moving


def bond_adjacency(X: np.ndarray, radii: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bonds of padded graphs: X [G, L, 3], radii [G, L], valid [G, L] -> adj [G, L, L] (ATOMICA's criterion)."""
    d = np.linalg.norm(X[:, :, None, :] - X[:, None, :, :], axis=-1)  # [G, L, L]
    limit = BOND_SCALE * (radii[:, :, None] + radii[:, None, :])
    with np.errstate(invalid="ignore"):
        adj = (d > BOND_MIN) & (d < limit)
    return adj & valid[:, :, None] & valid[:, None, :]


# --- torsion masks of one item --------------------------------------------------------------------------------------
def segment_torsion_mask(A: np.ndarray, X: np.ndarray):
    """Type-1 mask of one segment's non-global atoms: (edges [n, 2], mask_rotate [n, N]) or (None, None)."""
    A, X = np.asarray(A), np.asarray(X, dtype=np.float64)
    radii = atom_radii(A)
    if len(A) <= 1 or np.isnan(radii).any():
        return None, None
    adj = bond_adjacency(X[None], radii[None], np.ones((1, len(A)), dtype=bool))[0]
    edges, moving = rotatable_bonds_one_graph(adj)
    if len(edges) == 0:
        return None, None
    return edges, moving


def block_torsion_masks(A, X, positions, block_lengths, block_types):
    """Type-0 masks, one per block: lists of (edges [n, 2] block-local, mask_rotate [n, len]) or None."""
    A, positions = np.asarray(A), np.asarray(positions)
    X = np.asarray(X, dtype=np.float64)
    lengths = np.asarray(block_lengths, dtype=np.int64)
    nb = len(lengths)
    if nb == 0:
        return [], []
    L = int(lengths.max())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    block_of = np.repeat(np.arange(nb), lengths)
    slot = np.arange(len(A)) - starts[block_of]
    valid = np.zeros((nb, L), dtype=bool)
    valid[block_of, slot] = True
    pad = lambda arr, fill: _scatter_pad(arr, block_of, slot, (nb, L), fill)  # noqa: E731
    radii = pad(atom_radii(A), np.nan)
    Xp = pad(X, 0.0)
    bad = (np.isnan(radii) & valid).any(1)  # ATOMICA: exception for the block -> None
    ok = valid & ~bad[:, None]
    adj = bond_adjacency(Xp, np.nan_to_num(radii), ok)
    g, edges, moving = rotatable_bonds(adj, ok)
    nucleotide = np.isin(np.asarray(block_types), NUCLEOTIDE_BLOCKS)
    backbone = pad(backbone_atoms(A, positions, nucleotide[block_of]), False)[g]  # [n, L]
    both_bb = backbone[np.arange(len(g)), edges[:, 0]] & backbone[np.arange(len(g)), edges[:, 1]]
    flip = (moving & backbone).any(1)
    moving = np.where(flip[:, None], valid[g] & ~moving, moving)
    keep = ~both_bb & ~(moving & backbone).any(1)
    g, edges, moving = g[keep], edges[keep], moving[keep]
    out_edges, out_masks = [None] * nb, [None] * nb
    if len(g):
        bounds = np.searchsorted(g, np.arange(nb + 1))
        for b in np.unique(g):
            lo, hi = bounds[b], bounds[b + 1]
            out_edges[b] = edges[lo:hi]
            out_masks[b] = moving[lo:hi, : lengths[b]]
    return out_edges, out_masks


def _scatter_pad(values, block_of, slot, shape, fill):
    values = np.asarray(values)
    out = np.full(shape + values.shape[1:], fill, dtype=np.result_type(values.dtype, type(fill)))
    out[block_of, slot] = values
    return out


def segment_layout(data: dict, segment: int):
    """(non-global block indices of the segment [nb], their atoms [n] in order, block start offsets [n_blocks])."""
    B = np.asarray(data["B"])
    lengths = np.asarray(data["block_lengths"], dtype=np.int64)
    seg = np.asarray(data["segment_ids"])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    blocks = np.nonzero((seg == segment) & (B != GLB))[0]
    atoms = _ranges(starts[blocks], lengths[blocks])
    return blocks, atoms, starts


def torsion_mask_for_segment(data: dict, segment: int, as_lists: bool = True) -> dict:
    """ATOMICA's torsion-mask entry for one segment of an item's data (type chosen as in get_torsion_mask.py)."""
    blocks, atoms, _ = segment_layout(data, segment)
    B = np.asarray(data["B"])
    A, X = np.asarray(data["A"])[atoms], np.asarray(data["X"], dtype=np.float64)[atoms]
    if np.isin(B[blocks], RESIDUE_BLOCKS).any():
        pos = np.asarray(data["atom_positions"])[atoms]
        edges, masks = block_torsion_masks(A, X, pos, np.asarray(data["block_lengths"])[blocks], B[blocks])
        if as_lists:
            edges = [None if e is None else e.tolist() for e in edges]
            masks = [None if m is None else m.tolist() for m in masks]
        return {"type": 0, "edges": edges, "mask_rotate": masks}
    edges, mask = segment_torsion_mask(A, X)
    if as_lists and edges is not None:
        edges, mask = edges.tolist(), mask.tolist()
    return {"type": 1, "edges": edges, "mask_rotate": mask}


def compute_torsion_masks(data: dict, as_lists: bool = True) -> list[dict]:
    """ATOMICA's `torsion_mask` for every segment 0..max(segment_ids) of an item's data."""
    n_seg = int(np.max(data["segment_ids"])) + 1 if len(data["segment_ids"]) else 0
    return [torsion_mask_for_segment(data, s, as_lists) for s in range(n_seg)]


def has_torsions(entry) -> bool:
    """ATOMICA's `_can_apply_torsion_noise` for one segment's entry (None or missing = no)."""
    if entry is None or entry.get("edges") is None:
        return False
    if entry["type"] == 0:
        return any(e is not None and len(e) > 0 for e in entry["edges"])
    return len(entry["edges"]) > 0


# --- applying torsion changes ---------------------------------------------------------------------------------------
@dataclass
class Torsions:
    """The rotatable bonds of one segment, flattened to item-level atom indices."""

    edges: np.ndarray  # [n, 2] as stored (u, v), item atom indices
    moving_end: np.ndarray  # [n] the endpoint on the moving side
    fixed_end: np.ndarray  # [n]
    step: np.ndarray  # [n] order of the bond within its block (type 0) or segment (type 1)
    ptr: np.ndarray  # [n + 1] CSR offsets into `moving`
    moving: np.ndarray  # [nnz] item atom indices moved by each bond
    rigid_align: bool  # type 1: the whole segment is aligned back onto its pre-torsion pose (Kabsch)
    segment_atoms: np.ndarray  # [m] the segment's non-global atoms

    def __len__(self) -> int:
        return len(self.edges)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total)


def segment_torsions(data: dict, segment: int, entry: dict) -> Torsions:
    """Flatten one segment's torsion-mask entry (lists or arrays, as ATOMICA stores it) to item atom indices.

    Vectorised over blocks: the per-block masks are concatenated once, then bonds and moved atoms are read off.
    """
    blocks, atoms, starts = segment_layout(data, segment)
    lengths = np.asarray(data["block_lengths"], dtype=np.int64)
    where = f"torsion_mask[{segment}] (type {entry['type']})"
    if entry["type"] == 0:
        per_block_e, per_block_m = entry["edges"], entry["mask_rotate"]
        if len(per_block_e) != len(blocks) or len(per_block_m) != len(blocks):
            raise ValueError(f"{where} has {len(per_block_e)} block entries, but segment {segment} has "
                             f"{len(blocks)} non-global blocks")
        present = [i for i, e in enumerate(per_block_e) if e is not None and len(e)]
        E = [per_block_e[i] for i in present]
        M = [per_block_m[i] for i in present]
        width = lengths[blocks[present]]  # [pieces] atoms of each block
        base = starts[blocks[present]]  # [pieces] item index of each block's first atom
        rigid = False
    else:
        present = [0] if entry["edges"] is not None and len(entry["edges"]) else []
        E, M = [entry["edges"]] * len(present), [entry["mask_rotate"]] * len(present)
        width, base = np.full(len(present), len(atoms)), np.zeros(len(present), np.int64)
        rigid = True
    if not present:
        z = np.zeros(0, dtype=np.int64)
        return Torsions(np.zeros((0, 2), np.int64), z, z, z, np.zeros(1, np.int64), z, rigid, atoms)
    E = [np.asarray(e, dtype=np.int64).reshape(-1, 2) for e in E]
    M = [np.asarray(m, dtype=bool).ravel() for m in M]
    n_bonds = np.array([len(e) for e in E])  # [pieces]
    bad = np.nonzero(np.array([m.size for m in M]) != n_bonds * width)[0]
    if len(bad):
        raise ValueError(f"{where}: mask_rotate of entry {present[bad[0]]} has {M[bad[0]].size} values, expected "
                         f"{n_bonds[bad[0]]} bonds x {width[bad[0]]} atoms")
    local = np.concatenate(E)  # [n, 2] piece-local atom indices
    piece = np.repeat(np.arange(len(E)), n_bonds)  # [n]
    w = width[piece]
    if (local < 0).any() or (local >= w[:, None]).any():
        b = int(piece[np.nonzero(((local < 0) | (local >= w[:, None])).any(1))[0][0]])
        raise ValueError(f"{where}: an edge of entry {present[b]} points outside its {width[b]} atoms")
    flat = np.concatenate(M)  # every bond's mask row, back to back
    row = np.concatenate([[0], np.cumsum(w)[:-1]])  # [n] where each bond's row starts in `flat`
    flags = flat[row[:, None] + local]  # [n, 2] is u / v on the moving side
    if (flags[:, 0] == flags[:, 1]).any():
        b = int(np.nonzero(flags[:, 0] == flags[:, 1])[0][0])
        raise ValueError(f"{where}: bond {local[b].tolist()} of entry {present[piece[b]]} has both or neither end "
                         f"on the moving side of mask_rotate")
    pos = np.nonzero(flat)[0]
    bond_of = np.searchsorted(row, pos, side="right") - 1  # sorted, so moved atoms are grouped by bond
    col = pos - row[bond_of]
    if rigid:
        edges, moving = atoms[local], atoms[col]
    else:
        edges, moving = local + base[piece][:, None], col + base[piece][bond_of]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(bond_of, minlength=len(local)))])
    step = np.arange(len(local)) - np.repeat(np.concatenate([[0], np.cumsum(n_bonds)[:-1]]), n_bonds)
    moving_end = np.where(flags[:, 1], edges[:, 1], edges[:, 0])
    fixed_end = np.where(flags[:, 1], edges[:, 0], edges[:, 1])
    return Torsions(edges, moving_end, fixed_end, step, ptr, moving, rigid, atoms)


def apply_torsions(X: np.ndarray, tors: Torsions, delta: np.ndarray) -> np.ndarray:
    """New coordinates [N, 3] with the torsion of bond i changed by delta[i] (radians), bonds applied in order."""
    X = np.array(X, dtype=np.float64)
    before = X[tors.segment_atoms] if tors.rigid_align else None
    for step in range(int(tors.step.max()) + 1 if len(tors) else 0):
        sel = np.nonzero((tors.step == step) & (delta != 0))[0]  # at most one bond per block (type 0)
        if len(sel) == 0:
            continue
        axis = X[tors.fixed_end[sel]] - X[tors.moving_end[sel]]  # [s, 3] points from moving to fixed end
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        R = rotvec_to_matrix(axis * delta[sel, None])  # [s, 3, 3]
        n_moving = tors.ptr[sel + 1] - tors.ptr[sel]
        atoms = tors.moving[_ranges(tors.ptr[sel], n_moving)]  # [a]
        which = np.repeat(np.arange(len(sel)), n_moving)  # [a] bond of each moved atom
        pivot = X[tors.fixed_end[sel]][which]  # [a, 3]
        X[atoms] = np.einsum("aij,aj->ai", R[which], X[atoms] - pivot) + pivot
    if tors.rigid_align:
        after = X[tors.segment_atoms]
        R, t = kabsch(after, before)
        X[tors.segment_atoms] = after @ R.T + t
    return X
