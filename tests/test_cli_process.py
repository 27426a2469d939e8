"""`atomica-ray process` on a local Ray (bad rows, errors.csv, exit codes, no half-written dataset, no overwrite),
`atomica-ray export` back to ATOMICA's formats, and current ATOMICA's Parquet read by `convert`."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomica_ray.cli.main import main
from atomica_ray.data.items import DataError, read_records
from atomica_ray.data.loader import open_dataset
from atomica_ray.data.parquet import ParquetItems

try:
    import gemmi  # noqa: F401
    HAVE_GEMMI = True
except ImportError:
    HAVE_GEMMI = False
needs_gemmi = pytest.mark.skipif(not HAVE_GEMMI, reason="needs the structures extra: pip install -e '.[structures]'")

DATA = Path(__file__).parent / "data"
STRUCTURES = DATA / "structures"
UPSTREAM = DATA / "atomica_process_pdbs"


def write_index(path: Path, rows: list[str]) -> Path:
    path.write_text("pdb_id,pdb_path,chain1,chain2,lig_code,lig_smiles,lig_resi,label\n" + "\n".join(rows) + "\n")
    return path


def same_items(a: list[dict], b: list[dict]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        for key in ("B", "A", "atom_positions", "block_lengths", "segment_ids"):
            assert np.array_equal(x[key], y[key]), (x["id"], key)
        np.testing.assert_allclose(x["X"], y["X"], atol=1e-5)
        assert x["label"] == y["label"] and x["block_to_pdb_indexes"] == y["block_to_pdb_indexes"]


@pytest.fixture(scope="module")
def processed(ray_local, tmp_path_factory):
    """One process run over good and bad rows: (exit code, output dir, index)."""
    if not HAVE_GEMMI:
        pytest.skip("needs the structures extra: pip install -e '.[structures]'")
    work = tmp_path_factory.mktemp("process")
    garbage = work / "garbage.pdb"
    garbage.write_text("this is not a structure file\n")
    index = write_index(work / "index.csv", [
        f"1lcd,{STRUCTURES / '1LCD.pdb.gz'},A,B_C,,,,1",
        "missing,nowhere/missing.pdb,A,B,,,,0",
        f"garbage,{garbage},A,B,,,,0",
        f"nochain,{STRUCTURES / '4OZ7.pdb'},A,Z,,,,0",
        f"noligand,{STRUCTURES / '4OZ7.pdb'},A,A,HEM,,,0",
        f"4oz7,{STRUCTURES / '4OZ7.pdb'},A,B,,,,0",
    ])
    out = work / "ds"
    code = main(["process", str(index), "--out", str(out), "--no-progress"])
    return code, out, index


def test_bad_rows_are_listed_and_good_rows_written(processed, capsys):
    code, out, _ = processed
    assert code == 1  # some rows failed
    with open(out / "errors.csv") as f:
        errors = {r["id"]: r for r in csv.DictReader(f)}
    assert set(errors) == {"missing", "garbage", "nochain", "noligand"}
    assert "no such file" in errors["missing"]["reason"]
    assert errors["garbage"]["reason"] and errors["garbage"]["file"].endswith("garbage.pdb")
    assert "chain Z not found" in errors["nochain"]["reason"]
    assert "ligand HEM not found" in errors["noligand"]["reason"]
    ds = ParquetItems(str(out))
    assert [r["id"] for r in ds.iter_records()] == ["1lcd_A_BC", "4oz7_A_B"]
    assert ds.meta["process"]["n_failed_rows"] == 4 and ds.meta["process"]["interface_dist_th"] == 8.0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".ds.tmp")]


def test_existing_output_is_not_overwritten(processed, capsys):
    _, out, index = processed
    before = (out / "items.parquet").read_bytes()
    assert main(["process", str(index), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "items.parquet").read_bytes() == before


@needs_gemmi
def test_malformed_index_is_refused_before_anything_runs(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("pdb_id,pdb_path,chain1\n1lcd,x.pdb,A\n")
    assert main(["process", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing column(s) chain2" in capsys.readouterr().err
    bad = write_index(tmp_path / "label.csv", [f"1lcd,{STRUCTURES / '1LCD.pdb.gz'},A,B,,,,high"])
    assert main(["process", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "row 1 (pdb_id '1lcd'), field label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_folder_of_structures_and_export_round_trip(processed, tmp_path, capsys):
    folder = tmp_path / "structures"
    folder.mkdir()
    shutil.copy(STRUCTURES / "1LCD.pdb.gz", folder)
    shutil.copy(STRUCTURES / "5I55.cif", folder)  # one chain: no pair, a failed row
    out = tmp_path / "ds"
    assert main(["process", str(folder), "--out", str(out), "--no-progress"]) == 1
    records = list(ParquetItems(str(out)).iter_records())
    assert [r["id"] for r in records] == ["1LCD_B_C", "1LCD_B_A", "1LCD_C_A"]
    assert "fewer than two chains" in (out / "errors.csv").read_text()

    # export to each ATOMICA format and read back: the same items
    for name in ("items.jsonl.gz", "items.parquet"):
        assert main(["export", str(out), "--out", str(tmp_path / name)]) == 0
        same_items(records, list(read_records(str(tmp_path / name))))
    assert main(["export", str(out), "--out", str(tmp_path / "items.pkl")]) == 2
    assert "--pickle" in capsys.readouterr().err and not (tmp_path / "items.pkl").exists()
    assert main(["export", str(out), "--out", str(tmp_path / "items.pkl"), "--pickle"]) == 0
    same_items(records, list(read_records(str(tmp_path / "items.pkl"), allow_pickle=True)))
    with open(tmp_path / "items.pkl", "rb") as f:
        item = pickle.load(f)[0]
    assert set(item) == {"id", "data", "block_to_pdb_indexes"} and isinstance(item["data"]["X"][0], list)
    row = pq.read_table(tmp_path / "items.parquet").slice(0, 1).to_pylist()[0]  # ATOMICA's layout
    assert len(row["X"][0]) == 3 and json.loads(row["block_to_pdb_indexes"])["1"] == records[0][
        "block_to_pdb_indexes"][1]


@needs_gemmi
def test_a_crash_leaves_no_half_written_dataset(tmp_path):
    from atomica_ray.structures.dataset import write_processed
    from atomica_ray.structures.index import Row
    from atomica_ray.structures.rows import Options, process_row

    row = Row(1, "1lcd", str(STRUCTURES / "1LCD.pdb.gz"), ("A",), ("B", "C"))

    def results():
        for _ in range(40):  # enough items for a row group to be written before the crash
            yield process_row(row, Options())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_processed(results(), str(tmp_path / "ds"), Options(), "index.csv", row_group_items=8)
    assert list(tmp_path.iterdir()) == []


def test_atomica_parquet_read_by_convert_and_by_training_commands(tmp_path, monkeypatch):
    src = str(UPSTREAM / "upstream_PS_300.parquet")
    assert main(["convert", src, "--out", str(tmp_path / "ds")]) == 0
    ds = ParquetItems(str(tmp_path / "ds"))
    theirs = pq.read_table(src).to_pylist()
    assert [r["id"] for r in ds.iter_records()] == [u["id"] for u in theirs]
    first = ds[0]
    np.testing.assert_allclose(first["X"], np.array(theirs[0]["X"]), atol=1e-5)
    assert first["label"] == 7.1 and ds[2]["label"] is None  # NaN labels are missing labels
    monkeypatch.setenv("ATOMICA_RAY_CACHE", str(tmp_path / "cache"))
    assert len(open_dataset(src)) == len(theirs)  # train / tune / embed take the file directly

    table = pq.read_table(src)
    broken = table.drop(["segment_ids"])
    pq.write_table(broken, tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"broken.parquet: .*missing column\(s\) segment_ids"):
        list(read_records(str(tmp_path / "broken.parquet")))
    b2p = table.column("block_to_pdb_indexes").to_pylist()
    b2p[1] = "{not json"
    bad = table.set_column(table.schema.get_field_index("block_to_pdb_indexes"), "block_to_pdb_indexes",
                           pa.array(b2p, type=pa.large_string()))
    pq.write_table(bad, tmp_path / "bad_b2p.parquet")
    with pytest.raises(DataError, match=r"bad_b2p.parquet, item 1 \(id '4cup_A_A_ZYB'\), field block_to_pdb"):
        list(read_records(str(tmp_path / "bad_b2p.parquet")))
    items_file = tmp_path / "ds" / "items.parquet"
    with pytest.raises(DataError, match="pass its directory"):
        list(read_records(str(items_file)))
    assert os.path.isdir(tmp_path / "ds")


def readme_commands(section: str) -> list[list[str]]:
    """The `atomica-ray` commands of the first code block after a README heading, as argument lists."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split(f"## {section}\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[1:] for line in block.replace("\\\n", " ").splitlines() if line.startswith("atomica-ray ")]


@pytest.mark.slow
def test_readme_structure_files_example_runs(processed, tmp_path, monkeypatch, capsys):
    """README "From structure files": process -> train (tiny model, 1 epoch) -> embed -> export on the real files."""
    import glob

    pytest.importorskip("rdkit", reason="the example fragments ligands (PS_300): needs the structures extra")

    root = Path(__file__).resolve().parents[1]
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(root / name)
    monkeypatch.chdir(tmp_path)
    commands = readme_commands("From structure files")
    assert [c[0] for c in commands] == ["process", "train", "embed", "export"]
    for argv in commands:
        argv = [a for arg in argv for a in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
        if argv[0] in ("process", "train"):
            argv.append("--no-progress" if argv[0] == "process" else "--no-progress-bar")
        assert main(argv) == 0, (argv, capsys.readouterr().err[-3000:])
    out = capsys.readouterr().out
    assert "note: These weights were trained with atomica-ray's fixes" in out  # the train CLI said so

    records = list(ParquetItems("data/complexes").iter_records())
    assert len(records) == 6 and {r["label"] for r in records} == {0, 1}
    emb = pq.read_table("complexes-embeddings.parquet").to_pylist()
    assert [e["id"] for e in emb] == [r["id"] for r in records] and len(emb[0]["h_graph"]) == 16
    same_items(records, list(read_records("complexes.jsonl.gz")))
    (model_dir,) = glob.glob("runs/complexes/checkpoint_epoch0000_*/model")
    config = json.loads(Path(model_dir, "config.json").read_text())
    import torch

    reference = torch.load(Path(__file__).parent / "fixtures" / "atomica_reference.pt", weights_only=True)
    allowed = set(reference[config["model_type"]]["config"])  # ATOMICA's constructor keys (its own get_config)
    assert set(config) <= allowed, sorted(set(config) - allowed)  # default settings: ATOMICA's keys only
    assert json.loads(Path(model_dir, "atomica_ray.json").read_text())["warning"]
