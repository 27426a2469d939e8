"""ATOMICAScore (atomica_ray/inference/score.py) against current ATOMICA's interaction_profiler on the reference
model (tests/fixtures/atomica_representations.pt), whatever the batching; masking and the ligand-segment rule."""

from pathlib import Path

import numpy as np
import pytest
import torch

from atomica_ray.data.vocab import ATOM_MASK, MASK
from atomica_ray.inference.runner import Job
from atomica_ray.inference.score import Scorer, ligand_segment_of, mask_block
from atomica_ray.models import load_atomica
from atomica_ray.models.backbone import set_batch_independent

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def setup():
    ref = torch.load(FIXTURES / "atomica_reference.pt", weights_only=True)["PredictionModel"]
    model = set_batch_independent(load_atomica(ref["config"], ref["state_dict"]).eval())
    b = ref["batch"]
    blocks = b["lengths"].tolist()
    atoms = [int(a.sum()) for a in torch.split(b["block_lengths"], blocks)]
    records, b0, a0 = [], 0, 0
    for i, (nb, na) in enumerate(zip(blocks, atoms)):
        records.append({"id": f"item{i}", "X": b["X"][a0:a0 + na].numpy(), "A": b["A"][a0:a0 + na].numpy(),
                        "atom_positions": np.zeros(na, np.int64), "B": b["B"][b0:b0 + nb].numpy(),
                        "block_lengths": b["block_lengths"][b0:b0 + nb].numpy(),
                        "segment_ids": b["segment_ids"][b0:b0 + nb].numpy()})
        b0, a0 = b0 + nb, a0 + na
    return model, records, torch.load(FIXTURES / "atomica_representations.pt", weights_only=True)["scores"]


def score(model, records, **job) -> tuple[list[dict], list[str]]:
    options = {"ligand_segment": job.pop("ligand_segment", None)}
    scorer = Scorer(Job("score", "", "", "", options=options, **job), model, torch.device("cpu"))
    with torch.no_grad():
        rows = [row for table in scorer.tables(records) for row in table.to_pylist()]
    return rows, scorer.skipped


def check_against_atomica(row: dict, want: dict) -> None:
    assert row["block_idx"] == want["block_idx"].tolist()
    assert np.abs(np.array(row["atomica_score"]) - want["score"].numpy()).max() < 1e-6
    order = np.argsort(want["score"].numpy(), kind="stable")
    assert row["ranking"] == want["block_idx"][order].tolist()  # most important (lowest cosine) first
    assert row["ligand_segment"] == 1 and row["readout"] == "z_interface:mean_component_normalized"
    assert all(t in ("GLY", "ALA", "VAL", "LEU", "ILE", "PHE", "TRP", "TYR", "ASP", "HIS", "ASN", "GLU", "LYS",
                     "GLN", "MET", "ARG", "SER", "THR", "CYS", "PRO") for t in row["block_type"])


def test_matches_atomica_score_and_skips_what_it_cannot_score(setup):
    """Without --ligand_segment: the protein-ligand complex gets the same blocks and the same cosines (1e-6) as
    ATOMICA's atomica_score (batches of 8 with the intact graph in slot 0), although its 24 masked copies are
    spread over 13 batches of 2 (block budget 70, 29 blocks each); the protein-peptide complex (amino acids on
    both sides) is skipped, and said so."""
    model, records, expected = setup
    assert [ligand_segment_of(r) for r in (records[0], records[1], records[3])] == [1, 1, 1]
    with pytest.raises(ValueError, match="every segment has amino-acid blocks"):
        ligand_segment_of(records[2])  # protein-peptide
    rows, skipped = score(model, records[1:3], block_budget=70)
    assert [r["id"] for r in rows] == ["item1"] and len(skipped) == 1 and skipped[0].startswith("item2:")
    check_against_atomica(rows[0], expected[1])


def test_mask_block_keeps_the_position_and_drops_the_atoms(setup):
    _, records, _ = setup
    rec = records[0]
    b = 1
    start, n = int(rec["block_lengths"][:b].sum()), int(rec["block_lengths"][b])
    masked = mask_block(rec, b)
    assert masked["B"][b] == MASK and masked["block_lengths"][b] == 1 and rec["B"][b] != MASK  # the input is kept
    assert len(masked["A"]) == len(rec["A"]) - n + 1 and masked["A"][start] == ATOM_MASK
    assert np.allclose(masked["X"][start], rec["X"][start:start + n].mean(0), atol=1e-6)
    assert np.array_equal(masked["X"][start + 1:], rec["X"][start + n:])
