"""Records -> ATOMICA's item files: the inverse of `convert`, so data made here goes back to ATOMICA's tools.

  .jsonl.gz / .jsonl   one item a line, as ATOMICA's `dataset_to_compressed_jsonl` writes it (block_to_pdb_indexes
                       keys as strings); torsion masks and block embeddings included
  .parquet             current ATOMICA's `process_pdbs` layout (one row per item: id, X as [x, y, z] lists, B, A,
                       atom_positions, block_lengths, segment_ids, block_to_pdb_indexes as JSON text, label and,
                       where present, affinity / modality / dist_th); ATOMICA's Parquet reader has no torsion masks
                       or block embeddings, so items carrying them are refused (use .jsonl.gz)
  .pkl                 a pickled list of item dicts (ATOMICA's oldest format); written only when asked explicitly

An item is `{'id', 'data': {X, B, A, atom_positions, block_lengths, segment_ids[, torsion_mask]
[, block_embeddings*]}, 'label'?, 'affinity': {'neglog_aff'}?, 'modality'?, 'dist_th'?, 'block_to_pdb_indexes'?}`
with plain lists, the form ATOMICA's own files hold. Files are written whole (temporary name, then rename).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import tempfile
from collections.abc import Iterable

import numpy as np

from atomica_ray.data.items import EMBEDDING_KEYS, DataError
from atomica_ray.data.vocab import MODALITIES

DATA_ARRAYS = ("X", "B", "A", "atom_positions", "block_lengths", "segment_ids")
MODALITY_NAMES = {v: k for k, v in MODALITIES.items()}


def export_format(path: str) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".jsonl.gz") or name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".pkl") or name.endswith(".pickle"):
        return "pickle"
    raise DataError(f"{path}: unknown output type; expected .jsonl.gz, .jsonl, .parquet or .pkl")


def torsion_mask_lists(tm):
    """A record's torsion masks as nested lists (None kept)."""
    if tm is None:
        return None

    def lists(x):
        return None if x is None else np.asarray(x).astype(int if np.asarray(x).dtype != bool else bool).tolist()

    out = []
    for seg in tm:
        if seg is None:
            out.append(None)
        elif seg["type"] == 0:
            out.append({"type": 0, "edges": [lists(e) for e in seg["edges"]],
                        "mask_rotate": [lists(m) for m in seg["mask_rotate"]]})
        else:
            out.append({"type": 1, "edges": lists(seg["edges"]), "mask_rotate": lists(seg["mask_rotate"])})
    return out


def record_to_item(rec: dict) -> dict:
    """ATOMICA's item dict (plain lists) of one record."""
    data = {k: np.asarray(rec[k]).tolist() for k in DATA_ARRAYS}
    if rec.get("torsion_mask") is not None:
        data["torsion_mask"] = torsion_mask_lists(rec["torsion_mask"])
    for k in EMBEDDING_KEYS:
        if rec.get(k) is not None:
            data[k] = np.asarray(rec[k]).tolist()
    item = {"id": rec["id"], "data": data}
    if rec.get("label") is not None:
        item["label"] = rec["label"]
    if rec.get("affinity") is not None:
        item["affinity"] = {"neglog_aff": rec["affinity"]}
    if rec.get("modality") is not None:
        item["modality"] = MODALITY_NAMES.get(rec["modality"], rec["modality"])
    if rec.get("dist_th") is not None:
        item["dist_th"] = rec["dist_th"]
    if rec.get("block_to_pdb_indexes") is not None:
        item["block_to_pdb_indexes"] = {int(k): v for k, v in rec["block_to_pdb_indexes"].items()}
    return item


def write_atomic(path: str, write) -> None:
    """Call write(file object) on a temporary file beside `path`, then rename it to `path`."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_jsonl(records: Iterable[dict], path: str) -> int:
    import orjson

    n = 0

    def write(f):
        nonlocal n
        out = gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) if path.lower().endswith(".gz") else f
        for rec in records:
            item = record_to_item(rec)
            if "block_to_pdb_indexes" in item:  # JSON object keys are strings, as ATOMICA writes them
                item["block_to_pdb_indexes"] = {str(k): v for k, v in item["block_to_pdb_indexes"].items()}
            out.write(orjson.dumps(item) + b"\n")
            n += 1
        if out is not f:
            out.close()

    write_atomic(path, write)
    return n


def write_pickle(records: Iterable[dict], path: str) -> int:
    items = [record_to_item(rec) for rec in records]
    write_atomic(path, lambda f: pickle.dump(items, f, protocol=4))
    return len(items)


OPTIONAL_PARQUET_COLUMNS = ("label", "affinity", "modality", "dist_th")


def write_atomica_parquet(records: Iterable[dict], path: str, columns: Iterable[str] = ("label",),
                          row_group_items: int = 256) -> int:
    """ATOMICA's Parquet layout; `columns`: which of label / affinity / modality / dist_th to write (ATOMICA's
    reader makes every column an item key, so absent ones are left out rather than written empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    optional = {
        "label": (pa.float64(), lambda r: r.get("label")),
        "affinity": (pa.struct([("neglog_aff", pa.float64())]),
                     lambda r: None if r.get("affinity") is None else {"neglog_aff": r["affinity"]}),
        "modality": (pa.string(), lambda r: None if r.get("modality") is None else MODALITY_NAMES[r["modality"]]),
        "dist_th": (pa.float64(), lambda r: r.get("dist_th")),
    }
    columns = [c for c in OPTIONAL_PARQUET_COLUMNS if c in set(columns)]
    schema = pa.schema([("X", pa.list_(pa.list_(pa.float64())))]
                       + [(k, pa.list_(pa.int64())) for k in DATA_ARRAYS[1:]]
                       + [("block_to_pdb_indexes", pa.string()), ("id", pa.string())]
                       + [(c, optional[c][0]) for c in columns])
    n = 0

    def table(chunk: list[dict]) -> pa.Table:
        cols = {"X": [np.asarray(r["X"], dtype=np.float64).tolist() for r in chunk]}
        for k in DATA_ARRAYS[1:]:
            cols[k] = [np.asarray(r[k]).tolist() for r in chunk]
        cols["block_to_pdb_indexes"] = [
            json.dumps({str(k): v for k, v in (r.get("block_to_pdb_indexes") or {}).items()}) for r in chunk]
        cols["id"] = [r["id"] for r in chunk]
        for c in columns:
            cols[c] = [optional[c][1](r) for r in chunk]
        return pa.table(cols, schema=schema)

    def write(f):
        nonlocal n
        with pq.ParquetWriter(f, schema, compression="snappy") as writer:
            chunk: list[dict] = []
            for rec in records:
                for key in ("torsion_mask", *EMBEDDING_KEYS):
                    if rec.get(key) is not None:
                        raise DataError(f"item {rec['id']!r} has {key}, which ATOMICA's Parquet reader does not "
                                        "read; export to .jsonl.gz to keep it")
                chunk.append(rec)
                if len(chunk) == row_group_items:
                    writer.write_table(table(chunk))
                    n, chunk = n + len(chunk), []
            if chunk:
                writer.write_table(table(chunk))
                n += len(chunk)

    write_atomic(path, write)
    return n


def export(records: Iterable[dict], path: str, parquet_columns: Iterable[str] = ("label",)) -> int:
    """Write records to `path` in the format its suffix names; returns the number of items."""
    kind = export_format(path)
    if kind == "jsonl":
        return write_jsonl(records, path)
    if kind == "parquet":
        return write_atomica_parquet(records, path, parquet_columns)
    return write_pickle(records, path)
