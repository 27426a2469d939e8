"""Collation of records into ATOMICA batches (reference §1.3, §1.4): per-atom and per-block arrays are
concatenated across items (no padding), per-item values stacked, `lengths` = blocks per item.

Keys and dtypes follow ATOMICA's `collate_fn` of the dataset class each kind reproduces; X and scores are
float32, indices int64, masks bool. Keys ATOMICA sets to None (e.g. `atom_score` in torsion pretraining) are
present with value None, so `batch[key]` works the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from atomica_ray.data.items import EMBEDDING_KEYS

BASE_KEYS = ("X", "B", "A", "atom_positions", "block_lengths", "segment_ids")


def _cat(items: list[dict], key: str, dtype: np.dtype) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.asarray(it[key], dtype=dtype) for it in items]))


def _stack(values: list, dtype: np.dtype) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=dtype))


def _base(items: list[dict], keys=BASE_KEYS) -> dict:
    out = {}
    for k in keys:
        out[k] = _cat(items, k, np.float32 if k == "X" else np.int64)
    return out


def _embeddings(items: list[dict]) -> dict:
    """ATOMICA's rule: `block_embeddings` if the first item has it, else the per-segment pair if it has both."""
    first = items[0]
    if "block_embeddings" in first:
        keys = ["block_embeddings"]
    elif "block_embeddings0" in first and "block_embeddings1" in first:
        keys = ["block_embeddings0", "block_embeddings1"]
    else:
        return {}
    for k in keys:
        missing = [it["id"] for it in items if k not in it]
        if missing:
            raise ValueError(f"collate: items {missing[:3]} lack {k} while others have it")
    return {k: _cat(items, k, np.float32) for k in keys if k in EMBEDDING_KEYS}


def _lengths(items: list[dict]) -> torch.Tensor:
    return _stack([len(it["B"]) for it in items], np.int64)


def collate_plain(items: list[dict]) -> dict:
    """PDBDataset: X, B, A, atom_positions, block_lengths, segment_ids, lengths."""
    return {**_base(items), "lengths": _lengths(items)}


def collate_labelled(items: list[dict], label_dtype=np.float32) -> dict:
    """LabelledPDBDataset (float label) / MultiClassLabelledPDBDataset (int64 label)."""
    return {**_base(items), "label": _stack([it["label"] for it in items], label_dtype), "lengths": _lengths(items)}


def collate_residue(items: list[dict]) -> dict:
    """LabelledPDBDataset with per-block labels (residue_binary_classifier): `label` [n_non_global_blocks] float,
    the items' block labels concatenated in batch order (what the model's logits over B != GLB line up with);
    `item_index` [bs] the dataset index of each item (per-structure metrics group blocks by it)."""
    out = {**_base(items), "label": _cat(items, "block_labels", np.float32), "lengths": _lengths(items)}
    if all("item_index" in it for it in items):
        out["item_index"] = _stack([it["item_index"] for it in items], np.int64)
    return out


def collate_multilabel(items: list[dict]) -> dict:
    """MultiClassLabelledPDBDataset with label vectors (multilabel_classifier): `label` [bs, num_classes] float."""
    return {**_base(items), "label": torch.from_numpy(np.stack([np.asarray(it["label_vector"], np.float32)
                                                                for it in items])), "lengths": _lengths(items)}


def collate_affinity(items: list[dict]) -> dict:
    """PDBBindBenchmark: no atom_positions; optional block embeddings; label = affinity."""
    out = _base(items, ("X", "B", "A", "block_lengths", "segment_ids"))
    out.update(_embeddings(items))
    out["label"] = _stack([it["label"] for it in items], np.float32)
    out["lengths"] = _lengths(items)
    return out


def collate_prot_interface(items: list[dict]) -> dict:
    """ProtInterfaceDataset: the complex and its segment 0 alone, each a plain batch."""
    return {"prot": collate_plain([it["prot"] for it in items]), "cmplx": collate_plain(items)}


def _scores(items: list[dict]) -> dict:
    """Per-item global-noise fields; zeros where a noise is off (as ATOMICA fills them)."""
    zeros3 = np.zeros(3)
    return {
        "rot_score": _stack([it.get("rot_score", zeros3) for it in items], np.float32),  # [bs, 3]
        "tr_score": _stack([it.get("tr_score", zeros3) for it in items], np.float32),  # [bs, 3]
        "noisy_segment": _stack([it.get("noisy_segment", 0) for it in items], np.int64),  # [bs]
        "tr_eps": _stack([it.get("tr_eps", 0.0) for it in items], np.float32),  # [bs]
    }


def _modality(items: list[dict]) -> torch.Tensor | None:
    mods = [it.get("modality") for it in items]
    return None if any(m is None for m in mods) else _stack(mods, np.int64)


def _torsion(items: list[dict]) -> dict:
    """tor_score [n_tor], tor_edges [2, n_tor] offset by the atoms of earlier items, tor_batch [n_tor]."""
    scores, edges, owner = [], [], []
    offset = 0
    for i, it in enumerate(items):
        e = it.get("tor_edges")
        if e is not None and np.size(e):
            e = np.asarray(e, dtype=np.int64).reshape(2, -1)
            edges.append(e + offset)
            scores.append(np.asarray(it["tor_score"], dtype=np.float32).reshape(-1))
            owner.append(np.full(e.shape[1], i, dtype=np.int64))
        offset += len(it["A"])
    if not edges:
        return {"tor_score": torch.zeros(0), "tor_edges": torch.zeros(2, 0, dtype=torch.long),
                "tor_batch": torch.zeros(0, dtype=torch.long)}
    out = {
        "tor_score": torch.from_numpy(np.concatenate(scores)),
        "tor_edges": torch.from_numpy(np.concatenate(edges, axis=1)),
        "tor_batch": torch.from_numpy(np.concatenate(owner)),
    }
    if out["tor_score"].shape[0] != out["tor_edges"].shape[1]:
        raise ValueError("collate: tor_score and tor_edges disagree in length")
    return out


def _masking(items: list[dict]) -> dict:
    return {
        "masked_blocks": torch.from_numpy(np.concatenate(
            [np.asarray(it.get("masked_blocks", np.zeros(len(it["B"]), bool)), dtype=bool) for it in items])),
        "masked_labels": torch.from_numpy(np.concatenate(
            [np.asarray(it.get("masked_labels", []), dtype=np.int64).reshape(-1) for it in items])),
    }


def collate_pretrain_torsion(items: list[dict], masked: bool = False) -> dict:
    """PretrainTorsionDataset (+ masking for PretrainMaskedTorsionDataset)."""
    out = _base(items)
    out.update(_embeddings(items))
    tor = _torsion(items)
    out["tor_score"] = tor["tor_score"]
    out.update(_scores(items))
    out["tor_edges"], out["tor_batch"] = tor["tor_edges"], tor["tor_batch"]
    out["label"] = _stack([-1.0] * len(items), np.float32)
    out["modality"] = _modality(items)
    out["lengths"] = _lengths(items)
    out["atom_score"], out["atom_eps"] = None, None
    if masked:
        out.update(_masking(items))
    return out


def collate_pretrain_masked(items: list[dict]) -> dict:
    """PretrainMaskedDataset: masking only."""
    return {**_base(items), **_masking(items), "modality": _modality(items), "lengths": _lengths(items)}


def collate_pretrain_atom(items: list[dict]) -> dict:
    """PretrainAtomDataset: Gaussian atom noise (+ rotation / translation)."""
    out = _base(items)
    out["atom_score"] = torch.from_numpy(np.concatenate(
        [np.asarray(it["atom_score"], np.float32) if "atom_score" in it else np.zeros((len(it["X"]), 3), np.float32)
         for it in items]))
    out.update(_scores(items))
    out["atom_eps"] = _stack([it.get("atom_eps", 0.0) for it in items], np.float32)
    out["label"] = _stack([-1.0] * len(items), np.float32)
    out["modality"] = _modality(items)
    out["lengths"] = _lengths(items)
    out["tor_edges"], out["tor_score"], out["tor_batch"] = None, None, None
    return out


COLLATE = {
    "plain": collate_plain,
    "labelled": collate_labelled,
    "multiclass": lambda items: collate_labelled(items, np.int64),
    "residue": collate_residue,
    "multilabel": collate_multilabel,
    "affinity": collate_affinity,
    "prot_interface": collate_prot_interface,
    "pretrain_torsion": collate_pretrain_torsion,
    "pretrain_masked_torsion": lambda items: collate_pretrain_torsion(items, masked=True),
    "pretrain_masked": collate_pretrain_masked,
    "pretrain_atom": collate_pretrain_atom,
}


def collate(items: list[dict], kind: str) -> dict:
    """One ATOMICA batch of `kind` from prepared records (labels set, noise applied)."""
    if not items:
        raise ValueError("collate: no items")
    return COLLATE[kind](items)


def to_device(batch, device: torch.device):
    """A batch (nested dicts of tensors; other values as they are) on `device`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch
