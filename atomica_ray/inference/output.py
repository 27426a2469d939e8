"""Where a job's rows go: one part file per shard, written whole or not at all, so a stopped run resumes.

    OUT.parquet / OUT.jsonl   one file: the parts collect in `.OUT.parts/` beside it and are joined, in dataset
                              order, when the last shard is done (the file appears only then)
    OUT (anything else)       a directory of Parquet parts `part-00000.parquet`, ... (read it with pyarrow,
                              pandas, polars or Ray Data as one table), `_SUCCESS` once complete

A run that stops (Ctrl-C, a lost node, a killed job) keeps its finished parts; the same command computes only the
missing shards. `_manifest.json` records what decides the rows (command, dataset, shard size, model fingerprint,
options); a different command on the same output is refused, naming what differs. A complete output is never
replaced without --overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
SINGLE_FILE_SUFFIXES = (".parquet", ".jsonl")


def part_path(parts: str | Path, shard: int, suffix: str) -> Path:
    return Path(parts) / f"part-{shard:05d}{suffix}"


def write_part(path: Path, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Write `tables` to `path` (Parquet, one row group per table, or JSON lines) through a temporary file renamed
    at the end; returns the rows written. An error leaves nothing at `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    rows = 0
    try:
        if path.suffix == ".jsonl":
            with open(tmp, "w") as f:
                for table in tables:
                    for row in table.to_pylist():
                        f.write(json.dumps(row) + "\n")
                    rows += table.num_rows
        else:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for table in tables:
                    writer.write_table(table)
                    rows += table.num_rows
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows


class Output:
    def __init__(self, path: str, manifest: dict, overwrite: bool = False):
        self.path = Path(path).expanduser().resolve()
        self.single = self.path.suffix in SINGLE_FILE_SUFFIXES
        self.suffix = self.path.suffix if self.single else ".parquet"
        self.parts = self.path.parent / f".{self.path.name}.parts" if self.single else self.path
        self.manifest = manifest
        self.overwrite = overwrite

    def complete(self) -> bool:
        return self.path.is_file() if self.single else (self.path / SUCCESS).is_file()

    def prepare(self, n_shards: int) -> set[int]:
        """Check the output (before any work) and return the shards already done. Raises FileExistsError for a
        complete output without --overwrite, ValueError for parts of a different command."""
        if self.single and self.path.is_dir():
            raise FileExistsError(f"{self.path} is a directory; name a file, or a directory without the suffix")
        if not self.single and self.path.is_file():
            raise FileExistsError(f"{self.path} is a file; name a directory (or a .parquet / .jsonl file)")
        if self.complete() and not self.overwrite:
            raise FileExistsError(f"{self.path} exists (complete); pass --overwrite to replace it, or choose "
                                  "another output path")
        manifest_file = self.parts / MANIFEST
        if self.parts.is_dir() and any(self.parts.iterdir()):
            if not manifest_file.is_file():
                raise FileExistsError(f"{self.parts} exists and was not written by atomica-ray (no {MANIFEST}); "
                                      "choose another output path")
            before = json.loads(manifest_file.read_text())
            changed = sorted(k for k in set(before) | set(self.manifest) if before.get(k) != self.manifest.get(k))
            if self.overwrite:
                self._clear()
            elif changed:
                detail = "; ".join(f"{k}: {before.get(k)!r} there, {self.manifest.get(k)!r} now" for k in changed)
                raise ValueError(f"{self.parts} holds parts of a different run ({detail}); rerun that command to "
                                 "resume it, or pass --overwrite to start afresh")
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob(".part-*.tmp-*"):  # a worker stopped mid-shard
            stale.unlink()
        manifest_file.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        return {i for i in range(n_shards) if part_path(self.parts, i, self.suffix).is_file()}

    def _clear(self) -> None:
        for entry in self.parts.iterdir():
            if entry.name.startswith(("part-", ".part-")) or entry.name in (MANIFEST, SUCCESS):
                entry.unlink()

    def finish(self, n_shards: int) -> None:
        """All parts written: join them into the single file, or mark the directory complete."""
        parts = [part_path(self.parts, i, self.suffix) for i in range(n_shards)]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise RuntimeError(f"{self.parts}: parts {missing[:5]} are missing; rerun the command to compute them")
        if not self.single:
            (self.parts / SUCCESS).write_text("")
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            if self.suffix == ".jsonl":
                with open(tmp, "wb") as out:
                    for part in parts:
                        with open(part, "rb") as f:
                            shutil.copyfileobj(f, out)
            else:
                writer = None
                try:
                    for part in parts:
                        file = pq.ParquetFile(part)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, file.schema_arrow, compression="zstd")
                        for g in range(file.num_row_groups):  # one row group in memory at a time
                            writer.write_table(file.read_row_group(g))
                finally:
                    if writer is not None:
                        writer.close()
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()
        shutil.rmtree(self.parts, ignore_errors=True)
