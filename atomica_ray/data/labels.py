"""Labels derived from an item's own structure.

`interface_block_labels`: the interface-residue label of residue-level interface prediction (the
`residue_binary_classifier` example in the README): a non-global block is positive (1) when any of its heavy atoms
lies within `cutoff` Å (4.0 by default) of a heavy atom of the partner segment (the other segment of the item),
else 0. One label per non-global block, in block order: the `block_labels` of a record.

Heavy atom: any atom but hydrogen (atom type of H) and the global atoms. Distances are computed in tiles of atoms
(memory stays bounded on large complexes); the cut-off is inclusive (d <= cutoff).
"""

from __future__ import annotations

import numpy as np

from atomica_ray.data.vocab import ATOM_GLOBAL, GLB

ATOM_H = 3  # atom type of hydrogen: element Z at Z + 2
INTERFACE_CUTOFF = 4.0  # Å
TILE = 4096  # atoms per side of one distance tile


def heavy_atoms(record: dict) -> np.ndarray:
    """[Natom] True for the heavy atoms of non-global blocks."""
    A = np.asarray(record["A"])
    in_global = np.repeat(np.asarray(record["B"]) == GLB, np.asarray(record["block_lengths"]))
    return (A != ATOM_H) & (A != ATOM_GLOBAL) & ~in_global


def near(points: np.ndarray, others: np.ndarray, cutoff: float) -> np.ndarray:
    """[len(points)] True where a point has one of `others` within `cutoff`."""
    out = np.zeros(len(points), dtype=bool)
    if len(points) == 0 or len(others) == 0:
        return out
    c2 = cutoff * cutoff
    for i in range(0, len(points), TILE):
        p = points[i:i + TILE].astype(np.float64)
        hit = np.zeros(len(p), dtype=bool)
        for j in range(0, len(others), TILE):
            q = others[j:j + TILE].astype(np.float64)
            d2 = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * p @ q.T  # [tile, tile]
            hit |= (d2 <= c2 + 1e-9).any(1)
        out[i:i + TILE] = hit
    return out


def interface_block_labels(record: dict, cutoff: float = INTERFACE_CUTOFF) -> np.ndarray:
    """int8 [n_non_global_blocks]: 1 for blocks with a heavy atom within `cutoff` Å of the partner segment."""
    X = np.asarray(record["X"], dtype=np.float64)
    B = np.asarray(record["B"])
    lengths = np.asarray(record["block_lengths"])
    seg = np.asarray(record["segment_ids"])
    atom_seg = np.repeat(seg, lengths)  # [Natom]
    block_of = np.repeat(np.arange(len(B)), lengths)  # [Natom]
    heavy = heavy_atoms(record)
    contact = np.zeros(len(X), dtype=bool)  # [Natom] heavy atoms near the other segment
    for s in np.unique(seg):
        mine = np.flatnonzero(heavy & (atom_seg == s))
        partner = np.flatnonzero(heavy & (atom_seg != s))
        contact[mine] = near(X[mine], X[partner], cutoff)
    block_contact = np.bincount(block_of[contact], minlength=len(B)) > 0  # [Nblock]
    return block_contact[B != GLB].astype(np.int8)


def with_interface_labels(record: dict, cutoff: float = INTERFACE_CUTOFF) -> dict:
    """The record with `block_labels` set to its interface labels."""
    return {**record, "block_labels": interface_block_labels(record, cutoff)}


def label_interface_dataset(source: str, out: str, cutoff: float = INTERFACE_CUTOFF, overwrite: bool = False) -> dict:
    """Copy a Parquet dataset (e.g. what `atomica-ray process` wrote) with every item's `block_labels` set to its
    interface labels; returns the new dataset.json. Written whole or not at all (parquet.write_dataset)."""
    from atomica_ray.data.parquet import ParquetItems, write_dataset

    items = ParquetItems(source)
    meta = {k: items.meta[k] for k in ("fragmentation_method", "sources") if k in items.meta}
    meta["block_labels"] = f"interface: a heavy atom within {cutoff:g} Å of the partner segment"
    records = ((source, with_interface_labels(r, cutoff)) for r in items.iter_records())
    return write_dataset(records, out, overwrite=overwrite, extra_meta=lambda: meta)


def main(argv: list[str] | None = None) -> int:
    """python -m atomica_ray.data.labels SOURCE OUT [--cutoff 4.0] [--overwrite]"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m atomica_ray.data.labels",
                                     description="label every non-global block of a dataset as interface (1) or "
                                                 "not (0): a heavy atom within --cutoff Å of the partner segment")
    parser.add_argument("source", help="Parquet dataset directory")
    parser.add_argument("out", help="new dataset directory")
    parser.add_argument("--cutoff", type=float, default=INTERFACE_CUTOFF, help="Å (default 4.0)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        meta = label_interface_dataset(args.source, args.out, args.cutoff, args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"atomica_ray.data.labels: {error}", file=sys.stderr)
        return 2
    print(f"wrote {meta['n_items']} items with interface labels to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
