"""`atomica-ray process INDEX.csv|FOLDER --out DIR`: structure files -> a Parquet dataset of ATOMICA items.

INDEX.csv has ATOMICA's `process_pdbs` columns (pdb_id, pdb_path, chain1, chain2, and optionally lig_code,
lig_smiles, lig_resi, label); a FOLDER of .pdb / .cif files (optionally .gz) makes one item per pair of chains in
contact. Rows run as Ray tasks on every local core (or the cluster's, under --address / `ray job submit`). Rows
that make no item are listed in DIR/errors.csv and the exit code is 1; a malformed index or an existing DIR
(without --overwrite) is refused before anything runs (exit 2).
"""

from __future__ import annotations

import os
import sys

from atomica_ray.data.items import DataError
from atomica_ray.data.parquet import DEFAULT_ROW_GROUP_ITEMS

SHOWN_ERRORS = 10


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="INDEX.csv|FOLDER",
                        help="ATOMICA's index CSV, or a folder of structure files (all chain pairs in contact)")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--fragmentation_method", "--fragmentation-method", default="none",
                        choices=["none", "PS_300", "PS_500"],
                        help="ligand blocks: one per atom (none, ATOMICA's default) or principal-subgraph fragments "
                             "(needs lig_smiles and RDKit)")
    parser.add_argument("--interface_dist_th", "--interface-dist-th", type=float, default=8.0,
                        help="blocks closer than this to the other side (Å) are kept (default 8.0)")
    parser.add_argument("--torsion", action="store_true",
                        help="add ATOMICA's torsion masks (rotatable bonds) for torsion pretraining")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists (only once complete)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to run on (default: the job's cluster, else a new local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all)")
    parser.add_argument("--row-group-items", type=int, default=DEFAULT_ROW_GROUP_ITEMS,
                        help=f"items per Parquet row group (default {DEFAULT_ROW_GROUP_ITEMS})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def missing_dependency(method: str | None) -> str | None:
    try:
        import gemmi  # noqa: F401
        if method is not None:
            import networkx  # noqa: F401
            import rdkit  # noqa: F401
    except ImportError as e:
        return (f"{e.name} is not installed; structure files need the structures extra: "
                "pip install 'atomica-ray[structures]'")
    return None


def run(args) -> int:
    from atomica_ray.structures.dataset import ERRORS_FILE, NOTES_FILE, Summary, write_processed
    from atomica_ray.structures.index import read_rows
    from atomica_ray.structures.rows import Options

    method = None if args.fragmentation_method == "none" else args.fragmentation_method
    options = Options(method, args.interface_dist_th, args.torsion)
    out = os.path.abspath(args.out)
    try:
        if args.interface_dist_th <= 0:
            raise DataError(f"--interface_dist_th: must be positive, got {args.interface_dist_th}")
        if os.path.exists(out) and not args.overwrite:
            raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
        problem = missing_dependency(method)
        if problem:
            raise DataError(problem)
        rows = read_rows(args.source)
    except (DataError, FileExistsError) as e:
        print(f"atomica-ray process: error: {e}", file=sys.stderr)
        return 2

    from atomica_ray.structures.parallel import process_rows_on_ray
    from atomica_ray.train.launch import init_ray

    init_ray(args.address, args.num_cpus)
    results = process_rows_on_ray(rows, options, progress=not args.no_progress)
    s = Summary()
    try:
        write_processed(results, out, options, args.source, s, overwrite=args.overwrite,
                        row_group_items=args.row_group_items)
    except DataError as e:
        print_failures(s)
        reason = "no row made an item" if s.n_rows and s.n_items == 0 else str(e)
        print(f"atomica-ray process: error: {reason}; nothing written", file=sys.stderr)
        return 1
    print_failures(s)
    print(f"wrote {s.n_items} items from {s.n_rows - len(s.failures)} of {s.n_rows} rows to {out}")
    if s.notes:
        print(f"  {len(s.notes)} ligands kept as one block per atom ({s.fallbacks} because fragmentation failed): "
              f"{os.path.join(out, NOTES_FILE)}")
    if s.failures:
        print(f"  {len(s.failures)} rows failed: {os.path.join(out, ERRORS_FILE)}")
        return 1
    return 0


def print_failures(summary) -> None:
    for pdb_id, path, reason in summary.failures[:SHOWN_ERRORS]:
        print(f"  failed: {pdb_id} ({path}): {reason}", file=sys.stderr)
    if len(summary.failures) > SHOWN_ERRORS:
        print(f"  ... and {len(summary.failures) - SHOWN_ERRORS} more", file=sys.stderr)
