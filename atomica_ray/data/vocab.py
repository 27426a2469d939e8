"""ATOMICA's block and atom vocabularies, index for index.

Block vocabulary (ATOMICA `data/pdb_utils.py`, `Vocab`), in this order:
  0-3     specials       PAD '#', MASK '*', UNK '?', GLB '&' (abbreviations PAD, MASK, UNK, <G>)
  4-23    20 amino acids ('G','GLY') ... ('P','PRO'), ATOMICA's own order
  24-31   8 nucleotides  DA DG DC DT RA RG RC RU
  32-149  118 elements   one block per small-molecule atom: symbol = lower-case element, abbreviation = element
  150-    fragments      principal subgraphs of the PS_300 / PS_500 vocabulary: symbol = str(line index),
                         abbreviation = SMILES; single-atom SMILES are skipped (the element blocks cover them)
len == 150 without fragments, 440 with PS_300, 640 with PS_500.

Atom vocabulary: 'p' (pad) 0, 'm' (mask) 1, 'g' (global) 2, then element with atomic number Z at Z + 2: 121 types.
Maskable block classes (the masked-block head's outputs) are every non-special block, in vocabulary order:
436 with PS_300; block index b >= 4 maps to class b - 4.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

# Block indices of the specials (fixed whatever the fragment vocabulary).
PAD, MASK, UNK, GLB = 0, 1, 2, 3
# Atom-type indices of the specials.
ATOM_PAD, ATOM_MASK, ATOM_GLOBAL = 0, 1, 2

MODALITIES = {"PP": 0, "PL": 1, "Pion": 2, "Ppeptide": 3, "PRNA": 4, "PDNA": 5, "RNAL": 6, "CSD": 7}

FRAGMENTATION_FILES = {"PS_300": "ps_vocab_300.txt", "PS_500": "ps_vocab_500.txt"}

# Periodic table, atomic number 1..118.
ELEMENTS = (
    "H He "
    "Li Be B C N O F Ne "
    "Na Mg Al Si P S Cl Ar "
    "K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe "
    "Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn "
    "Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()

SPECIALS = (("#", "PAD"), ("*", "MASK"), ("?", "UNK"), ("&", "<G>"))
AMINO_ACIDS = (
    ("G", "GLY"), ("A", "ALA"), ("V", "VAL"), ("L", "LEU"), ("I", "ILE"), ("F", "PHE"), ("W", "TRP"),
    ("Y", "TYR"), ("D", "ASP"), ("H", "HIS"), ("N", "ASN"), ("E", "GLU"), ("K", "LYS"), ("Q", "GLN"),
    ("M", "MET"), ("R", "ARG"), ("S", "SER"), ("T", "THR"), ("C", "CYS"), ("P", "PRO"),
)
NUCLEOTIDES = tuple((s, s) for s in ("DA", "DG", "DC", "DT", "RA", "RG", "RC", "RU"))
ATOM_POSITIONS = ("p", "m", "g", "", "A", "B", "G", "D", "E", "Z", "H", "XT", "P", "sm", "'")


def read_fragment_smiles(method: str) -> list[str]:
    """SMILES of a principal-subgraph vocabulary, in file order (line 1 is a JSON config)."""
    if method not in FRAGMENTATION_FILES:
        raise ValueError(f"unknown fragmentation_method {method!r}; "
                         f"expected one of {sorted(FRAGMENTATION_FILES)} or None")
    text = resources.files("atomica_ray.data").joinpath("vocabs", FRAGMENTATION_FILES[method]).read_text()
    lines = text.strip().split("\n")
    json.loads(lines[0])  # {"kekulize": false}; only checks the header is there
    return [line.split("\t")[0] for line in lines[1:]]


class Vocab:
    """Block / atom vocabulary for one fragmentation method (None, 'PS_300' or 'PS_500')."""

    def __init__(self, fragmentation_method: str | None = None):
        self.fragmentation_method = fragmentation_method
        elements = set(ELEMENTS)
        frags = []
        if fragmentation_method is not None:
            smiles = read_fragment_smiles(fragmentation_method)
            frags = [(str(i), s) for i, s in enumerate(smiles) if s not in elements]
        self.aas = list(AMINO_ACIDS)
        self.bases = list(NUCLEOTIDES)
        self.sms = [(e.lower(), e) for e in ELEMENTS]
        self.frags = frags
        entries = list(SPECIALS) + self.aas + self.bases + self.sms + self.frags
        self.idx2symbol = [s for s, _ in entries]
        self.idx2abrv = [a for _, a in entries]
        self.symbol2idx = {s: i for i, s in enumerate(self.idx2symbol)}
        self.abrv2idx = {a: i for i, a in enumerate(self.idx2abrv)}
        assert len(self.symbol2idx) == len(self.abrv2idx) == len(entries), "vocabulary entries must be unique"

        # index ranges of each block family
        n_aa, n_nt, n_el = len(self.aas), len(self.bases), len(self.sms)
        self.aa_range = range(len(SPECIALS), len(SPECIALS) + n_aa)  # 4..23
        self.base_range = range(self.aa_range.stop, self.aa_range.stop + n_nt)  # 24..31
        self.element_range = range(self.base_range.stop, self.base_range.stop + n_el)  # 32..149
        self.fragment_range = range(self.element_range.stop, len(entries))  # 150..

        self.idx2atom = ["p", "m", "g"] + list(ELEMENTS)
        self.atom2idx = {a: i for i, a in enumerate(self.idx2atom)}
        self.idx2atom_pos = list(ATOM_POSITIONS)
        self.atom_pos2idx = {a: i for i, a in enumerate(self.idx2atom_pos)}

        # masked-block classes: every non-special block, in vocabulary order
        self.maskable_blocks = np.arange(len(SPECIALS), len(entries), dtype=np.int64)  # [num_masked_classes]
        self.block_to_masked_class = np.full(len(entries), -1, dtype=np.int64)  # [len(vocab)], -1 = not maskable
        self.block_to_masked_class[self.maskable_blocks] = np.arange(len(self.maskable_blocks))

    # --- sizes -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.idx2symbol)

    @property
    def num_atom_types(self) -> int:
        return len(self.idx2atom)

    @property
    def num_atom_positions(self) -> int:
        return len(self.idx2atom_pos)

    @property
    def num_masked_classes(self) -> int:
        return len(self.maskable_blocks)

    # --- special indices ---------------------------------------------------------------------
    pad_idx, mask_idx, unk_idx, glb_idx = PAD, MASK, UNK, GLB
    atom_pad_idx, atom_mask_idx, atom_global_idx = ATOM_PAD, ATOM_MASK, ATOM_GLOBAL

    # --- look-ups (unknown symbols map to UNK, unknown atoms to the atom mask, as in ATOMICA) -----
    def symbol_to_idx(self, symbol: str) -> int:
        return self.symbol2idx.get(symbol, UNK)

    def abrv_to_idx(self, abrv: str) -> int:
        return self.abrv2idx.get(abrv, UNK)

    def idx_to_symbol(self, idx: int) -> str:
        return self.idx2symbol[idx]

    def idx_to_abrv(self, idx: int) -> str:
        return self.idx2abrv[idx]

    def atom_to_idx(self, atom: str) -> int:
        return self.atom2idx.get(atom, ATOM_MASK)

    def idx_to_atom(self, idx: int) -> str:
        return self.idx2atom[idx]

    def atom_pos_to_idx(self, atom_pos: str) -> int:
        return self.atom_pos2idx.get(atom_pos, ATOM_MASK)

    def element_block(self, element: str) -> int:
        """Block index of a single-atom small-molecule block ('C' -> 37)."""
        return self.symbol2idx[element.lower()]

    def __repr__(self) -> str:
        return f"Vocab(fragmentation_method={self.fragmentation_method!r}, len={len(self)})"


@functools.lru_cache(maxsize=None)
def get_vocab(fragmentation_method: str | None = "PS_300") -> Vocab:
    """The (cached, shared) vocabulary for a fragmentation method; None = no fragment blocks."""
    return Vocab(fragmentation_method)
