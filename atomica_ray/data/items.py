"""Readers and validation for ATOMICA's processed item files (`.pkl`, `.jsonl.gz`, current ATOMICA's `.parquet`).

An ATOMICA item is a dict: `id`, `data` (X, B, A, atom_positions, block_lengths, segment_ids, torsion_mask,
optional block_embeddings / block_embeddings0 / block_embeddings1), optional `label`, `affinity`
(`{'neglog_aff': float}`), `modality`, `dist_th`, `block_to_pdb_indexes` (reference §1.2).

`validate_item` turns one into a *record*, the in-memory form every other module uses:

    id                    str
    X                     float32 [n_atoms, 3]
    B, block_lengths      int64   [n_blocks]
    segment_ids           int64   [n_blocks]     0 = receptor / protein, 1 = partner, non-decreasing
    A, atom_positions     int64   [n_atoms]      atom_positions is 0 ('p') where the source had none
    torsion_mask          list (one entry per segment) of None or
                          {"type": 0, "edges": [None | int64 [n, 2]] per non-global block,
                                      "mask_rotate": [None | bool [n, block_len]] per non-global block}
                          {"type": 1, "edges": None | int64 [n, 2]  (indices over the segment's non-global atoms),
                                      "mask_rotate": None | bool [n, n_segment_atoms - 1]}
                          or None when the source has no torsion masks
    block_embeddings*     float32 [rows, dim] or absent
    label                 float | int | None   (a scalar label)
    block_labels          int8 [n_non_global_blocks] | None   one 0/1 per non-global block, in block order
                          (residue_binary_classifier: ATOMICA's list-valued `label` of a residue item)
    label_vector          float32 [num_classes] | None   (multilabel_classifier: ATOMICA's float-vector `label`)
    affinity              float | None (affinity['neglog_aff'])
    modality              int | None (names from MODALITIES are mapped to their index)
    dist_th               float | None
    block_to_pdb_indexes  dict[int, str] | None

A list-valued ATOMICA `label` is one of the two list kinds: `list_labels="block"` or `"vector"` says which; "auto"
(the default) takes a list of 0/1 values as long as the item's non-global blocks as block labels, anything else as
a label vector.

Every error is a `DataError` naming the file, the item (index and id) and the field.
Pickles run code when loaded, so `.pkl` files are read only with `allow_pickle=True`.
"""

from __future__ import annotations

import gzip
import json
import math
import numbers
import os
import pickle
import zlib
from collections.abc import Iterator

import numpy as np

from atomica_ray.data.vocab import GLB, MODALITIES, get_vocab

EMBEDDING_KEYS = ("block_embeddings", "block_embeddings0", "block_embeddings1")
# keys of `data` and of the item that the record keeps; anything else is reported as ignored
DATA_KEYS = {"X", "B", "A", "atom_positions", "block_lengths", "segment_ids", "torsion_mask", *EMBEDDING_KEYS}
ITEM_KEYS = {"id", "data", "label", "affinity", "modality", "dist_th", "block_to_pdb_indexes"}


class DataError(ValueError):
    """A source file or an item in it is unreadable or invalid."""


def where(source: str, index: int | None = None, item_id: object = None, field: str | None = None) -> str:
    """'file.pkl, item 3 (id '1abc'), field X' - the prefix of every error message."""
    parts = [os.fspath(source)]
    if index is not None:
        parts.append(f"item {index}" + (f" (id {item_id!r})" if item_id is not None else ""))
    if field is not None:
        parts.append(f"field {field}")
    return ", ".join(parts)


# --- readers ------------------------------------------------------------------------------------

def source_format(path: str) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".pkl") or name.endswith(".pickle"):
        return "pickle"
    if name.endswith(".jsonl.gz") or name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise DataError(f"{path}: unknown file type; expected an ATOMICA .pkl, .jsonl.gz or .parquet file "
                    "(or a Parquet dataset directory)")


def iter_raw_items(path: str, allow_pickle: bool = False) -> Iterator[dict]:
    """Yield the raw item dicts of an ATOMICA `.pkl` (a list of dicts) or `.jsonl(.gz)` (one dict a line)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    kind = source_format(path)
    if kind == "pickle":
        yield from _read_pickle(path, allow_pickle)
    elif kind == "parquet":
        yield from _read_atomica_parquet(path)
    else:
        yield from _read_jsonl(path)


def _read_pickle(path: str, allow_pickle: bool) -> list:
    if not allow_pickle:
        raise DataError(
            f"{path}: refusing to unpickle. Loading a pickle can run arbitrary code; if you trust this file, pass "
            "--allow-pickle (CLI) or allow_pickle=True (API)."
        )
    try:
        with open(path, "rb") as f:
            items = pickle.load(f)
    except (EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: truncated or corrupted pickle ({type(e).__name__}: {e})") from e
    except Exception as e:  # a corrupted pickle can fail in many ways (bad opcodes, missing classes, ...)
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from e
    if isinstance(items, dict) and "data" in items:
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise DataError(f"{path}: expected a list of ATOMICA item dicts, found {type(items).__name__}")
    return items


def _read_jsonl(path: str) -> Iterator[dict]:
    import orjson  # only needed for this format

    opener = gzip.open if path.lower().endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise DataError(f"{path}, line {line_no}: not valid JSON ({e})") from e
                yield item
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: truncated or corrupted file after line {line_no} ({type(e).__name__}: {e})") from e


# Current ATOMICA's Parquet (`process_pdbs` output, read by its `open_data_file`): one row per item, the `data`
# arrays as list columns (X as a list of [x, y, z]), `block_to_pdb_indexes` as JSON text with string keys, an
# optional `label`; any other column is an item key. Missing labels are NaN (pandas) or null.
ATOMICA_PARQUET_DATA = ("X", "B", "A", "atom_positions", "block_lengths", "segment_ids")


def _read_atomica_parquet(path: str) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from e
    meta = pf.schema_arrow.metadata or {}
    if b"atomica_ray.format" in meta:
        raise DataError(f"{path}: this file belongs to an atomica-ray dataset; pass its directory "
                        f"({os.path.dirname(os.path.abspath(path))}) instead")
    names = pf.schema_arrow.names
    missing = [c for c in ("id", "X", "B", "A", "block_lengths", "segment_ids") if c not in names]
    if missing:
        raise DataError(f"{path}: not an ATOMICA Parquet file: missing column(s) {', '.join(missing)} "
                        f"(has {', '.join(names)})")
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=256):
            columns = {name: batch.column(name) for name in batch.schema.names}
            arrays = {k: _list_rows(columns[k], path, index, k) for k in ATOMICA_PARQUET_DATA if k in columns}
            others = {k: v.to_pylist() for k, v in columns.items() if k not in ATOMICA_PARQUET_DATA}
            for row in range(batch.num_rows):
                item = {k: vals[row] for k, vals in others.items()}
                item["data"] = {k: vals[row] for k, vals in arrays.items()}
                item_id = item.get("id")
                b2p = item.get("block_to_pdb_indexes")
                if isinstance(b2p, str):
                    try:
                        item["block_to_pdb_indexes"] = json.loads(b2p)
                    except json.JSONDecodeError as e:
                        loc = where(path, index, item_id, "block_to_pdb_indexes")
                        raise DataError(f"{loc}: not valid JSON ({e})") from e
                label = item.get("label")
                if isinstance(label, float) and math.isnan(label):
                    item["label"] = None  # pandas writes a missing label as NaN
                yield item
                index += 1
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read rows after item {index} ({' '.join(str(e).split())})") from e


def _list_rows(column, path: str, first: int, name: str) -> list:
    """Per-row numpy arrays of a list column (X, flat or as [[x, y, z], ...], -> [n, 3]); None for null rows."""
    import pyarrow as pa

    def is_list(t) -> bool:
        return pa.types.is_list(t) or pa.types.is_large_list(t)

    if not is_list(column.type):
        raise DataError(f"{where(path, first, None, name)}: expected a list column, got {column.type}")
    offsets = column.offsets.to_numpy()  # [rows + 1] into column.values
    values = column.values
    if is_list(values.type):  # X as [[x, y, z], ...]
        inner = values.offsets.to_numpy()  # [atoms + 1] into values.values
        bad = np.nonzero(np.diff(inner) != 3)[0]
        if len(bad):
            row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise DataError(f"{where(path, first + row, None, name)}: expected [x, y, z] for every atom")
        child = values.values.to_numpy(zero_copy_only=False)
        offsets, flat = inner[offsets], child  # row r: flat[offsets[r]:offsets[r + 1]]
    else:
        flat = values.to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    rows = []
    for r in range(len(column)):
        seg = flat[offsets[r]:offsets[r + 1]] if valid[r] else None
        rows.append(seg.reshape(-1, 3) if seg is not None and name == "X" else seg)
    return rows


# --- validation ---------------------------------------------------------------------------------

def _array(value, dtype, loc: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{loc}: cannot read as a {ndim}-d {np.dtype(dtype).name} array ({e})") from e
    if arr.ndim != ndim:
        if ndim == 2 and arr.size == 0:
            return arr.reshape(0, 3)
        raise DataError(f"{loc}: expected {ndim} dimensions, got shape {arr.shape}")
    return arr


def _int_array(value, loc: str) -> np.ndarray:
    arr = _array(value, None, loc, 1)
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass  # integral floats are accepted
        else:
            raise DataError(f"{loc}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _scalar(value, loc: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise DataError(f"{loc}: not finite ({value})")
        return float(value)
    raise DataError(f"{loc}: expected a number, got {type(value).__name__}")


LIST_LABEL_KINDS = ("auto", "block", "vector")


def _list_label(value, n_non_global: int, how: str, loc: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(block_labels, label_vector) of a list-valued label; see the module docstring."""
    if how not in LIST_LABEL_KINDS:
        raise ValueError(f"list_labels must be one of {LIST_LABEL_KINDS}, got {how!r}")
    arr = _array(value, np.float64, loc, 1)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{loc}: non-finite value at position {int(np.argmax(~np.isfinite(arr)))}")
    binary = bool(np.all((arr == 0) | (arr == 1)))
    if how == "auto":
        how = "block" if binary and len(arr) == n_non_global else "vector"
    if how == "vector":
        if len(arr) == 0:
            raise DataError(f"{loc}: an empty label vector")
        return None, arr.astype(np.float32)
    if len(arr) != n_non_global:
        raise DataError(f"{loc}: {len(arr)} block labels for {n_non_global} non-global blocks (one 0/1 per "
                        "non-global block, in block order)")
    if not binary:
        bad = int(np.argmax((arr != 0) & (arr != 1)))
        raise DataError(f"{loc}: block label {arr[bad]} at position {bad} is not 0 or 1")
    return arr.astype(np.int8), None


def is_list_label(value) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.size != 1)


def validate_item(item: object, source: str, index: int, num_block_types: int | None = None,
                  list_labels: str = "auto") -> dict:
    """Check one raw ATOMICA item and return its record (see the module docstring)."""
    if num_block_types is None:
        num_block_types = len(get_vocab("PS_300"))
    if not isinstance(item, dict):
        raise DataError(f"{where(source, index)}: expected an item dict, got {type(item).__name__}")
    item_id = item.get("id")
    loc = lambda field: where(source, index, item_id, field)  # noqa: E731
    if item_id is None:
        raise DataError(f"{loc('id')}: missing")
    data = item.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{loc('data')}: missing or not a dict")
    for key in ("X", "B", "A", "block_lengths", "segment_ids"):
        if key not in data or data[key] is None:
            raise DataError(f"{loc(key)}: missing")

    X = _array(data["X"], np.float64, loc("X"), 2)
    B = _int_array(data["B"], loc("B"))
    A = _int_array(data["A"], loc("A"))
    block_lengths = _int_array(data["block_lengths"], loc("block_lengths"))
    segment_ids = _int_array(data["segment_ids"], loc("segment_ids"))
    if data.get("atom_positions") is not None:
        atom_positions = _int_array(data["atom_positions"], loc("atom_positions"))
    else:
        atom_positions = np.zeros(len(A), dtype=np.int64)

    n_blocks, n_atoms = len(B), len(X)
    if n_blocks == 0:
        raise DataError(f"{loc('B')}: the item has no blocks")
    if X.shape[1] != 3:
        raise DataError(f"{loc('X')}: expected shape [n_atoms, 3], got {X.shape}")
    if not np.all(np.isfinite(X)):
        bad = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise DataError(f"{loc('X')}: non-finite coordinate at atom {bad}")
    if len(block_lengths) != n_blocks or len(segment_ids) != n_blocks:
        raise DataError(
            f"{loc('block_lengths' if len(block_lengths) != n_blocks else 'segment_ids')}: len(B)={n_blocks}, "
            f"len(block_lengths)={len(block_lengths)}, len(segment_ids)={len(segment_ids)} must be equal"
        )
    if np.any(block_lengths < 1):
        raise DataError(f"{loc('block_lengths')}: block {int(np.argmax(block_lengths < 1))} has no atoms")
    if len(A) != n_atoms or int(block_lengths.sum()) != n_atoms:
        raise DataError(
            f"{loc('A' if len(A) != n_atoms else 'block_lengths')}: len(X)={n_atoms}, len(A)={len(A)}, "
            f"sum(block_lengths)={int(block_lengths.sum())} must be equal"
        )
    if len(atom_positions) != n_atoms:
        raise DataError(f"{loc('atom_positions')}: length {len(atom_positions)} != len(X)={n_atoms}")
    if B.size and B.max() >= num_block_types:
        raise DataError(f"{loc('B')}: unknown block type index {int(B.max())} (valid: 0..{num_block_types - 1}; "
                        "fragment blocks of another vocabulary need --fragmentation-method / fragmentation_method)")
    _check_range(B, num_block_types, loc("B"), "block type")
    vocab = get_vocab(None)
    _check_range(A, vocab.num_atom_types, loc("A"), "atom type")
    _check_range(atom_positions, vocab.num_atom_positions, loc("atom_positions"), "atom position")
    if np.any((segment_ids != 0) & (segment_ids != 1)):
        raise DataError(f"{loc('segment_ids')}: values must be 0 or 1, got {sorted(set(segment_ids.tolist()))}")
    if np.any(np.diff(segment_ids) < 0):
        raise DataError(f"{loc('segment_ids')}: segment 0 blocks must come before segment 1 blocks")

    record = {
        "id": str(item_id),
        "X": X.astype(np.float32),
        "B": B,
        "A": A,
        "atom_positions": atom_positions,
        "block_lengths": block_lengths,
        "segment_ids": segment_ids,
        "torsion_mask": _torsion_mask(data.get("torsion_mask"), B, block_lengths, segment_ids, loc("torsion_mask")),
    }
    for key in EMBEDDING_KEYS:
        if data.get(key) is not None:
            emb = _array(data[key], np.float32, loc(key), 2)
            if not np.all(np.isfinite(emb)):
                raise DataError(f"{loc(key)}: non-finite values")
            record[key] = emb
    if "block_embeddings" in record and len(record["block_embeddings"]) != n_blocks:
        raise DataError(f"{loc('block_embeddings')}: {len(record['block_embeddings'])} rows for {n_blocks} blocks")

    record["block_labels"] = record["label_vector"] = None
    if is_list_label(item.get("label")):
        record["label"] = None
        record["block_labels"], record["label_vector"] = _list_label(
            item["label"], int(np.sum(B != GLB)), list_labels, loc("label"))
    else:
        record["label"] = _scalar(item.get("label"), loc("label"))
    affinity = item.get("affinity")
    if isinstance(affinity, dict):
        affinity = affinity.get("neglog_aff")
    record["affinity"] = _scalar(affinity, loc("affinity"))
    modality = item.get("modality")
    if isinstance(modality, str):
        if modality not in MODALITIES:
            raise DataError(f"{loc('modality')}: unknown modality {modality!r}; expected one of {list(MODALITIES)}")
        modality = MODALITIES[modality]
    modality = _scalar(modality, loc("modality"))
    if modality is not None and not (isinstance(modality, int) and 0 <= modality < len(MODALITIES)):
        raise DataError(f"{loc('modality')}: {modality} is not a modality index 0..{len(MODALITIES) - 1}")
    record["modality"] = modality
    record["dist_th"] = _scalar(item.get("dist_th"), loc("dist_th"))
    b2p = item.get("block_to_pdb_indexes")
    if b2p is not None:
        if not isinstance(b2p, dict):
            raise DataError(f"{loc('block_to_pdb_indexes')}: expected a dict, got {type(b2p).__name__}")
        try:
            b2p = {int(k): str(v) for k, v in b2p.items()}
        except (TypeError, ValueError) as e:
            raise DataError(f"{loc('block_to_pdb_indexes')}: keys must be block indices ({e})") from e
    record["block_to_pdb_indexes"] = b2p
    return record


def ignored_keys(item: dict) -> set[str]:
    """Keys of a raw item (and of its `data`) that records do not keep."""
    out = {k for k in item if k not in ITEM_KEYS}
    data = item.get("data")
    if isinstance(data, dict):
        out |= {f"data.{k}" for k in data if k not in DATA_KEYS}
    return out


def _check_range(arr: np.ndarray, n: int, loc: str, what: str) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise DataError(f"{loc}: unknown {what} index {bad} (valid: 0..{n - 1})")


def _torsion_mask(tm, B, block_lengths, segment_ids, loc: str):
    """Normalise ATOMICA's per-segment torsion masks (numpy arrays, int types) and check their shapes."""
    if tm is None:
        return None
    if not isinstance(tm, (list, tuple)):
        raise DataError(f"{loc}: expected a list with one entry per segment, got {type(tm).__name__}")
    out = []
    for seg, entry in enumerate(tm):
        if entry is None:
            out.append(None)
            continue
        sloc = f"{loc}[{seg}]"
        if not isinstance(entry, dict) or "type" not in entry:
            raise DataError(f"{sloc}: expected a dict with type / edges / mask_rotate")
        try:
            kind = int(entry["type"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{sloc}.type: expected 0 or 1, got {entry['type']!r}") from e
        in_seg = segment_ids == seg
        normal = in_seg & (B != GLB)
        edges, masks = entry.get("edges"), entry.get("mask_rotate")
        if kind == 0:
            lengths = block_lengths[normal]
            edges = [None] * len(lengths) if edges is None else list(edges)
            masks = [None] * len(lengths) if masks is None else list(masks)
            if len(edges) != len(lengths) or len(masks) != len(lengths):
                raise DataError(
                    f"{sloc}: {len(edges)} edge lists / {len(masks)} masks for {len(lengths)} non-global blocks"
                )
            e_out, m_out = [], []
            for b, (e, m, n) in enumerate(zip(edges, masks, lengths)):
                if e is None or len(e) == 0:
                    e_out.append(None)
                    m_out.append(None)
                    continue
                e_out.append(_edges(e, int(n), f"{sloc}.edges[{b}]"))
                m_out.append(_mask(m, len(e_out[-1]), int(n), f"{sloc}.mask_rotate[{b}]"))
            out.append({"type": 0, "edges": e_out, "mask_rotate": m_out})
        elif kind == 1:
            n = int(block_lengths[normal].sum())
            if edges is None or len(edges) == 0:
                out.append({"type": 1, "edges": None, "mask_rotate": None})
                continue
            e = _edges(edges, n, f"{sloc}.edges")
            out.append({"type": 1, "edges": e, "mask_rotate": _mask(masks, len(e), n, f"{sloc}.mask_rotate")})
        else:
            raise DataError(f"{sloc}.type: expected 0 (side chains) or 1 (whole segment), got {kind}")
    return out


def _edges(e, n_atoms: int, loc: str) -> np.ndarray:
    arr = _array(e, np.int64, loc, 2)
    if arr.shape[1] != 2:
        raise DataError(f"{loc}: expected shape [n, 2], got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_atoms):
        raise DataError(f"{loc}: atom index out of range 0..{n_atoms - 1}")
    return arr


def _mask(m, n_rows: int, n_atoms: int, loc: str) -> np.ndarray:
    if m is None:
        raise DataError(f"{loc}: missing for {n_rows} rotatable bonds")
    arr = _array(m, bool, loc, 2)
    if arr.shape != (n_rows, n_atoms):
        raise DataError(f"{loc}: expected shape [{n_rows}, {n_atoms}], got {list(arr.shape)}")
    return arr


def read_records(path: str, allow_pickle: bool = False, num_block_types: int | None = None,
                 list_labels: str = "auto") -> Iterator[dict]:
    """Validated records of one ATOMICA file, in order."""
    for i, raw in enumerate(iter_raw_items(path, allow_pickle)):
        yield validate_item(raw, path, i, num_block_types, list_labels)
