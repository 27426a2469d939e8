"""`atomica-ray convert SRC... --out DIR`: ATOMICA .pkl / .jsonl.gz / .parquet files -> one Parquet dataset.

Every item is validated; the first bad item stops the conversion with a message naming the file, the item and
the field, and nothing is left at DIR (the output is written under a temporary name and renamed at the end).
"""

from __future__ import annotations

import sys

from atomica_ray.data.items import DataError
from atomica_ray.data.parquet import DEFAULT_ROW_GROUP_ITEMS, convert


def add_arguments(parser):
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="ATOMICA .pkl, .jsonl.gz or .parquet (current ATOMICA's process_pdbs) files, in order")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow reading .pkl files (unpickling runs code: only for files you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists (only once complete)")
    parser.add_argument("--fragmentation-method", default="PS_300", choices=["PS_300", "PS_500", "none"],
                        help="vocabulary the block types are checked against (default PS_300)")
    parser.add_argument("--list-labels", default="auto", choices=["auto", "block", "vector"],
                        help="a list-valued label is one 0/1 per non-global block (block, residue tasks) or a label "
                             "vector (vector, multi-label); auto: a 0/1 list as long as the non-global blocks is "
                             "block labels")
    parser.add_argument("--row-group-items", type=int, default=DEFAULT_ROW_GROUP_ITEMS,
                        help=f"items per Parquet row group (default {DEFAULT_ROW_GROUP_ITEMS})")


def run(args) -> int:
    method = None if args.fragmentation_method == "none" else args.fragmentation_method
    try:
        meta = convert(args.sources, args.out, allow_pickle=args.allow_pickle, fragmentation_method=method,
                       row_group_items=args.row_group_items, overwrite=args.overwrite, list_labels=args.list_labels)
    except (DataError, FileExistsError) as e:
        print(f"atomica-ray convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['n_items']} items to {args.out} ({len(meta['files'][0]['row_groups'])} row groups)")
    for s in meta["sources"]:
        print(f"  {s['path']}: {s['n_items']} items")
    if meta.get("ignored_keys"):
        print(f"  keys not kept: {', '.join(meta['ignored_keys'])}")
    return 0
