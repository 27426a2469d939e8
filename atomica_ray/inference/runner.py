"""One inference job (`Job`: what every worker needs, picklable) and the per-shard work of each command
(`Runner`: records in, Arrow tables out). A runner knows nothing of Ray: the pipeline's actors hold one, and so
can a plain loop (benchmarks/bench_embed.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

# torch is imported where it is used: the CLI builds its parsers from this module, and `--help` answers without it


@dataclass(frozen=True)
class Job:
    command: str  # embed | predict | score
    dataset: str  # Parquet dataset directory (absolute)
    config: str  # model config.json (absolute)
    weights: str  # model weights (absolute)
    parts: str = ""  # directory of the part files (absolute)
    suffix: str = ".parquet"  # part file format: .parquet | .jsonl
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    block_budget: int = 1000  # blocks per batch
    atom_budget: int | None = None  # atoms per batch
    threads: int = 1  # torch threads of a CPU worker
    options: dict = field(default_factory=dict)  # the command's own: representations, pool, segment, task, ...


def precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        import torch

        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Runner:
    """Records of one shard in, output tables out (in record order); counts what it did."""

    fields: tuple[str, ...] = ()  # optional record fields to read (data/parquet.py OPTIONAL_FIELDS)
    schema: pa.Schema

    def __init__(self, job: Job, model: torch.nn.Module, device: torch.device):
        self.job, self.model, self.device = job, model, device
        self.done = 0
        self.skipped: list[str] = []  # "id: reason" of items that gave no row

    def count(self, n: int) -> None:
        self.done += n

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append(f"{item_id}: {reason}")

    def tables(self, records: list[dict]) -> Iterator[pa.Table]:
        raise NotImplementedError


def make_runner(job: Job, device: torch.device) -> Runner:
    """The command's runner, with the model loaded on `device`, in eval mode and batch-independent."""
    from atomica_ray.inference.checkpoints import ModelFiles, load_model
    from atomica_ray.models.backbone import set_batch_independent

    model = set_batch_independent(load_model(ModelFiles(job.config, job.weights), device))
    if job.command == "embed":
        from atomica_ray.inference.embed import Embedder
        return Embedder(job, model, device)
    if job.command == "predict":
        from atomica_ray.inference.predict import Predictor
        return Predictor(job, model, device)
    if job.command == "score":
        from atomica_ray.inference.score import Scorer
        return Scorer(job, model, device)
    raise ValueError(f"unknown inference command {job.command!r}")
