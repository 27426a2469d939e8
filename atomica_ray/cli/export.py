"""`atomica-ray export DIR --out items.jsonl.gz`: a dataset back into ATOMICA's item files (inverse of convert).

The suffix of --out picks the format: .jsonl.gz / .jsonl (ATOMICA's compressed JSON lines), .parquet (current
ATOMICA's process_pdbs layout) or .pkl (only with --pickle: a pickle runs code when ATOMICA loads it, so it is
written only on request). Nothing is written until every item is; an existing file is replaced only with
--overwrite.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from atomica_ray.data.items import DataError


def add_arguments(parser) -> None:
    parser.add_argument("dataset", metavar="DIR", help="Parquet dataset directory (from convert, process, demo-data)")
    parser.add_argument("--out", required=True, help="items.jsonl.gz, items.jsonl, items.parquet or items.pkl")
    parser.add_argument("--pickle", action="store_true", help="allow writing a .pkl file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def parquet_columns(ds) -> list[str]:
    """The optional ATOMICA Parquet columns the dataset has values for."""
    import pyarrow.parquet as pq

    cols = [c for c in ("label", "affinity") if np.isfinite(ds.index[c]).any()]
    if (ds.index["modality"] >= 0).any():
        cols.append("modality")
    dist_th = pq.read_table(ds.files[0], columns=["dist_th"]).column("dist_th")
    if dist_th.null_count < len(dist_th):
        cols.append("dist_th")
    return cols


def run(args) -> int:
    from atomica_ray.data.export import export, export_format
    from atomica_ray.data.parquet import ParquetItems

    out = os.path.abspath(args.out)
    try:
        kind = export_format(out)
        if kind == "pickle" and not args.pickle:
            raise DataError(f"{out}: writing a pickle needs --pickle (loading a pickle runs code; .jsonl.gz is the "
                            "safe format ATOMICA also reads)")
        if os.path.exists(out) and not args.overwrite:
            raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
        ds = ParquetItems(args.dataset)
        if kind == "parquet":
            if ds.meta.get("embedding_dims") or (ds.index["n_rot0"] >= 0).any():
                raise DataError(f"{ds.path}: has torsion masks or block embeddings, which ATOMICA's Parquet reader "
                                "does not read; export to .jsonl.gz to keep them")
            n = export(ds.iter_records(), out, parquet_columns(ds))
        else:
            n = export(ds.iter_records(), out)
    except (DataError, FileExistsError) as e:
        print(f"atomica-ray export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} items to {out}")
    return 0
