"""ATOMICAScore (current ATOMICA's `interaction_profiler`): how much one molecule's representation depends on
each residue of its partner.

For each amino-acid block i outside the ligand segment, the complex G \\ i has block i replaced by the MASK block
holding a single mask atom at the block's centroid (it keeps the residue's position and loses its identity, size
and shape), and

    score_i = cos( r(G), r(G \\ i) ),   r = z_interface over the ligand segment, mean_component_normalized

A low score means the residue matters: `importance` = -score, and `ranking` lists block indices most important
first. Only amino-acid residues are scored (a protein block is a residue, a small-molecule block a fragment: one
ranking would not compare like with like). The ligand segment is the one without amino-acid blocks, unless
given (`--ligand_segment`, needed for protein-protein or protein-peptide complexes); a complex where it is
ambiguous, or with nothing to score, gets no row and is counted as skipped.

Batching: intact complexes and their masked copies are packed by the budgets like any items. Each masked copy is
padded as its intact complex (ATOMICA keeps the intact graph in every forward pass for that reason) and every
item runs batch-independently, so a score does not depend on how the graphs were batched.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from atomica_ray import representations as R
from atomica_ray.data.collate import collate, to_device
from atomica_ray.data.vocab import ATOM_GLOBAL, ATOM_MASK, GLB, MASK, get_vocab
from atomica_ray.inference.batches import pack
from atomica_ray.inference.runner import Runner, precision_context

READOUT, POOL = "z_interface", "mean_component_normalized"
ATOM_POSITION_MASK = 1  # 'm' in ATOMICA's atom-position vocabulary

SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("ligand_segment", pa.int32()),
    pa.field("block_idx", pa.list_(pa.int32())),  # scored blocks: indices into the item's blocks
    pa.field("block_type", pa.list_(pa.string())),  # their residue names (ALA, ...)
    pa.field("atomica_score", pa.list_(pa.float64())),  # cosines; low = important
    pa.field("ranking", pa.list_(pa.int32())),  # block_idx, most important first
    pa.field("readout", pa.string()),
])


def amino_acid_blocks() -> range:
    return get_vocab(None).aa_range  # the 20 amino acids sit at the same indices in every vocabulary


def ligand_segment_of(rec: dict) -> int:
    """The segment without amino-acid blocks; ValueError when none or several are."""
    aa = amino_acid_blocks()
    B, seg = rec["B"], rec["segment_ids"]
    candidates = []
    for s in np.unique(seg):
        real = B[(seg == s) & (B != GLB)]
        if len(real) and not np.any((real >= aa.start) & (real < aa.stop)):
            candidates.append(int(s))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError("every segment has amino-acid blocks (protein-protein?): pass --ligand_segment")
    raise ValueError(f"segments {candidates} all lack amino-acid blocks: pass --ligand_segment")


def scorable_blocks(rec: dict, ligand_segment: int) -> np.ndarray:
    """Amino-acid blocks outside the ligand segment."""
    aa = amino_acid_blocks()
    B = rec["B"]
    return np.nonzero((B >= aa.start) & (B < aa.stop) & (rec["segment_ids"] != ligand_segment))[0]


def mask_block(rec: dict, block: int) -> dict:
    """A copy of `rec` with `block` replaced by the MASK block and one mask atom at its centroid."""
    lengths = rec["block_lengths"]
    start = int(lengths[:block].sum())
    stop = start + int(lengths[block])
    centroid = rec["X"][start:stop].astype(np.float64).mean(axis=0).astype(np.float32)  # ATOMICA: a float64 mean
    out = dict(rec)
    out["X"] = np.concatenate([rec["X"][:start], centroid[None], rec["X"][stop:]])
    out["A"] = np.concatenate([rec["A"][:start], [ATOM_MASK], rec["A"][stop:]]).astype(rec["A"].dtype)
    out["atom_positions"] = np.concatenate(
        [rec["atom_positions"][:start], [ATOM_POSITION_MASK], rec["atom_positions"][stop:]]).astype(
        rec["atom_positions"].dtype)
    out["B"] = rec["B"].copy()
    out["B"][block] = MASK
    out["block_lengths"] = lengths.copy()
    out["block_lengths"][block] = 1
    return out


def widest_block(rec: dict, count_global_atoms: bool) -> int:
    """Atoms of the item's largest block, as its cross-attention counts them."""
    block_of_atom = np.repeat(np.arange(len(rec["B"])), rec["block_lengths"])
    counted = block_of_atom if count_global_atoms else block_of_atom[rec["A"] != ATOM_GLOBAL]
    return int(np.bincount(counted, minlength=len(rec["B"])).max())


class Scorer(Runner):
    schema = SCHEMA

    def __init__(self, job, model, device):
        super().__init__(job, model, device)
        self.ligand_segment = job.options.get("ligand_segment")
        self.encoder = R.encoder_of(model)
        self.names = get_vocab(self.encoder.fragmentation_method).idx2abrv

    def plan(self, records: list[dict]) -> list[dict]:
        """Per complex to score: its record, ligand segment, scored blocks and pad width."""
        complexes = []
        for rec in records:
            try:
                ligand = self.ligand_segment if self.ligand_segment is not None else ligand_segment_of(rec)
            except ValueError as error:
                self.skip(rec["id"], str(error))
                continue
            blocks = scorable_blocks(rec, ligand)
            if not len(blocks):
                self.skip(rec["id"], f"no amino-acid block outside ligand segment {ligand}")
                continue
            complexes.append({"rec": rec, "ligand": ligand, "blocks": blocks,
                              "pad": widest_block(rec, self.encoder.bottom_global_message_passing)})
        return complexes

    def tables(self, records: list[dict]) -> Iterator[pa.Table]:
        complexes = self.plan(records)
        # graphs in order: each complex intact (block -1), then its masked copies
        graphs = [g for c in range(len(complexes)) for g in [(c, -1)] + [(c, int(b)) for b in complexes[c]["blocks"]]]

        def record(g):
            c, block = g
            rec = complexes[c]["rec"]
            return rec if block < 0 else mask_block(rec, block)

        sizes = [(len(complexes[c]["rec"]["B"]), len(complexes[c]["rec"]["A"]) - (0 if b < 0 else
                  int(complexes[c]["rec"]["block_lengths"][b]) - 1)) for c, b in graphs]
        intact: dict[int, torch.Tensor] = {}
        scores: dict[int, list[float]] = {c: [] for c in range(len(complexes))}
        remaining = {c: len(complexes[c]["blocks"]) for c in range(len(complexes))}
        for batch_graphs in pack([s[0] for s in sizes], [s[1] for s in sizes], self.job.block_budget,
                                 self.job.atom_budget):
            members = [graphs[i] for i in batch_graphs]
            batch = to_device(collate([record(g) for g in members], "plain"), self.device)
            segment = torch.tensor([complexes[c]["ligand"] for c, _ in members], device=self.device)
            pad = torch.tensor([complexes[c]["pad"] for c, _ in members], device=self.device)
            with torch.inference_mode(), precision_context(self.job.precision, self.device):
                vectors = R.compute(self.model, batch, [READOUT], pool=POOL, segment=segment, pad_width=pad)[READOUT]
            finished = []
            for (c, block), vector in zip(members, vectors):
                if block < 0:
                    intact[c] = vector
                    continue
                scores[c].append(float(F.cosine_similarity(intact[c][None], vector[None], dim=-1)))
                remaining[c] -= 1
                if remaining[c] == 0:
                    finished.append(c)
            if finished:
                yield self.rows(complexes, finished, scores)
                for c in finished:
                    intact.pop(c, None)

    def rows(self, complexes, finished: list[int], scores) -> pa.Table:
        rows = []
        for c in finished:
            comp = complexes[c]
            blocks, score = comp["blocks"], np.asarray(scores[c])
            rows.append({"id": comp["rec"]["id"], "ligand_segment": comp["ligand"],
                         "block_idx": blocks.tolist(),
                         "block_type": [self.names[int(comp["rec"]["B"][b])] for b in blocks],
                         "atomica_score": score.tolist(),
                         "ranking": blocks[np.argsort(score, kind="stable")].tolist(),
                         "readout": f"{READOUT}:{POOL}"})
        self.count(len(finished))
        return pa.Table.from_pylist(rows, schema=SCHEMA)
