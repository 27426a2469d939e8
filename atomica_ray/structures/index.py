"""What to process: ATOMICA's index CSV, or a folder of structure files.

Index columns (ATOMICA's `process_pdbs`): `pdb_id, pdb_path, chain1, chain2` required; `lig_code, lig_smiles,
lig_resi, label` optional. Chains are joined by '_' ('B_C'); a row with `lig_code` pairs the chain1 chains with
the HETATM residues of that name in the single chain2 chain (only the one numbered `lig_resi`, if given); a row
without pairs the chain1 chains with the chain2 chains. Relative `pdb_path`s are read from the current directory,
else from the index file's directory. A malformed index (missing column, a label that is not a number, several
ligand chains) is refused as a whole, before anything runs; a row that cannot be processed is reported per row.

A folder: every .pdb / .ent / .cif / .mmcif file (optionally .gz) in it, one row each, id = the file name without
its extensions; each row makes one item per pair of chains in contact.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

from atomica_ray.data.items import DataError

from .read import is_structure_file

REQUIRED_COLUMNS = ("pdb_id", "pdb_path", "chain1", "chain2")
OPTIONAL_COLUMNS = ("lig_code", "lig_smiles", "lig_resi", "label")


@dataclass(frozen=True)
class Row:
    line: int  # data line of the index (1 = first row after the header), or file number in a folder
    pdb_id: str
    path: str  # absolute
    chains1: tuple[str, ...] | None = None  # None: every pair of chains in contact (folder rows)
    chains2: tuple[str, ...] | None = None
    lig_code: str | None = None
    lig_smiles: str | None = None
    lig_resi: int | None = None
    label: float | None = None


def structure_id(path: str) -> str:
    """'1LCD' for '.../1LCD.pdb.gz'."""
    name = os.path.basename(path)
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[0]


def read_rows(source: str) -> list[Row]:
    """Rows of an index CSV or of a folder of structure files."""
    if os.path.isdir(source):
        return folder_rows(source)
    if not os.path.isfile(source):
        raise DataError(f"{source}: no such index file or folder")
    return index_rows(source)


def folder_rows(folder: str) -> list[Row]:
    files = sorted(f for f in os.listdir(folder) if is_structure_file(f) and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise DataError(f"{folder}: no structure files (.pdb, .ent, .cif, .mmcif, optionally .gz)")
    return [Row(i + 1, structure_id(f), os.path.abspath(os.path.join(folder, f))) for i, f in enumerate(files)]


def resolve_path(path: str, index_dir: str) -> str:
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    beside = os.path.join(index_dir, path)
    return os.path.abspath(beside if os.path.exists(beside) else path)


def index_rows(index: str) -> list[Row]:
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{index}: missing column(s) {', '.join(missing)}; an ATOMICA index has columns "
                            f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)} (the last four optional)")
        reader.fieldnames = columns
        rows = [parse_row(index, n, {k: (v or "").strip() for k, v in raw.items() if k is not None})
                for n, raw in enumerate(reader, start=1)]
    if not rows:
        raise DataError(f"{index}: no rows")
    ids = {}
    for r in rows:
        key = (r.pdb_id, r.chains1, r.chains2, r.lig_code, r.lig_resi)
        if key in ids:
            raise DataError(f"{index}, row {r.line} (pdb_id {r.pdb_id!r}): same pdb_id, chains and ligand as row "
                            f"{ids[key]}; the items would share an id")
        ids[key] = r.line
    return rows


def parse_row(index: str, n: int, raw: dict) -> Row:
    where = lambda field: f"{index}, row {n} (pdb_id {raw.get('pdb_id')!r}), field {field}"  # noqa: E731
    for field in REQUIRED_COLUMNS:
        if not raw.get(field):
            raise DataError(f"{where(field)}: empty")
    chains1 = tuple(raw["chain1"].split("_"))
    chains2 = tuple(raw["chain2"].split("_"))
    lig_code = raw.get("lig_code") or None
    if lig_code is not None and len(chains2) > 1:
        raise DataError(f"{where('chain2')}: a ligand lies in one chain, got {raw['chain2']!r}")
    lig_resi = None
    if raw.get("lig_resi"):
        try:
            lig_resi = int(float(raw["lig_resi"]))
        except ValueError as e:
            raise DataError(f"{where('lig_resi')}: {raw['lig_resi']!r} is not a residue number") from e
    label = None
    if raw.get("label"):
        try:
            label = float(raw["label"])
        except ValueError as e:
            raise DataError(f"{where('label')}: {raw['label']!r} is not a number") from e
        if math.isnan(label):
            label = None  # written 'nan', as pandas writes a missing value
        elif math.isinf(label):
            raise DataError(f"{where('label')}: not finite ({raw['label']!r})")
    return Row(n, raw["pdb_id"], resolve_path(raw["pdb_path"], os.path.dirname(os.path.abspath(index))),
               chains1, chains2, lig_code, raw.get("lig_smiles") or None, lig_resi, label)
