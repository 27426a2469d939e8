"""Inference: `atomica-ray embed`, `predict` and `score` on a Ray Data pipeline (docs/DESIGN.md).

    checkpoints.py  which model: ATOMICA files, a checkpoint, or a run directory's best / latest checkpoint
    runner.py       a job (what every worker needs) and the per-shard work of a command
    embed.py        the named representations (atomica_ray/representations.py) as Parquet rows
    predict.py      a task model's predictions
    score.py        ATOMICAScore: per-residue importance by masking one block at a time
    batches.py      packing a shard's items into batches by block / atom budgets
    output.py       part files per shard, resumable, joined into one file or kept as a directory
    pipeline.py     the Ray Data pipeline and the command-line driver
"""
