"""Processed rows -> a Parquet dataset (the project's format, read by train / tune / embed), with its reports.

  DIR/items.parquet, index.parquet, dataset.json   the items, as `atomica-ray convert` writes them; dataset.json
                                                   also records the processing options and counts
  DIR/errors.csv   id, file, reason: one line per row that made no item (header only when every row worked)
  DIR/notes.csv    id, file, note: ligands kept as one block per atom (fragmentation failed or no SMILES)

Everything is written under a temporary name and appears at DIR only when complete; an existing DIR is replaced
only with `overwrite` (and only by a complete dataset).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from atomica_ray.data.parquet import DEFAULT_ROW_GROUP_ITEMS, write_dataset

from .rows import Options, RowResult

ERRORS_FILE = "errors.csv"
NOTES_FILE = "notes.csv"


@dataclass
class Summary:
    n_rows: int = 0
    n_items: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, file, reason)
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (id, file, note)
    fallbacks: int = 0
    meta: dict | None = None  # dataset.json, None when nothing was written


def write_processed(results: Iterable[RowResult], out_dir: str, options: Options, source: str,
                    summary: Summary | None = None, *, overwrite: bool = False,
                    row_group_items: int = DEFAULT_ROW_GROUP_ITEMS) -> Summary:
    """Write the items of `results` (in order) to `out_dir`, counting into `summary` (kept by the caller, so
    failures are known even when the write raises). Raises DataError when no row made an item."""
    summary = Summary() if summary is None else summary

    def records() -> Iterator[tuple[str, dict]]:
        for res in results:
            summary.n_rows += 1
            summary.fallbacks += res.fallbacks
            summary.notes.extend((res.row.pdb_id, res.row.path, n) for n in res.notes)
            if res.error is not None:
                summary.failures.append((res.row.pdb_id, res.row.path, res.error))
            for rec in res.records:
                summary.n_items += 1
                yield res.row.path, rec

    def extra_meta() -> dict:
        return {
            "fragmentation_method": options.fragmentation_method,
            "process": {
                "source": os.path.abspath(source),
                "interface_dist_th": options.interface_dist_th,
                "torsion_masks": options.torsion,
                "n_rows": summary.n_rows,
                "n_failed_rows": len(summary.failures),
                "n_fragmentation_fallbacks": summary.fallbacks,
            },
        }

    def extra_files(directory: str) -> None:
        write_csv(os.path.join(directory, ERRORS_FILE), ("id", "file", "reason"), summary.failures)
        if summary.notes:
            write_csv(os.path.join(directory, NOTES_FILE), ("id", "file", "note"), summary.notes)

    summary.meta = write_dataset(records(), out_dir, row_group_items=row_group_items, overwrite=overwrite,
                                 extra_meta=extra_meta, extra_files=extra_files)
    return summary


def write_csv(path: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
