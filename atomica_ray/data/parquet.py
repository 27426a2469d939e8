"""Parquet datasets of ATOMICA items: write (atomic), stream, and random access.

A dataset is a directory:
    items.parquet   one row per item, list columns, row groups of `row_group_items` rows (32 by default: a
                    shuffled batch touches a few small row groups rather than one huge one)
    index.parquet   the size / label columns of every item in one row group: what batch planning reads
                    (about 50 bytes an item; 10 ms for 100k items, where the same columns spread over
                    items.parquet's thousands of row groups take seconds)
    dataset.json    format name, schema version, item count, row groups, sources, summary statistics, and the
                    size and SHA-256 of each Parquet file (written at convert; sizes and row counts are checked
                    whenever a dataset is opened, checksums by `atomica-ray inspect --verify`)

Columns of items.parquet (schema version 1):
    id                                   string
    n_blocks, n_atoms                    int32   size index: batch planning reads only these small columns
    n_blocks0, n_atoms0, n_atoms1        int32   blocks of segment 0, atoms per segment (global atoms included)
    n_rot0, n_rot1                       int32   rotatable bonds per segment (torsion kinds drop items without);
                                                 -1 when the item has no torsion masks
    n_mask0, n_mask1                     int32   maskable (non-special) blocks per segment
    X                                    list<float32>  flattened [n_atoms, 3]
    B, block_lengths                     list<int32>
    A, atom_positions, segment_ids       list<int8>
    torsion_mask                         binary  the record's torsion masks (`encode_torsion_mask`), or null
    block_embeddings, block_embeddings0, block_embeddings1
                                         list<float32> flattened [rows, dim] (dim in dataset.json), or null
    label, affinity                      float64 (null when absent)
    n_block_labels, n_label_vector       int32   length of the two list labels below, -1 when absent (index columns;
                                                 datasets written before them read as -1)
    block_labels                         list<int8>     one 0/1 per non-global block, or null (residue labels)
    label_vector                         list<float32>  a per-item label vector (multi-label), or null
    modality                             int32 (null when absent)
    dist_th                              float32 (null when absent)
    b2p_blocks, b2p_residues             list<int32>, list<string>: block_to_pdb_indexes, or null

Writing goes to a temporary sibling directory that is renamed to the target only when complete, so a failed
conversion leaves nothing at the target and an existing dataset is replaced only by a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atomica_ray.data.items import EMBEDDING_KEYS, DataError, ignored_keys, iter_raw_items, validate_item
from atomica_ray.data.vocab import GLB, get_vocab

FORMAT = "atomica-ray-items"
SCHEMA_VERSION = 1
ITEMS_FILE = "items.parquet"
INDEX_FILE = "index.parquet"
META_FILE = "dataset.json"
DEFAULT_ROW_GROUP_ITEMS = 32

SIZE_COLUMNS = ("n_blocks", "n_atoms", "n_blocks0", "n_atoms0", "n_atoms1", "n_rot0", "n_rot1", "n_mask0", "n_mask1")
LABEL_LIST_COLUMNS = ("n_block_labels", "n_label_vector")
INDEX_COLUMNS = SIZE_COLUMNS + ("label", "affinity", "modality") + LABEL_LIST_COLUMNS

_LIST_TYPES = {
    "X": pa.float32(),
    "B": pa.int32(),
    "A": pa.int8(),
    "atom_positions": pa.int8(),
    "block_lengths": pa.int32(),
    "segment_ids": pa.int8(),
}

SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False)]
    + [pa.field(c, pa.int32(), nullable=False) for c in SIZE_COLUMNS]
    + [pa.field(k, pa.list_(t), nullable=False) for k, t in _LIST_TYPES.items()]
    + [pa.field("torsion_mask", pa.binary())]
    + [pa.field(k, pa.list_(pa.float32())) for k in EMBEDDING_KEYS]
    + [
        pa.field("label", pa.float64()),
        pa.field("affinity", pa.float64()),
        pa.field("modality", pa.int32()),
        pa.field("dist_th", pa.float32()),
        pa.field("b2p_blocks", pa.list_(pa.int32())),
        pa.field("b2p_residues", pa.list_(pa.string())),
        pa.field("n_block_labels", pa.int32(), nullable=False),
        pa.field("n_label_vector", pa.int32(), nullable=False),
        pa.field("block_labels", pa.list_(pa.int8())),
        pa.field("label_vector", pa.list_(pa.float32())),
    ],
    metadata={b"atomica_ray.format": FORMAT.encode(), b"atomica_ray.schema_version": str(SCHEMA_VERSION).encode()},
)


# --- records -> Arrow ---------------------------------------------------------------------------

def _segment_counts(r: dict) -> dict:
    seg, B = r["segment_ids"], r["B"]
    atoms_per_block = r["block_lengths"]
    n_rot = [-1, -1] if r["torsion_mask"] is None else [0, 0]  # -1: no masks stored (computed when noised)
    for s, entry in enumerate(r["torsion_mask"] or []):
        if entry is None or s > 1:
            continue
        if entry["type"] == 0:
            n_rot[s] = sum(len(e) for e in entry["edges"] if e is not None)
        elif entry["edges"] is not None:
            n_rot[s] = len(entry["edges"])
    maskable = B > GLB
    return {
        "n_blocks": len(B),
        "n_atoms": len(r["A"]),
        "n_blocks0": int(np.sum(seg == 0)),
        "n_atoms0": int(atoms_per_block[seg == 0].sum()),
        "n_atoms1": int(atoms_per_block[seg == 1].sum()),
        "n_rot0": n_rot[0],
        "n_rot1": n_rot[1],
        "n_mask0": int(np.sum(maskable & (seg == 0))),
        "n_mask1": int(np.sum(maskable & (seg == 1))),
    }


def encode_torsion_mask(tm) -> bytes | None:
    """Torsion masks as bytes: a uint32 count n, n int32 header values, then every mask row bit-packed.

    Header: n_segments, then per segment (type or -1 for None, n_entries); then per entry (n_bonds or -1 for
    None, row width) - one entry per non-global block for type 0, one for type 1; then all bonds as pairs."""
    if tm is None:
        return None
    head, entries, edges, rows = [len(tm)], [], [], []
    for seg in tm:
        if seg is None:
            head += [-1, 0]
            continue
        if seg["type"] == 0:
            es, ms = seg["edges"], seg["mask_rotate"]
        else:
            es, ms = [seg["edges"]], [seg["mask_rotate"]]
        head += [seg["type"], len(es)]
        for e, m in zip(es, ms):
            if e is None:
                entries += [-1, 0]
            else:
                m = np.asarray(m, dtype=bool)
                entries += [len(e), m.shape[1]]
                edges.append(np.asarray(e, dtype=np.int32).reshape(-1))
                rows.append(m.reshape(-1))
    ints = np.array(head + entries, dtype=np.int32)
    if edges:
        ints = np.concatenate([ints, np.concatenate(edges)])
    bits = np.packbits(np.concatenate(rows)) if rows else np.zeros(0, np.uint8)
    return np.uint32(len(ints)).tobytes() + ints.tobytes() + bits.tobytes()


def decode_torsion_mask(blob: bytes | None):
    """Inverse of `encode_torsion_mask`: per-segment dicts with int64 edges and bool masks (or None)."""
    if blob is None:
        return None
    n = int(np.frombuffer(blob, np.uint32, count=1)[0])
    ints = np.frombuffer(blob, np.int32, count=n, offset=4)
    bits = np.unpackbits(np.frombuffer(blob, np.uint8, offset=4 + 4 * n)).view(bool)
    n_seg = int(ints[0])
    segs = ints[1:1 + 2 * n_seg].reshape(n_seg, 2).tolist()
    n_entries = sum(k for _, k in segs)
    entries = ints[1 + 2 * n_seg:1 + 2 * n_seg + 2 * n_entries].reshape(-1, 2).tolist()
    all_edges = ints[1 + 2 * n_seg + 2 * n_entries:].astype(np.int64).reshape(-1, 2)
    out, e_pos, b_pos, k = [], 0, 0, 0
    for kind, n_ent in segs:
        if kind < 0:
            out.append(None)
            continue
        es, ms = [], []
        for n_bonds, width in entries[k:k + n_ent]:
            if n_bonds < 0:
                es.append(None)
                ms.append(None)
                continue
            es.append(all_edges[e_pos:e_pos + n_bonds])
            ms.append(bits[b_pos:b_pos + n_bonds * width].reshape(n_bonds, width))
            e_pos += n_bonds
            b_pos += n_bonds * width
        k += n_ent
        if kind == 0:
            out.append({"type": 0, "edges": es, "mask_rotate": ms})
        else:
            out.append({"type": 1, "edges": es[0], "mask_rotate": ms[0]})
    return out


def _list_array(values: list[np.ndarray | None], value_type: pa.DataType) -> pa.Array:
    """A list<value_type> column from per-row flat numpy arrays (None = null row)."""
    lengths = np.array([0 if v is None else v.size for v in values], dtype=np.int64)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [v.reshape(-1) for v in values if v is not None]
    flat = np.concatenate(present) if present else np.zeros(0)
    flat = pa.array(flat.astype(value_type.to_pandas_dtype(), copy=False), type=value_type)
    nulls = [v is None for v in values]
    mask = pa.array(nulls, type=pa.bool_()) if any(nulls) else None
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), flat, mask=mask)


def records_to_table(records: list[dict]) -> pa.Table:
    counts = [_segment_counts(r) for r in records]
    cols: dict[str, pa.Array] = {"id": pa.array([r["id"] for r in records], type=pa.string())}
    for c in SIZE_COLUMNS:
        cols[c] = pa.array(np.array([n[c] for n in counts], dtype=np.int32))
    for k, t in _LIST_TYPES.items():
        cols[k] = _list_array([r[k] for r in records], t)
    cols["torsion_mask"] = pa.array([encode_torsion_mask(r["torsion_mask"]) for r in records], type=pa.binary())
    for k in EMBEDDING_KEYS:
        cols[k] = _list_array([r.get(k) for r in records], pa.float32())
    cols["label"] = pa.array([r["label"] for r in records], type=pa.float64())
    cols["affinity"] = pa.array([r["affinity"] for r in records], type=pa.float64())
    cols["modality"] = pa.array([r["modality"] for r in records], type=pa.int32())
    cols["dist_th"] = pa.array([r["dist_th"] for r in records], type=pa.float32())
    b2p = [r["block_to_pdb_indexes"] for r in records]
    cols["b2p_blocks"] = _list_array(
        [None if d is None else np.array(list(d.keys()), dtype=np.int32) for d in b2p], pa.int32())
    cols["b2p_residues"] = pa.array([None if d is None else list(d.values()) for d in b2p], type=pa.list_(pa.string()))
    for key, count in (("block_labels", "n_block_labels"), ("label_vector", "n_label_vector")):
        values = [r.get(key) for r in records]
        cols[count] = pa.array(np.array([-1 if v is None else len(v) for v in values], dtype=np.int32))
        cols[key] = _list_array(values, pa.int8() if key == "block_labels" else pa.float32())
    return pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA)


# --- writing ------------------------------------------------------------------------------------

class _Summary:
    """Statistics gathered while writing, saved in dataset.json."""

    def __init__(self):
        self.n_items = 0
        self.row_groups: list[int] = []
        self.embedding_dims: dict[str, int] = {}
        self.max_block_type = -1
        self.label_integral = True
        self.n_labels = 0
        self.label_vector_width: dict[str, int] = {}
        self.n_label_vectors = 0
        self.n_block_labels = 0

    def add(self, records: list[dict], where: str) -> None:
        for r in records:
            for k in EMBEDDING_KEYS:
                if k in r:
                    dim = r[k].shape[1]
                    if self.embedding_dims.setdefault(k, dim) != dim:
                        raise DataError(f"{where}, item id {r['id']!r}, field {k}: width {dim} differs from "
                                        f"{self.embedding_dims[k]} of earlier items")
            self.max_block_type = max(self.max_block_type, int(r["B"].max()))
            vector = r.get("label_vector")
            if vector is not None:
                if self.label_vector_width.setdefault("width", len(vector)) != len(vector):
                    raise DataError(f"{where}, item id {r['id']!r}, field label: a label vector of {len(vector)} "
                                    f"values, earlier items have {self.label_vector_width['width']}")
                self.n_label_vectors += 1
            if r.get("block_labels") is not None:
                self.n_block_labels += 1
            if r["label"] is not None:
                self.n_labels += 1
                self.label_integral &= isinstance(r["label"], int)
        self.n_items += len(records)
        self.row_groups.append(len(records))


def write_dataset(
    records: Iterable[tuple[str, dict]],
    out_dir: str,
    *,
    row_group_items: int = DEFAULT_ROW_GROUP_ITEMS,
    overwrite: bool = False,
    extra_meta=None,
    extra_files=None,
) -> dict:
    """Write (source, record) pairs to a Parquet dataset at `out_dir`; returns the dataset.json content.

    `extra_meta`: a callable returning more dataset.json entries, called once every record is written.
    `extra_files`: a callable given the unfinished directory, to write more files that appear with the dataset.
    Raises before writing anything if `out_dir` exists and `overwrite` is False. Any error while writing
    removes the temporary output and leaves `out_dir` as it was."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists; choose another --out or pass --overwrite")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        summary = _Summary()
        index_parts: list[pa.Table] = []
        writer = pq.ParquetWriter(os.path.join(tmp, ITEMS_FILE), SCHEMA, compression="zstd")

        def flush(chunk: list[dict], src: str) -> None:
            summary.add(chunk, src)
            table = records_to_table(chunk)
            writer.write_table(table, row_group_size=row_group_items)
            index_parts.append(table.select(list(INDEX_COLUMNS)))

        try:
            chunk: list[dict] = []
            src = ""
            for src, rec in records:
                chunk.append(rec)
                if len(chunk) == row_group_items:
                    flush(chunk, src)
                    chunk = []
            if chunk:
                flush(chunk, src)
        finally:
            writer.close()
        if summary.n_items == 0:
            raise DataError(f"{out_dir}: no items to write (the sources are empty)")
        write_index(pa.concat_tables(index_parts), tmp)
        meta = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "n_items": summary.n_items,
            "files": [{"name": ITEMS_FILE, "n_items": summary.n_items, "row_groups": summary.row_groups,
                       **file_digest(os.path.join(tmp, ITEMS_FILE))}],
            "index": {"name": INDEX_FILE, **file_digest(os.path.join(tmp, INDEX_FILE))},
            "embedding_dims": summary.embedding_dims,
            "max_block_type": summary.max_block_type,
            "label_kind": None if summary.n_labels == 0 else ("int" if summary.label_integral else "float"),
            "n_block_labels": summary.n_block_labels,  # items with per-block labels
            "n_label_vectors": summary.n_label_vectors,  # items with a label vector ...
            "label_vector_width": summary.label_vector_width.get("width"),  # ... of this width
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra_meta() if extra_meta else {}),
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        if extra_files is not None:
            extra_files(tmp)
        _replace_dir(tmp, out_dir)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_digest(path: str) -> dict:
    """{"size", "sha256"} of a file, as dataset.json records it."""
    with open(path, "rb") as f:
        return {"size": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def write_index(table: pa.Table, directory: str) -> None:
    """index.parquet: the size / label columns, one row group."""
    pq.write_table(table.select(list(INDEX_COLUMNS)).combine_chunks(), os.path.join(directory, INDEX_FILE),
                   row_group_size=max(1, table.num_rows), compression="zstd")


def _replace_dir(src: str, dst: str) -> None:
    """Move the finished `src` to `dst`; an existing `dst` is moved aside first and removed only afterwards."""
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def convert(
    sources: list[str],
    out_dir: str,
    *,
    allow_pickle: bool = False,
    fragmentation_method: str | None = "PS_300",
    row_group_items: int = DEFAULT_ROW_GROUP_ITEMS,
    overwrite: bool = False,
    list_labels: str = "auto",
) -> dict:
    """Validate every item of the ATOMICA files `sources` and write them, in order, to a Parquet dataset.
    `list_labels`: how list-valued labels are read (items.py: "auto", "block" or "vector")."""
    if not sources:
        raise DataError("convert: no source files given")
    for s in sources:
        if not os.path.isfile(s):
            raise DataError(f"{s}: no such file")
    if os.path.exists(os.path.abspath(out_dir)) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(out_dir)}: already exists; choose another --out or pass --overwrite")
    num_block_types = len(get_vocab(fragmentation_method))
    ignored: set[str] = set()
    meta_sources = []

    def pairs() -> Iterator[tuple[str, dict]]:
        for src in sources:
            st = os.stat(src)
            entry = {"path": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "n_items": 0}
            meta_sources.append(entry)
            for i, raw in enumerate(iter_raw_items(src, allow_pickle)):
                rec = validate_item(raw, src, i, num_block_types, list_labels)
                ignored.update(ignored_keys(raw))
                entry["n_items"] += 1
                yield src, rec

    def extra_meta() -> dict:
        meta = {"fragmentation_method": fragmentation_method, "sources": meta_sources}
        if ignored:
            meta["ignored_keys"] = sorted(ignored)
        return meta

    try:
        return write_dataset(pairs(), out_dir, row_group_items=row_group_items, overwrite=overwrite,
                             extra_meta=extra_meta)
    except DataError as e:
        # the sources were read whole and held nothing: name them, not the output directory
        if "(the sources are empty)" not in str(e) or any(s["n_items"] for s in meta_sources):
            raise
        raise DataError(f"{', '.join(sources)}: no items (an empty dataset)") from e


# --- reading ------------------------------------------------------------------------------------

# record fields -> the columns they need; "core" fields are always read
CORE_COLUMNS = ("id", "X", "B", "A", "atom_positions", "block_lengths", "segment_ids",
                "label", "affinity", "modality", "dist_th", "block_labels", "label_vector")
OPTIONAL_FIELDS = {
    "torsion_mask": ("torsion_mask",),
    "block_embeddings": EMBEDDING_KEYS,
    "block_to_pdb_indexes": ("b2p_blocks", "b2p_residues"),
}
ALL_FIELDS = tuple(OPTIONAL_FIELDS)


class _DecodedGroup:
    """One row group as flat numpy arrays + offsets: items are slices, no per-atom Python work.
    Only the columns present in `table` are decoded; records lack the fields of the others."""

    def __init__(self, table: pa.Table):
        self.n = table.num_rows
        names = set(table.column_names)
        self.ids = table.column("id").to_pylist()
        self.lists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for name in list(_LIST_TYPES) + list(EMBEDDING_KEYS) + ["b2p_blocks", "block_labels", "label_vector"]:
            if name not in names:
                continue
            arr = table.column(name).combine_chunks()
            if arr.null_count == len(arr):
                continue  # e.g. no item has block embeddings
            offsets = arr.offsets.to_numpy()
            values = arr.values.to_numpy(zero_copy_only=False)
            valid = None if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
            self.lists[name] = (offsets, values, valid)
        self.torsion = table.column("torsion_mask").to_pylist() if "torsion_mask" in names else None
        self.scalars = {k: table.column(k).to_pylist() for k in ("label", "affinity", "modality", "dist_th")}
        self.b2p_residues = table.column("b2p_residues").to_pylist() if "b2p_residues" in names else None

    def _slice(self, name: str, row: int) -> np.ndarray | None:
        if name not in self.lists:
            return None
        offsets, values, valid = self.lists[name]
        if valid is not None and not valid[row]:
            return None
        return values[offsets[row]:offsets[row + 1]]

    def record(self, row: int, embedding_dims: dict, label_int: bool) -> dict:
        s = self._slice
        rec = {
            "id": self.ids[row],
            "X": s("X", row).reshape(-1, 3).copy(),
            "B": s("B", row).astype(np.int64),
            "A": s("A", row).astype(np.int64),
            "atom_positions": s("atom_positions", row).astype(np.int64),
            "block_lengths": s("block_lengths", row).astype(np.int64),
            "segment_ids": s("segment_ids", row).astype(np.int64),
        }
        if self.torsion is not None:
            rec["torsion_mask"] = decode_torsion_mask(self.torsion[row])
        for k in EMBEDDING_KEYS:
            v = s(k, row)
            if v is not None:
                rec[k] = v.reshape(-1, embedding_dims[k]).copy()
        for k, vals in self.scalars.items():
            rec[k] = vals[row]
        if label_int and rec["label"] is not None:
            rec["label"] = int(rec["label"])
        labels, vector = s("block_labels", row), s("label_vector", row)
        rec["block_labels"] = None if labels is None else labels.astype(np.int8)
        rec["label_vector"] = None if vector is None else vector.astype(np.float32)
        if self.b2p_residues is not None:
            blocks = s("b2p_blocks", row)
            rec["block_to_pdb_indexes"] = (None if blocks is None
                                           else dict(zip(blocks.tolist(), self.b2p_residues[row])))
        return rec


class ParquetItems:
    """Random access to the items of a Parquet dataset directory.

    Opening reads dataset.json and the small size / label columns only (the size index); item data is read one
    row group at a time and the last few decoded row groups are kept per process. Picklable (open file handles
    are not carried), so torch DataLoader workers can each hold one."""

    def __init__(self, path: str, cache_groups: int = 8):
        self.path = os.path.abspath(os.fspath(path))
        meta_path = os.path.join(self.path, META_FILE)
        if not os.path.isfile(meta_path):
            raise DataError(f"{self.path}: not an atomica-ray dataset (no {META_FILE}); convert ATOMICA files with "
                            "`atomica-ray convert`")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: format {self.meta.get('format')!r} is not {FORMAT!r}")
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{meta_path}: schema version {self.meta.get('schema_version')} is not supported "
                            f"(this atomica-ray reads version {SCHEMA_VERSION}); re-run `atomica-ray convert`")
        self.files = [os.path.join(self.path, f["name"]) for f in self.meta["files"]]
        self._check_files()
        # global item index -> (file, row group, row): cumulative starts of every row group
        starts, where = [0], []
        for fi, f in enumerate(self.meta["files"]):
            for gi, n in enumerate(f["row_groups"]):
                where.append((fi, gi))
                starts.append(starts[-1] + n)
        self._group_where = where
        self._group_starts = np.array(starts, dtype=np.int64)
        self.embedding_dims = dict(self.meta.get("embedding_dims", {}))
        self.label_int = self.meta.get("label_kind") == "int"
        self.file_columns = set(pq.read_schema(self.files[0]).names) if self.files else set()
        self.index = self._read_index()
        self.cache_groups = cache_groups
        self._handles: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple, _DecodedGroup] = OrderedDict()

    def _recorded(self) -> list[tuple[str, dict]]:
        """(path, what dataset.json says about it) for every Parquet file of the dataset."""
        out = [(path, f) for path, f in zip(self.files, self.meta["files"])]
        if "index" in self.meta:
            out.append((os.path.join(self.path, self.meta["index"]["name"]), self.meta["index"]))
        return out

    def _check_files(self) -> None:
        """Cheap checks at every open: each file is there, has the size recorded at convert, and a readable
        footer whose row and row-group counts match dataset.json."""
        for path, f in self._recorded():
            if not os.path.isfile(path):
                if f is self.meta.get("index"):
                    continue  # the size index is derived: items.parquet holds its columns (_read_index)
                raise DataError(f"{path}: missing (listed in {META_FILE})")
            size = os.path.getsize(path)
            if "size" in f and size != f["size"]:
                raise DataError(f"{path}: {size} bytes, {META_FILE} says {f['size']}: the file is truncated or "
                                "was changed after `atomica-ray convert`")
        for path, f in zip(self.files, self.meta["files"]):
            try:
                footer = pq.ParquetFile(path).metadata
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path}: not a readable Parquet file ({e})") from None
            groups = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
            if groups != list(f["row_groups"]):
                raise DataError(f"{path}: {footer.num_rows} rows in {len(groups)} row groups, {META_FILE} says "
                                f"{f['n_items']} in {len(f['row_groups'])}")

    def verify(self) -> list[str]:
        """Every check there is, reading every byte: the open-time checks, checksums against dataset.json (for
        datasets written before checksums, a full decode of every row group instead). Returns what was checked;
        raises DataError naming the first broken file."""
        checked = []
        for path, f in self._recorded():
            if "sha256" in f:
                if file_digest(path)["sha256"] != f["sha256"]:
                    raise DataError(f"{path}: its content does not match the checksum in {META_FILE}: the file "
                                    "was damaged or changed after `atomica-ray convert`")
                checked.append(f"{os.path.basename(path)}: {f['size']} bytes, checksum ok")
            else:
                try:
                    rows = pq.read_table(path).num_rows
                except (OSError, pa.ArrowException) as e:
                    raise DataError(f"{path}: cannot be read ({e})") from None
                checked.append(f"{os.path.basename(path)}: {rows} rows read (no checksum recorded: converted by an "
                               "older atomica-ray)")
        return checked

    def _read_index(self) -> dict[str, np.ndarray]:
        index_path = os.path.join(self.path, INDEX_FILE)
        sources = [index_path] if os.path.isfile(index_path) else self.files  # items.parquet holds them too
        parts = []
        for f in sources:
            try:
                present = set(pq.read_schema(f).names)
                parts.append(pq.read_table(f, columns=[c for c in INDEX_COLUMNS if c in present]))
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{f}: cannot read the size index ({e})") from e
        table = pa.concat_tables(parts)
        if table.num_rows != self.meta["n_items"]:
            raise DataError(f"{self.path}: {table.num_rows} rows but {META_FILE} says {self.meta['n_items']}")
        index = {c: table.column(c).to_numpy() for c in SIZE_COLUMNS}
        for c in ("label", "affinity"):
            col = table.column(c)
            index[c] = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
        mod = table.column("modality")
        index["modality"] = mod.fill_null(-1).to_numpy().astype(np.int64)
        for c in LABEL_LIST_COLUMNS:  # absent from datasets written before list labels
            index[c] = (table.column(c).to_numpy() if c in table.column_names
                        else np.full(table.num_rows, -1, dtype=np.int32))
        return index

    def __len__(self) -> int:
        return int(self.meta["n_items"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_cache"] = {}, OrderedDict()
        return state

    def reset(self) -> None:
        """Forget open files and decoded row groups (e.g. in a forked worker process)."""
        self._handles, self._cache = {}, OrderedDict()

    def _columns(self, fields) -> list[str]:
        cols = [c for c in CORE_COLUMNS if c in self.file_columns or c not in ("block_labels", "label_vector")]
        for f in (ALL_FIELDS if fields is None else fields):
            if f not in OPTIONAL_FIELDS:
                raise ValueError(f"unknown record field {f!r}; optional fields are {list(OPTIONAL_FIELDS)}")
            if f == "block_embeddings":
                cols += [k for k in EMBEDDING_KEYS if k in self.embedding_dims]
            else:
                cols += list(OPTIONAL_FIELDS[f])
        return cols

    def _read_group(self, g: int, columns: list[str]) -> _DecodedGroup:
        fi, gi = self._group_where[g]
        if fi not in self._handles:
            self._handles[fi] = pq.ParquetFile(self.files[fi])
        try:
            return _DecodedGroup(self._handles[fi].read_row_group(gi, columns=columns, use_threads=False))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.files[fi]}: cannot read row group {gi} ({e})") from e

    def _group(self, g: int, fields) -> _DecodedGroup:
        key = (g, None if fields is None else tuple(sorted(fields)))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        group = self._read_group(g, self._columns(fields))
        self._cache[key] = group
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return group

    def get(self, indices, fields=None) -> list[dict]:
        """Records of the given global item indices, in that order (row groups read once each).

        `fields`: the optional record fields to read (of "torsion_mask", "block_embeddings",
        "block_to_pdb_indexes"); None = all. Leaving out what a kind does not use skips their columns."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.path}: item index out of range 0..{len(self) - 1}")
        groups = np.searchsorted(self._group_starts, indices, side="right") - 1
        out: list[dict | None] = [None] * len(indices)
        for g in np.unique(groups):
            dec = self._group(int(g), fields)
            for j in np.nonzero(groups == g)[0]:
                out[j] = dec.record(int(indices[j] - self._group_starts[g]), self.embedding_dims, self.label_int)
        return out  # type: ignore[return-value]

    def __getitem__(self, i: int) -> dict:
        return self.get([i])[0]

    def column_values(self, name: str) -> list:
        """One list column of every item, in order (numpy arrays, None where null), without decoding the items:
        e.g. the training set's label vectors."""
        if name not in self.file_columns:
            return [None] * len(self)
        out = []
        for f in self.files:
            for chunk in pq.read_table(f, columns=[name]).column(name).chunks:
                out.extend(None if v is None else np.asarray(v) for v in chunk.to_numpy(zero_copy_only=False))
        return out

    def iter_records(self, fields=None) -> Iterator[dict]:
        """Stream every item in order, one row group in memory at a time."""
        columns = self._columns(fields)
        for g in range(len(self._group_where)):
            dec = self._read_group(g, columns)
            for row in range(dec.n):
                yield dec.record(row, self.embedding_dims, self.label_int)



# --- row ranges (atomica-ray embed / predict / score read a dataset shard by shard) -------------------------------

class RowRanges:
    """Rows [start, stop) of a dataset as Arrow tables, and their records. Opens dataset.json only (no size
    index), so a worker that reads one shard of a large dataset pays nothing for the rest. Picklable."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        with open(os.path.join(self.path, META_FILE)) as f:
            self.meta = json.load(f)
        self.files = [os.path.join(self.path, f["name"]) for f in self.meta["files"]]
        self.groups = [(fi, gi) for fi, f in enumerate(self.meta["files"]) for gi in range(len(f["row_groups"]))]
        sizes = [n for f in self.meta["files"] for n in f["row_groups"]]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.embedding_dims = dict(self.meta.get("embedding_dims", {}))
        self.label_int = self.meta.get("label_kind") == "int"

    def __len__(self) -> int:
        return int(self.meta["n_items"])

    def columns(self, fields) -> list[str]:
        cols = list(CORE_COLUMNS)
        for f in fields:
            if f not in OPTIONAL_FIELDS:
                raise ValueError(f"unknown record field {f!r}; optional fields are {list(OPTIONAL_FIELDS)}")
            cols += [k for k in EMBEDDING_KEYS if k in self.embedding_dims] if f == "block_embeddings" \
                else list(OPTIONAL_FIELDS[f])
        return cols

    def read(self, start: int, stop: int, fields=()) -> pa.Table:
        """Rows [start, stop): the row groups that hold them are read whole, nothing else."""
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"{self.path}: rows {start}..{stop} outside 0..{len(self)}")
        columns, handles, parts = self.columns(fields), {}, []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for g in range(first, len(self.groups)):
            g0, g1 = int(self.starts[g]), int(self.starts[g + 1])
            if g0 >= stop:
                break
            fi, gi = self.groups[g]
            if fi not in handles:
                handles[fi] = pq.ParquetFile(self.files[fi])
            try:
                table = handles[fi].read_row_group(gi, columns=columns, use_threads=False)
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{self.files[fi]}: cannot read row group {gi} ({e})") from e
            parts.append(table.slice(max(start, g0) - g0, min(stop, g1) - max(start, g0)))
        return pa.concat_tables(parts)

    def records(self, table: pa.Table) -> list[dict]:
        """The records of a table `read` returned, as `ParquetItems.get` gives them."""
        group = _DecodedGroup(table)
        return [group.record(row, self.embedding_dims, self.label_int) for row in range(group.n)]
