"""`atomica-ray inspect DIR`: item count, blocks / atoms per item (min / median / max), labels, modalities.

Reads only dataset.json and the small size / label columns, so it is quick on any dataset size; opening the
dataset checks each file's size and Parquet footer against dataset.json. `--verify` reads every byte: the
checksums recorded at convert, and every coordinate finite. A broken file is named, with exit code 2.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from atomica_ray.data.items import DataError
from atomica_ray.data.parquet import ParquetItems
from atomica_ray.data.vocab import MODALITIES


def add_arguments(parser):
    parser.add_argument("path", metavar="DIR", help="Parquet dataset directory (from `atomica-ray convert`)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="also read every file: checksums against dataset.json, finite coordinates")


def _spread(x: np.ndarray) -> dict:
    return {"min": float(np.min(x)), "median": float(np.median(x)), "max": float(np.max(x)), "mean": float(np.mean(x))}


def _distribution(x: np.ndarray, integral: bool) -> dict:
    """Counts per value for class-like values (integers, or at most 10 integral floats), else a spread."""
    present = x[~np.isnan(x)]
    out: dict = {"present": int(len(present)), "missing": int(len(x) - len(present))}
    if len(present) == 0:
        return out
    values, counts = np.unique(present, return_counts=True)
    if integral or (len(values) <= 10 and np.all(values == np.round(values))):
        out["counts"] = {(str(int(v)) if float(v).is_integer() else str(v)): int(c) for v, c in zip(values, counts)}
    else:
        out.update(_spread(present))
    return out


def dataset_stats(ds: ParquetItems) -> dict:
    idx = ds.index
    names = {v: k for k, v in MODALITIES.items()}
    mods, counts = np.unique(idx["modality"], return_counts=True)
    return {
        "path": ds.path,
        "schema_version": ds.meta["schema_version"],
        "items": len(ds),
        "blocks_per_item": _spread(idx["n_blocks"]),
        "atoms_per_item": _spread(idx["n_atoms"]),
        "label": _distribution(idx["label"], ds.meta.get("label_kind") == "int"),
        "affinity": _distribution(idx["affinity"], False),
        "modality": {names.get(int(m), "none" if m < 0 else str(m)): int(c) for m, c in zip(mods, counts)},
        "items_with_torsions": int(np.sum((idx["n_rot0"] > 0) | (idx["n_rot1"] > 0))),
        "items_without_torsion_masks": int(np.sum(idx["n_rot0"] < 0)),
        "block_embeddings": ds.meta.get("embedding_dims", {}),
        "fragmentation_method": ds.meta.get("fragmentation_method"),
    }


def _fmt(s: dict) -> str:
    return f"min {s['min']:g}, median {s['median']:g}, max {s['max']:g} (mean {s['mean']:.1f})"


def finite_coordinates(ds: ParquetItems) -> None:
    """Every coordinate finite: one vectorised pass over the X column, a row group at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in ds.files:
        f = pq.ParquetFile(path)
        start = 0
        for g in range(f.num_row_groups):
            column = f.read_row_group(g, columns=["X"]).column("X").combine_chunks()
            bad = pc.invert(pc.is_finite(column.values))
            if pc.any(bad).as_py():
                values_per_item = np.diff(column.offsets.to_numpy())
                first = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                row = int(np.searchsorted(np.cumsum(values_per_item), first, side="right"))
                i = start + row
                raise DataError(f"{path}, item {i} (id {ds[i]['id']!r}), field X: non-finite coordinate")
            start += f.metadata.row_group(g).num_rows


def run(args) -> int:
    try:
        ds = ParquetItems(args.path)
        stats = dataset_stats(ds)
        if args.verify:
            checked = ds.verify()
            finite_coordinates(ds)
            stats["verified"] = checked + ["coordinates: all finite"]
    except DataError as e:
        print(f"atomica-ray inspect: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"{stats['path']} (schema version {stats['schema_version']})")
    print(f"items: {stats['items']}")
    print(f"blocks per item: {_fmt(stats['blocks_per_item'])}")
    print(f"atoms per item:  {_fmt(stats['atoms_per_item'])}")
    for name in ("label", "affinity"):
        d = stats[name]
        if d["present"] == 0:
            print(f"{name}: none")
        elif "counts" in d:
            print(f"{name}: " + ", ".join(f"{k}: {v}" for k, v in d["counts"].items())
                  + (f" ({d['missing']} missing)" if d["missing"] else ""))
        else:
            print(f"{name}: {_fmt(d)}" + (f" ({d['missing']} missing)" if d["missing"] else ""))
    print("modality: " + ", ".join(f"{k}: {v}" for k, v in stats["modality"].items()))
    print(f"items with rotatable bonds: {stats['items_with_torsions']}"
          + (f" ({stats['items_without_torsion_masks']} without torsion masks)"
             if stats["items_without_torsion_masks"] else ""))
    if stats["block_embeddings"]:
        print("block embeddings: " + ", ".join(f"{k} ({v})" for k, v in stats["block_embeddings"].items()))
    for line in stats.get("verified", []):
        print(f"verified: {line}")
    return 0
