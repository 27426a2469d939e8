"""`atomica-ray score`: ATOMICAScore, the importance of every residue of a complex for its partner's
representation, by masking one residue at a time (inference/score.py), on a Ray Data pipeline.

    atomica-ray score --model_config config.json --model_weights weights.pt --data_path complexes/ \\
        --output_path scores.jsonl
    atomica-ray score --checkpoint runs/pretrain --data_path ppi/ --ligand_segment 1 --output_path scores.parquet

One row per complex: id, ligand_segment, block_idx (the scored residue blocks), block_type (their residue
names), atomica_score (cosines: low means important), ranking (block_idx, most important first), readout.
Output: .jsonl (as ATOMICA writes it) or .parquet, or a directory of Parquet parts; a stopped run resumes.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from atomica_ray.inference.pipeline import add_arguments as common

    common(parser, "a .jsonl or .parquet file, or a directory of Parquet parts (resumable)")
    parser.add_argument("--ligand_segment", "--ligand-segment", dest="ligand_segment", type=int, choices=(0, 1),
                        default=None, help="the segment whose representation is read out (default: the one "
                                           "without amino acids, per complex; required for protein-protein)")


def run(args) -> int:
    from atomica_ray.inference.pipeline import execute, run_command

    return run_command("score", args,
                       lambda: execute(args, "score", {"ligand_segment": args.ligand_segment}, verb="scored"))
