"""Data -> engine: `DataSpec`, `open_dataset`, `make_loader` (docs/DESIGN.md)."""

from __future__ import annotations

import dataclasses

# dataset kind -> ATOMICA dataset class it reproduces (reference §1.3, §1.4)
KINDS = {
    "affinity": "PDBBindBenchmark",
    "labelled": "LabelledPDBDataset",
    "multiclass": "MultiClassLabelledPDBDataset",
    "plain": "PDBDataset",
    "prot_interface": "ProtInterfaceDataset",
    "pretrain_torsion": "PretrainTorsionDataset",
    "pretrain_masked_torsion": "PretrainMaskedTorsionDataset",
    "pretrain_masked": "PretrainMaskedDataset",
    "pretrain_atom": "PretrainAtomDataset",
}
TORSION_KINDS = {"pretrain_torsion", "pretrain_masked_torsion"}
MASKED_KINDS = {"pretrain_masked_torsion", "pretrain_masked"}
PRETRAIN_KINDS = {"pretrain_torsion", "pretrain_masked_torsion", "pretrain_masked", "pretrain_atom"}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What to load and how to batch it. Noise fields are read by `transforms.make_transform` for the
    pretraining kinds (0 / None switches a noise off); defaults are ATOMICA's released pretraining values."""

    path: str
    kind: str = "labelled"
    max_n_vertex_per_gpu: int = 1000  # block budget of one batch (per rank)
    max_n_vertex_per_item: int | None = None  # larger items are cropped around the interface
    balance: str | None = None  # None | "label" | "modality"
    fragmentation_method: str | None = "PS_300"
    allow_pickle: bool = False
    # pretraining noise / masking
    atom_noise: float | None = None
    translation_noise: float | None = 1.0
    rotation_noise: float | None = 0.25
    max_rotation: float = 0.5
    torsion_noise: float | None = 0.5
    mask_proportion: float | None = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec.kind: unknown kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.balance not in (None, "label", "modality"):
            raise ValueError(f"DataSpec.balance: expected None, 'label' or 'modality', got {self.balance!r}")
        if self.max_n_vertex_per_gpu < 1:
            raise ValueError(f"DataSpec.max_n_vertex_per_gpu: must be positive, got {self.max_n_vertex_per_gpu}")
        if self.max_n_vertex_per_item is not None and self.max_n_vertex_per_item < 3:
            raise ValueError(
                f"DataSpec.max_n_vertex_per_item: must be at least 3 (two global blocks and one more), "
                f"got {self.max_n_vertex_per_item}"
            )

    def replace(self, **changes) -> "DataSpec":
        return dataclasses.replace(self, **changes)
