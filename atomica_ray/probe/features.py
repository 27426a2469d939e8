"""Probe inputs: one representation of `atomica-ray embed`'s output, labels joined by item id, and the
standardizer fit on the training split.

Representations are picked by name. `embed` writes `graph_embedding`, `block_embedding`, `atom_embedding`; current
ATOMICA (and newer `embed` output) name them `h_graph`, `h_block`, `h_atom`: either spelling finds either column.
A graph-level representation gives one row per item; a block-level one one row per non-global block (the rows of
global blocks, `block_id` = GLB, are left out), grouped by item, for residue-level labels.

Labels come from atomica-ray datasets (the `label`, `label_vector` or `block_labels` column) or from a Parquet
table with columns `id, label` (a number per item, a list per item for multi-label, a list per item of one 0/1 per
non-global block for block-level probes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from atomica_ray.data.vocab import GLB

ALIASES = {"h_graph": "graph_embedding", "h_block": "block_embedding", "h_atom": "atom_embedding"}
ALIASES.update({v: k for k, v in list(ALIASES.items())})
TASK_TYPES = ("binary", "multiclass", "multilabel")


class ProbeInputError(ValueError):
    """Bad probe input; the message names the file, the item and the column."""


def resolve_column(names: list[str], representation: str, path: str) -> str:
    """The column holding `representation`, under either of its spellings."""
    for name in (representation, ALIASES.get(representation)):
        if name and name in names:
            return name
    columns = [n for n in names if n not in ("id", "block_id", "atom_id")]
    raise ProbeInputError(f"{path}: no column for representation {representation!r}; it has {columns}")


@dataclass
class Split:
    X: np.ndarray  # [n_rows, dim] float32
    y: np.ndarray  # [n_rows] (binary, multiclass) or [n_rows, C] (multilabel)
    groups: np.ndarray  # [n_rows] item of each row (the cluster of the cluster bootstrap)
    ids: list[str]  # item ids, in row-group order


def read_embeddings(path: str, representation: str) -> tuple[list[str], list, str, list | None]:
    """(ids, per-item values of the representation column, column name, per-item block types or None)."""
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise ProbeInputError(f"{path}: no such embeddings file (write one with `atomica-ray embed`)")
    names = pq.read_schema(path).names
    column = resolve_column(names, representation, path)
    wanted = ["id", column] + (["block_id"] if "block_id" in names else [])
    table = pq.read_table(path, columns=wanted).to_pydict()
    return table["id"], table[column], column, table.get("block_id")


def read_labels(sources: list[str], block_level: bool) -> dict[str, object]:
    """id -> label from atomica-ray dataset directories or `id, label` Parquet tables."""
    import pyarrow.parquet as pq

    from atomica_ray.data.parquet import ParquetItems

    out: dict[str, object] = {}
    for src in sources:
        if os.path.isdir(src):
            ds = ParquetItems(src)
            ids = [r for f in ds.files for r in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
            if block_level:
                values = ds.column_values("block_labels")
            else:
                vectors = ds.column_values("label_vector")
                scalar = ds.index["label"]
                values = [v if v is not None else (None if np.isnan(s) else s) for v, s in zip(vectors, scalar)]
        elif os.path.isfile(src):
            table = pq.read_table(src).to_pydict()
            if "id" not in table or "label" not in table:
                raise ProbeInputError(f"{src}: a label table needs columns id and label, it has {sorted(table)}")
            ids, values = table["id"], table["label"]
        else:
            raise ProbeInputError(f"{src}: no such label source (a dataset directory or an id,label Parquet file)")
        for i, v in zip(ids, values):
            if v is not None:
                out[str(i)] = v
    return out


def load_split(path: str, representation: str, labels: dict, split: str) -> tuple[Split, bool]:
    """Rows, labels and groups of one split; also whether the representation is block-level."""
    ids, values, column, block_types = read_embeddings(path, representation)
    if not ids:
        raise ProbeInputError(f"{path}: no items")
    block_level = bool(values) and isinstance(values[0], list) and bool(values[0]) and isinstance(values[0][0], list)
    X, y, groups = [], [], []
    for k, (item, value) in enumerate(zip(ids, values)):
        if item not in labels:
            raise ProbeInputError(f"{path}, item {k} (id {item!r}), column label: no label for this id in the "
                                  f"--labels sources ({split} split)")
        label = labels[item]
        if block_level:
            rows = np.asarray(value, dtype=np.float32)
            if block_types is None:
                raise ProbeInputError(f"{path}: a block-level representation needs the block_id column")
            rows = rows[np.asarray(block_types[k]) != GLB]
            label = np.asarray(label)
            if len(label) != len(rows):
                raise ProbeInputError(f"{path}, item {k} (id {item!r}), column {column}: {len(rows)} non-global "
                                      f"blocks but {len(label)} block labels")
            X.append(rows)
            y.extend(label.tolist())
            groups.extend([k] * len(rows))
        else:
            X.append(np.asarray(value, dtype=np.float32)[None])
            y.append(label)
            groups.append(k)
    return Split(np.concatenate(X), np.asarray(y), np.asarray(groups), list(ids)), block_level


def infer_task_type(y: np.ndarray) -> str:
    if y.ndim == 2:
        return "multilabel"
    if not np.all(y == np.round(y)):
        raise ProbeInputError("labels are not class indices: the probe classifies (binary, multiclass, multilabel)")
    return "binary" if set(np.unique(y).tolist()) <= {0, 1} else "multiclass"


def fit_standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the training rows (a constant column gets 1: it stays at 0)."""
    mu = X.mean(0, keepdims=True)
    sd = X.std(0, keepdims=True)
    return mu, np.where(sd > 1e-8, sd, 1.0)


def standardize(X: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return ((X - mu) / sd).astype(np.float32)
