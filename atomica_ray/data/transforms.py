"""Pretraining transforms (ATOMICA `data/dataset_pretrain.py` + `utils/noise_transforms.py`, reference §1.4), and
random block sampling of labelled items (`--random_block_sampling`, `BlockSampling` at the end).

`make_transform(spec)` returns None for kinds without noise, else `t(record, rng) -> record | None`, run per item
in loader workers with an rng seeded per (seed, epoch, item). Per kind (ATOMICA's dataset class):

  pretrain_torsion         (PretrainTorsionDataset)        rotation?, translation?, torsion
  pretrain_masked_torsion  (PretrainMaskedTorsionDataset)  the above, then block masking
  pretrain_masked          (PretrainMaskedDataset)         block masking only
  pretrain_atom            (PretrainAtomDataset)           rotation?, translation?, Gaussian atom noise?
(? = on when its σ is > 0; 0 / None switches it off.)

All noise goes to one "noisy segment", drawn uniformly among segments 0 / 1 with more than 2 atoms (its global
atom counted) and, for torsion kinds, rotatable bonds. Steps, in ATOMICA's order:
  rotation     θ, ŵ from IGSO(3) (so3.py); the segment's non-global atoms rotate by θŵ about their centroid;
               skipped (rot_score = 0) unless both segments have more than 2 atoms.    rot_score = ŵ·s(θ)
  translation  ε ~ U(0.1, σ_tr), z ~ N(0, I₃); every atom of the segment moves by ε·z.  tr_score = z, tr_eps = ε
  torsion      Δθ_i ~ N(0, σ_tor) per rotatable bond, applied in turn (torsion.py); a type-1 segment is then
               aligned back onto its pose before the torsion step (Kabsch).          tor_score = wrapped-normal
               score of Δθ (torus.py), tor_edges [2, n_tor] = the bonds (item atom indices)
  Gaussian     ε ~ U(0.1, σ_atom), noise ~ N(0, I₃) per non-global atom of the segment.
                                                            atom_score [Natom, 3] = (before - after) / ε, atom_eps = ε
  masking      masking.py; tor_edges are renumbered to the masked item's atoms (atoms of a masked block map to its
               mask atom, as ATOMICA's remapping does).       masked_blocks [Nblock] bool, masked_labels [n_masked]
After each geometric step the segment's global atom is put back at the centroid of its non-global atoms.
An item is dropped (None) where ATOMICA drops it: a torsion kind without a segment that qualifies, a masked kind
without a maskable block in segment 0 or 1, pretrain_atom without a segment of more than 2 atoms.
Records without torsion masks get them computed on the fly (torsion.compute_torsion_masks).
Each kind reads only its own fields (torsion kinds ignore atom_noise, pretrain_atom ignores torsion_noise); ATOMICA
refused to have both set, which would reject DataSpec's defaults (the released torsion settings) for pretrain_atom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atomica_ray.data.masking import mask_blocks, sample_masked_blocks
from atomica_ray.data.so3 import IGSO3, rotvec_to_matrix
from atomica_ray.data.torsion import apply_torsions, compute_torsion_masks, has_torsions, segment_torsions
from atomica_ray.data.torus import TorusScore
from atomica_ray.data.vocab import GLB, get_vocab

TORSION_KINDS = frozenset({"pretrain_torsion", "pretrain_masked_torsion"})
MASKED_KINDS = frozenset({"pretrain_masked_torsion", "pretrain_masked"})
NOISE_KINDS = TORSION_KINDS | MASKED_KINDS | {"pretrain_atom"}
PLAIN_KINDS = frozenset({"affinity", "labelled", "multiclass", "plain", "prot_interface", "residue", "multilabel"})
MIN_EPS = 0.1  # lower end of ATOMICA's U(0.1, σ) noise scales

# extra per-item keys each kind adds to the record
OUTPUT_KEYS = {
    "pretrain_torsion": ("noisy_segment", "rot_score", "tr_score", "tr_eps", "tor_score", "tor_edges"),
    "pretrain_masked_torsion": ("noisy_segment", "rot_score", "tr_score", "tr_eps", "tor_score", "tor_edges",
                                "masked_blocks", "masked_labels"),
    "pretrain_masked": ("masked_blocks", "masked_labels"),
    "pretrain_atom": ("noisy_segment", "rot_score", "tr_score", "tr_eps", "atom_score", "atom_eps"),
}

# ATOMICA's train.py defaults, used for fields a spec lacks
DEFAULTS = {"atom_noise": 0.0, "translation_noise": 0.0, "rotation_noise": 0.0, "max_rotation": math.pi / 4,
            "torsion_noise": 0.0, "mask_proportion": 0.0, "fragmentation_method": None}


@dataclass(frozen=True)
class NoiseSettings:
    kind: str
    atom_noise: float = 0.0
    translation_noise: float = 0.0
    rotation_noise: float = 0.0
    max_rotation: float = math.pi / 4
    torsion_noise: float = 0.0
    mask_proportion: float = 0.0
    fragmentation_method: str | None = None

    @classmethod
    def from_spec(cls, spec) -> "NoiseSettings":
        values = {}
        for name, default in DEFAULTS.items():
            v = getattr(spec, name, default)
            values[name] = (0.0 if v is None else float(v)) if name != "fragmentation_method" else v
        return cls(kind=spec.kind, **values)

    def check(self) -> None:
        for name in ("atom_noise", "translation_noise", "rotation_noise", "torsion_noise", "mask_proportion"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"DataSpec.{name}: must be a finite number >= 0, got {v}")
        if self.mask_proportion > 1:
            raise ValueError(f"DataSpec.mask_proportion: must be <= 1, got {self.mask_proportion}")
        if self.kind in TORSION_KINDS and self.torsion_noise <= 0:
            raise ValueError(f"DataSpec.torsion_noise: kind {self.kind!r} needs torsion noise > 0 "
                             f"(ATOMICA's torsion datasets always apply it)")
        if self.rotation_noise > 0 and not 0 < self.max_rotation <= math.pi:
            raise ValueError(f"DataSpec.max_rotation: must be in (0, π], got {self.max_rotation}")


def make_transform(spec) -> "PretrainTransform | None":
    """The per-item transform of a DataSpec-like object (None for kinds without noise)."""
    kind = getattr(spec, "kind", None)
    if kind in PLAIN_KINDS:
        return None
    if kind not in NOISE_KINDS:
        raise ValueError(f"DataSpec.kind: unknown kind {kind!r}")
    settings = NoiseSettings.from_spec(spec)
    settings.check()
    return PretrainTransform(settings)


class Layout:
    """Where each segment's atoms are in a record (segments need not be contiguous)."""

    def __init__(self, data: dict):
        self.lengths = np.asarray(data["block_lengths"], dtype=np.int64)
        self.B = np.asarray(data["B"], dtype=np.int64)
        self.seg = np.asarray(data["segment_ids"], dtype=np.int64)
        self.atom_seg = np.repeat(self.seg, self.lengths)  # [Natom]
        self.atom_global = np.repeat(self.B == GLB, self.lengths)  # [Natom]

    def n_atoms(self, s: int) -> int:
        """Atoms of segment s, its global atom included (ATOMICA's `segment_length`)."""
        return int(self.lengths[self.seg == s].sum())

    def atoms(self, s: int) -> np.ndarray:
        return np.nonzero(self.atom_seg == s)[0]

    def normal_atoms(self, s: int) -> np.ndarray:
        return np.nonzero((self.atom_seg == s) & ~self.atom_global)[0]

    def global_atoms(self, s: int) -> np.ndarray:
        return np.nonzero((self.atom_seg == s) & self.atom_global)[0]


def recentre_global(X: np.ndarray, layout: Layout, s: int) -> None:
    """Put segment s's global atom at the centroid of its other atoms (in place)."""
    normal = layout.normal_atoms(s)
    if len(normal):
        X[layout.global_atoms(s)] = X[normal].mean(0)


def rotate_segment(X: np.ndarray, layout: Layout, s: int, rotvec: np.ndarray) -> None:
    """Rotate segment s's non-global atoms by `rotvec` about their centroid (in place)."""
    normal = layout.normal_atoms(s)
    centre = X[normal].mean(0)
    X[normal] = (X[normal] - centre) @ rotvec_to_matrix(rotvec).T + centre
    recentre_global(X, layout, s)


class PretrainTransform:
    """ATOMICA's pretraining noise and masking for one kind; see the module docstring."""

    def __init__(self, settings: NoiseSettings):
        self.settings = settings
        s = settings
        self.kind = s.kind
        self.igso3 = IGSO3(s.rotation_noise, s.max_rotation) if s.rotation_noise > 0 else None
        self.torus = TorusScore(s.torsion_noise) if s.kind in TORSION_KINDS else None
        self.vocab = get_vocab(s.fragmentation_method) if s.kind in MASKED_KINDS else None

    def load_tables(self) -> None:
        """Load (building and caching them on a machine's first use, ~2 s) the noise tables now, in this process:
        loader workers then inherit them instead of each loading them for its first item."""
        if self.igso3 is not None:
            self.igso3.tables  # noqa: B018
        if self.torus is not None:
            self.torus.load()

    def __repr__(self) -> str:
        return f"PretrainTransform({self.settings})"

    def __call__(self, data: dict, rng: np.random.Generator, *, noisy_segment: int | None = None,
                 masked_blocks: np.ndarray | None = None) -> dict | None:
        """The transformed record, or None if ATOMICA would drop the item.

        `noisy_segment` / `masked_blocks` replace the random choice of segment / masked blocks (for tests that
        replay ATOMICA's choices).
        """
        s, kind = self.settings, self.kind
        layout = Layout(data)
        out = dict(data)

        masked = None
        if kind in MASKED_KINDS:
            masked = sample_masked_blocks(layout.B, layout.seg, s.mask_proportion, self.vocab, rng)
            if masked is None:
                return None
            if masked_blocks is not None:
                masked = np.asarray(masked_blocks, dtype=bool)
        if kind == "pretrain_masked":
            return self._mask(out, masked, None)

        torsion_masks = None
        if kind in TORSION_KINDS:
            torsion_masks = data.get("torsion_mask")
            if torsion_masks is None:
                torsion_masks = compute_torsion_masks(data, as_lists=False)
            choices = [g for g in (0, 1) if g < len(torsion_masks) and has_torsions(torsion_masks[g])
                       and layout.n_atoms(g) > 2]
        else:
            choices = [g for g in (0, 1) if layout.n_atoms(g) > 2]
        if not choices:
            return None
        noisy = int(choices[rng.integers(len(choices))])
        if noisy_segment is not None:
            if noisy_segment not in choices:
                raise ValueError(f"segment {noisy_segment} cannot be the noisy segment (choices {choices})")
            noisy = int(noisy_segment)

        X = np.array(data["X"], dtype=np.float64)  # [Natom, 3]
        out["noisy_segment"] = noisy
        out["rot_score"] = np.zeros(3)
        if self.igso3 is not None and layout.n_atoms(0) > 2 and layout.n_atoms(1) > 2:
            rotvec, out["rot_score"] = self.igso3.sample(rng)
            rotate_segment(X, layout, noisy, rotvec)
        out["tr_score"], out["tr_eps"] = np.zeros(3), 0.0
        if s.translation_noise > 0:
            eps = rng.uniform(MIN_EPS, s.translation_noise)
            z = rng.normal(size=3)
            X[layout.atoms(noisy)] += eps * z
            out["tr_score"], out["tr_eps"] = z, float(eps)

        tor_edges = None
        if kind in TORSION_KINDS:
            tors = segment_torsions(data, noisy, torsion_masks[noisy])
            delta = rng.normal(0.0, s.torsion_noise, size=len(tors))  # [n_tor]
            X = apply_torsions(X, tors, delta)
            recentre_global(X, layout, noisy)
            out["tor_score"] = self.torus(delta)
            tor_edges = tors.edges.T.copy()  # [2, n_tor]
            out["tor_edges"] = tor_edges
        if kind == "pretrain_atom":
            out["atom_score"], out["atom_eps"] = np.zeros_like(X), 0.0
            if s.atom_noise > 0:
                normal = layout.normal_atoms(noisy)
                eps = rng.uniform(MIN_EPS, s.atom_noise)
                before = X.copy()
                X[normal] += eps * rng.normal(size=(len(normal), 3))
                recentre_global(X, layout, noisy)
                out["atom_score"], out["atom_eps"] = (before - X) / eps, float(eps)

        in_dtype = np.asarray(data["X"]).dtype
        out["X"] = X.astype(in_dtype if in_dtype.kind == "f" else np.float64)  # records hold float32
        if kind in MASKED_KINDS:
            return self._mask(out, masked, tor_edges)
        return out

    def _mask(self, out: dict, masked: np.ndarray, tor_edges: np.ndarray | None) -> dict:
        out, labels, atom_map = mask_blocks(out, masked, self.vocab)
        out["masked_blocks"], out["masked_labels"] = masked, labels
        if tor_edges is not None:
            out["tor_edges"] = atom_map[tor_edges]
        out.pop("torsion_mask", None)  # it described the unmasked atoms
        return out


# --- random block sampling (ATOMICA `data/dataset.py: randomly_sample_blocks`) ---------------------------------------

SAMPLED_KINDS = frozenset({"labelled", "multiclass", "residue", "multilabel"})  # ATOMICA's labelled datasets


def keep_blocks(data: dict, keep: np.ndarray) -> dict:
    """The item with only the blocks where `keep` [Nblock] is True (and their atoms); per-block labels and
    block_to_pdb_indexes follow the blocks. Torsion masks describe the full item and are dropped."""
    from atomica_ray.data.crop import subset_block_labels

    B = np.asarray(data["B"])
    lengths = np.asarray(data["block_lengths"])
    atoms = np.repeat(keep, lengths)  # [Natom]
    out = dict(data)
    for key in ("X", "A", "atom_positions"):
        if data.get(key) is not None:
            out[key] = np.asarray(data[key])[atoms]
    for key in ("B", "block_lengths", "segment_ids"):
        out[key] = np.asarray(data[key])[keep]
    if data.get("block_labels") is not None:
        out["block_labels"] = subset_block_labels(data["block_labels"], B, np.flatnonzero(keep & (B != GLB)))
    if data.get("block_embeddings") is not None:
        out["block_embeddings"] = np.asarray(data["block_embeddings"])[keep]
    if data.get("block_to_pdb_indexes"):
        new_index = np.cumsum(keep) - 1
        out["block_to_pdb_indexes"] = {int(new_index[int(k)]): v for k, v in data["block_to_pdb_indexes"].items()
                                       if keep[int(k)]}
    if "torsion_mask" in out:
        out["torsion_mask"] = None
    return out


@dataclass(frozen=True)
class BlockSampling:
    """ATOMICA's random block sampling of training items: with probability `p_none` the item is left whole;
    otherwise every non-global block is kept with probability `p_keep` (at least one is always kept) and the global
    blocks always are. The global blocks keep their coordinates (ATOMICA does not re-centre them)."""

    p_keep: float = 1.0
    p_none: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.p_keep <= 1.0:
            raise ValueError(f"block_sampling_p_keep must be in [0, 1], got {self.p_keep}")
        if not 0.0 <= self.p_none <= 1.0:
            raise ValueError(f"block_sampling_p_none must be in [0, 1], got {self.p_none}")

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        if self.p_none > 0 and rng.random() < self.p_none:
            return data
        B = np.asarray(data["B"])
        keep = B == GLB
        normal = np.flatnonzero(~keep)
        if len(normal):
            draw = rng.random(len(normal)) < self.p_keep  # [n_non_global]
            if not draw.any():
                draw[rng.integers(len(normal))] = True
            keep[normal[draw]] = True
        return keep_blocks(data, keep)
