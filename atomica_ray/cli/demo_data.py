"""`atomica-ray demo-data --out DIR`: write the built-in demo dataset (see atomica_ray.data.demo for what the
items are and how their label is defined). With --split, DIR/train and DIR/valid hold disjoint items."""

from __future__ import annotations

import sys
import time

from atomica_ray.data.demo import write_demo_dataset, write_demo_splits


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--n-items", type=int, default=1000, help="items (training items with --split); default 1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", action="store_true", help="write DIR/train and DIR/valid")
    parser.add_argument("--n-valid", type=int, default=None, help="validation items with --split (default n-items/4)")
    parser.add_argument("--no-fragments", action="store_true",
                        help="ligand rings as element blocks (a dataset for fragmentation_method None)")
    parser.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    start = time.perf_counter()
    fragments = not args.no_fragments
    try:
        if args.split:
            n_valid = args.n_valid if args.n_valid is not None else max(1, args.n_items // 4)
            paths = write_demo_splits(args.out, args.n_items, n_valid, args.seed, args.overwrite, fragments)
            what = f"{args.n_items} training items to {paths['train']}, {n_valid} validation items to {paths['valid']}"
        else:
            write_demo_dataset(args.out, args.n_items, args.seed, 0, args.overwrite, fragments)
            what = f"{args.n_items} items to {args.out}"
    except FileExistsError as e:
        print(f"atomica-ray demo-data: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {what} in {time.perf_counter() - start:.1f} s")
    return 0
