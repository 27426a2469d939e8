"""Structure files -> ATOMICA items, on real PDB / mmCIF files (tests/data/structures: biopython 1.85 and gemmi
0.7.5 sdists, see its README).

Two kinds of checks: item for item against the output of upstream ATOMICA's own `process_pdbs` on the same files
(tests/data/atomica_process_pdbs, with the upstream commit and command in its README), and expectations derived
independently of the code under test: counts read off the files' text (SEQRES, MODEL, ATOM / HETATM lines),
residue and ligand names, chemistry.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("gemmi", reason="needs the structures extra: pip install -e '.[structures]'")

from atomica_ray.data.vocab import ATOM_GLOBAL, ELEMENTS, GLB, UNK, get_vocab  # noqa: E402
from atomica_ray.structures.blocks import chain_blocks  # noqa: E402
from atomica_ray.structures.index import Row, index_rows  # noqa: E402
from atomica_ray.structures.read import read_first_model  # noqa: E402
from atomica_ray.structures.rows import Options, process_row  # noqa: E402

DATA = Path(__file__).parent / "data"
STRUCTURES = DATA / "structures"
UPSTREAM = DATA / "atomica_process_pdbs"
INDEX = UPSTREAM / "index.csv"
VOCAB = get_vocab("PS_300")


def needs_rdkit(method):
    if method is not None:
        pytest.importorskip("rdkit", reason="PS_300 fragmentation needs RDKit (the structures extra)")


def element_block(symbol: str) -> int:
    return VOCAB.symbol_to_idx(symbol.lower())


def atom_type(symbol: str) -> int:
    return 3 + ELEMENTS.index(symbol)


def processed(method=None, dist_th=8.0, torsion=False) -> dict[str, dict]:
    """id -> record of every item of the fixture index."""
    out = {}
    for row in index_rows(str(INDEX)):
        result = process_row(row, Options(method, dist_th, torsion))
        assert result.error is None, (row.pdb_id, result.error)
        for rec in result.records:
            out[rec["id"]] = rec
    return out


def upstream_items(name: str) -> list[dict]:
    return pq.read_table(UPSTREAM / f"upstream_{name}.parquet").to_pylist()


# --- item for item against ATOMICA's process_pdbs ---------------------------------------------------------------
@pytest.mark.parametrize("name,method,dist_th", [("none", None, 8.0), ("PS_300", "PS_300", 8.0),
                                                 ("none_th14", None, 14.0)])
def test_items_equal_atomica_process_pdbs(name, method, dist_th):
    needs_rdkit(method)
    ours = processed(method, dist_th)
    theirs = upstream_items(name)
    assert list(ours) == [u["id"] for u in theirs]  # same ids, same order
    for u in theirs:
        r = ours[u["id"]]
        for key in ("B", "A", "atom_positions", "block_lengths", "segment_ids"):
            assert r[key].tolist() == u[key], (u["id"], key)
        X = np.array(u["X"])
        assert r["X"].shape == X.shape, u["id"]
        np.testing.assert_allclose(r["X"], X, atol=1e-3, err_msg=u["id"])
        assert r["block_to_pdb_indexes"] == {int(k): v for k, v in json.loads(u["block_to_pdb_indexes"]).items()}
        label = None if u["label"] is None or np.isnan(u["label"]) else u["label"]
        assert r["label"] == label, u["id"]


def test_torsion_masks_equal_atomica():
    needs_rdkit("PS_300")
    ours = processed("PS_300", torsion=True)
    theirs = json.loads((UPSTREAM / "upstream_torsion_PS_300.json").read_text())
    assert set(ours) == set(theirs)

    def lists(x):
        return None if x is None else np.asarray(x).astype(int).tolist()

    for item_id, segments in theirs.items():
        mine = ours[item_id]["torsion_mask"]
        assert len(mine) == len(segments)
        for m, t in zip(mine, segments):
            assert m["type"] == t["type"], item_id
            if t["type"] == 0:
                assert [lists(e) for e in m["edges"]] == t["edges"], item_id
                assert [lists(x) for x in m["mask_rotate"]] == t["mask_rotate"], item_id
            else:
                assert lists(m["edges"]) == t["edges"] and lists(m["mask_rotate"]) == t["mask_rotate"], item_id


# --- independent expectations -------------------------------------------------------------------------------------
def pdb_lines(name: str) -> list[str]:
    return gzip.open(STRUCTURES / name, "rt").read().splitlines()


def test_nucleic_acid_chains_follow_seqres_first_model_heavy_atoms_only():
    lines = pdb_lines("1LCD.pdb.gz")
    seqres = {}
    for ln in lines:
        if ln.startswith("SEQRES"):
            seqres.setdefault(ln[11], []).extend(ln[19:].split())
    assert sum(ln.startswith("MODEL") for ln in lines) == 3
    model1 = lines[:next(i for i, ln in enumerate(lines) if ln.startswith("ENDMDL"))]
    chains = {c.name: chain_blocks(c, VOCAB) for c in read_first_model(str(STRUCTURES / "1LCD.pdb.gz"))}
    for name in "ABC":
        # block per SEQRES residue (waters and the trailing Na+ of chain C are not blocks)
        assert [VOCAB.idx_to_abrv(b.type) for b in chains[name]] == seqres[name]
        heavy = [ln for ln in model1 if ln.startswith(("ATOM", "HETATM")) and ln[21] == name
                 and ln[17:20] != "HOH" and ln[76:78].strip() not in ("H", "NA")]
        hydrogens = [ln for ln in model1 if ln.startswith("ATOM") and ln[21] == name and ln[76:78].strip() == "H"]
        assert hydrogens  # the file has hydrogens; the blocks hold the heavy atoms of model 1 only
        assert sum(len(b) for b in chains[name]) == len(heavy)
    gly = [b for b in chains["A"][:-1] if VOCAB.idx_to_abrv(b.type) == "GLY"]
    assert gly and all(len(b) == 4 for b in gly)  # N, CA, C, O


def test_ligand_with_a_missing_atom_keeps_atom_blocks_and_is_reported():
    needs_rdkit("PS_300")
    row = next(r for r in index_rows(str(INDEX)) if r.pdb_id == "1gbt")
    result = process_row(row, Options("PS_300"))
    (rec,) = result.records
    lig = rec["B"][rec["segment_ids"] == 1][1:]
    # 4-guanidinobenzoate is C8 N3 O2; bound to Ser195 as an acyl-enzyme it lacks one O: 12 atom blocks
    assert sorted(lig.tolist()) == sorted([element_block("C")] * 8 + [element_block("N")] * 3 + [element_block("O")])
    assert result.fallbacks == 1 and "fragmentation failed" in result.notes[0]
    names = set(rec["block_to_pdb_indexes"].values())
    assert {"A_195", "A_221A"} <= names  # Ser195, which the inhibitor acylates, and an insertion-code residue
    ser = next(k for k, v in rec["block_to_pdb_indexes"].items() if v == "A_195")
    assert VOCAB.idx_to_abrv(int(rec["B"][ser])) == "SER"


def test_ligand_fragments_and_global_blocks():
    needs_rdkit("PS_300")
    row = next(r for r in index_rows(str(INDEX)) if r.lig_code == "ZYB")
    (rec,) = process_row(row, Options("PS_300")).records
    seg = rec["segment_ids"]
    lig = rec["B"][seg == 1]
    assert lig[0] == GLB and rec["B"][0] == GLB and seg[0] == 0
    # 4-fluorobenzamidoxime, F-c1ccc(cc1)C(N)=N-O: the fluorine, the ring with the amidine C-N, the N-O
    assert sorted(VOCAB.idx_to_abrv(int(b)) for b in lig[1:]) == sorted(["F", "NCc1ccccc1", "NO"])
    lengths = rec["block_lengths"]
    assert lengths[seg == 1][1:].sum() == 11  # heavy atoms of ZYB (its 7 hydrogens dropped)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for s in (0, 1):
        g = starts[np.nonzero(seg == s)[0][0]]  # the global atom of the segment
        atoms = np.concatenate([np.arange(st, st + n) for st, n, sg, b in zip(starts, lengths, seg, rec["B"])
                                if sg == s and b != GLB])
        assert rec["A"][g] == ATOM_GLOBAL
        np.testing.assert_allclose(rec["X"][g], rec["X"][atoms].mean(0), atol=1e-4)


def test_modified_residues_are_unk_blocks_and_trailing_ions_are_dropped():
    chains = {c.name: chain_blocks(c, VOCAB) for c in read_first_model(str(STRUCTURES / "4OZ7.pdb"))}
    text = (STRUCTURES / "4OZ7.pdb").read_text().splitlines()
    for name in "AB":
        blocks = chains[name]
        assert [b.pdb_index for b in blocks] == [f"{name}_{i}" for i in range(1, 11)]  # CU1 101 and waters gone
        for number, code in ((1, "22Q"), (6, "22W")):
            block = blocks[number - 1]
            heavy = [ln for ln in text if ln.startswith("HETATM") and ln[17:20] == code and ln[21] == name
                     and int(ln[22:26]) == number and ln[76:78].strip() != "H"]
            assert block.type == UNK and len(block) == len(heavy) > 0


def test_selenomethionine_is_met_and_altlocs_keep_the_most_occupied_copy():
    import gemmi

    chain = read_first_model(str(STRUCTURES / "5I55.cif"))[0]
    blocks = chain_blocks(chain, VOCAB)
    mse = blocks[0]
    assert VOCAB.idx_to_abrv(mse.type) == "MET" and atom_type("Se") in mse.atom_types and len(mse) == 8
    # residue 12 has alternate locations: one atom per name, at the most occupied copy (first one on a tie)
    raw = [r for r in gemmi.read_structure(str(STRUCTURES / "5I55.cif"))[0]["A"] if r.seqid.num == 12][0]
    best = {}
    for a in raw:
        if a.name not in best or a.occ > best[a.name].occ:
            best[a.name] = a
    block = next(b for b in blocks if b.pdb_index == "A_12")
    assert len(block) == len(best)
    expected = np.array([[best[n].pos.x, best[n].pos.y, best[n].pos.z] for n in best])
    np.testing.assert_allclose(block.coords, expected, atol=1e-4)


def test_hydrogen_dropped_deuterium_kept(tmp_path):
    # ATOMICA keeps deuterium (its vocabulary has no 'D': the mask atom type) and drops hydrogen
    lines = [ln for ln in (STRUCTURES / "4OZ7.pdb").read_text().splitlines() if ln.startswith(("ATOM", "HETATM"))]
    gly = [ln for ln in lines if ln[17:20] == "GLY" and ln[21] == "A"]
    extra = [gly[1][:12] + " H  " + gly[1][16:76] + " H", gly[1][:12] + " D  " + gly[1][16:76] + " D"]
    path = tmp_path / "d.pdb"
    path.write_text("\n".join(gly + extra) + "\nEND\n")
    (block,) = chain_blocks(read_first_model(str(path))[0], VOCAB)
    assert len(block) == len(gly) + 1 and block.atom_types[-1] == 1  # 'D' kept, as the mask atom type


def test_index_and_folder_rows(tmp_path):
    rows = index_rows(str(INDEX))
    assert [r.pdb_id for r in rows] == ["1gbt", "4cup", "4cup", "5i55", "5i55bad", "1lcd", "4oz7"]
    assert rows[5].chains2 == ("B", "C") and rows[1].lig_resi == 2971 and rows[2].lig_resi is None
    assert rows[0].label == 7.1 and rows[2].label is None
    assert all(Path(r.path).is_file() for r in rows)  # relative paths resolved beside the index
    result = process_row(Row(1, "1LCD", str(STRUCTURES / "1LCD.pdb.gz")), Options())
    assert result.error is None
    assert [r["id"] for r in result.records] == ["1LCD_B_C", "1LCD_B_A", "1LCD_C_A"]


@pytest.mark.parametrize("row,reason", [
    (Row(1, "x", "/nonexistent/x.pdb", ("A",), ("B",)), "no such file"),
    (Row(2, "x", str(STRUCTURES / "4OZ7.pdb"), ("A",), ("Q",)), "chain Q not found"),
    (Row(3, "x", str(STRUCTURES / "4OZ7.pdb"), ("A",), ("A",), "HEM"), "ligand HEM not found in chain A"),
    (Row(4, "x", str(STRUCTURES / "5I55.cif")), "fewer than two chains"),
    (Row(5, "x", str(STRUCTURES / "README.md"), ("A",), ("B",)), "not a structure file"),
])
def test_bad_rows_give_a_reason(row, reason):
    result = process_row(row, Options())
    assert result.records == [] and reason in result.error


def test_no_interface_and_unparsable_file(tmp_path):
    far = process_row(Row(1, "x", str(STRUCTURES / "1LCD.pdb.gz"), ("A",), ("B",)), Options(interface_dist_th=0.5))
    assert "no interface between chains A and B within 0.5 Å" in far.error
    garbage = tmp_path / "broken.cif"
    garbage.write_text("data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1\n")
    assert process_row(Row(1, "x", str(garbage), ("A",), ("B",)), Options()).error
