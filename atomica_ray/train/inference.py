"""Inference helpers shared by `atomica-ray embed` and `atomica-ray predict`: load a trained model, walk a dataset
in order with item ids, write rows to Parquet without clobbering existing files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from atomica_ray.train.checkpoint import model_files

# ATOMICA model class -> the task whose forward / head produces per-item predictions
PREDICTING_TASKS = {
    "AffinityPredictor": "PDBBind",
    "RegressionPredictor": "regression",
    "ClassifierModel": "binary_classifier",
    "MultiClassClassifierModel": "multiclass_classifier",
}


def resolve_model_paths(checkpoint: str | None, config: str | None, weights: str | None) -> tuple[Path, Path]:
    """(config.json, weights) from a run checkpoint / model directory, or from explicit ATOMICA files."""
    if checkpoint:
        if config or weights:
            raise ValueError("give either --checkpoint or --model_config/--model_weights, not both")
        return model_files(Path(checkpoint))
    if not (config and weights):
        raise ValueError("give --checkpoint DIR, or --model_config config.json and --model_weights weights.pt")
    for path in (config, weights):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
    return Path(config), Path(weights)


def load_model(config: Path, weights: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    from atomica_ray.models import load_atomica

    with open(config) as f:
        model_config = json.load(f)
    model = load_atomica(config, weights).to(device).eval()
    return model, model_config


def model_from_args(args) -> tuple[Path, torch.device, torch.nn.Module, dict]:
    """(config path, device, model in eval mode, its config.json) from embed / predict arguments (`--checkpoint`,
    `--model_config`, `--model_weights`, `--device`)."""
    config, weights = resolve_model_paths(args.checkpoint, args.model_config, args.model_weights)
    device = pick_device(args.device)
    model, model_config = load_model(config, weights, device)
    return config, device, model, model_config


def fragmentation_of(model_config: dict) -> str | None:
    inner = model_config.get("prot_model", model_config)  # ProteinInterfaceModel nests its encoder's config
    return inner.get("fragmentation_method")


def item_ids(dataset) -> list[str]:
    ids: list[str] = []
    for file in dataset.files:
        ids.extend(pq.read_table(file, columns=["id"]).column("id").to_pylist())
    return ids


def ordered_batches(path: str, kind: str, budget: int, fragmentation_method: str | None, allow_pickle: bool,
                    loader_workers: int = 0) -> Iterator[tuple[list[str], dict]]:
    """(ids, batch) over the whole dataset in file order, one process, nothing cropped: the block budget is raised
    to the largest item if needed (embeddings must cover every block)."""
    from atomica_ray.data import DataSpec, make_loader, open_dataset

    ds = open_dataset(path, allow_pickle=allow_pickle, fragmentation_method=fragmentation_method)
    largest = int(ds.index["n_blocks"].max()) if len(ds) else 1
    need = 2 * largest if kind == "prot_interface" else largest  # the complex and its protein share the budget
    spec = DataSpec(path=path, kind=kind, max_n_vertex_per_gpu=max(budget, need), allow_pickle=allow_pickle,
                    fragmentation_method=fragmentation_method)
    loader = make_loader(spec, seed=0, epoch=0, rank=0, world_size=1, shuffle=False, num_workers=loader_workers)
    ids = item_ids(ds)
    for members, batch in zip(loader.item_batches, loader):
        yield [ids[int(i)] for i in members], batch


class ParquetRows:
    """Rows appended in chunks to `<out>.tmp-*`, renamed to `out` on success only; an existing `out` is refused
    unless `overwrite`."""

    def __init__(self, out: str | Path, overwrite: bool = False, chunk: int = 256, schema: pa.Schema | None = None):
        self.out = Path(out)
        self.schema = schema
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} exists; choose another output path or pass --overwrite")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent)
        os.close(fd)
        self.writer = None
        self.rows: list[dict] = []
        self.chunk = chunk
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self.writer.write_table(table.cast(self.writer.schema))
        self.count += len(self.rows)
        self.rows = []

    def __enter__(self) -> "ParquetRows":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                if self.writer is None:
                    raise ValueError("no rows to write: the dataset is empty")
                self.writer.close()
                os.replace(self.tmp, self.out)
        finally:
            if self.writer is not None and exc_type is not None:
                self.writer.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


EMBEDDING_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("graph_embedding", pa.list_(pa.float32())),
    ("block_embedding", pa.list_(pa.list_(pa.float32()))),
    ("atom_embedding", pa.list_(pa.list_(pa.float32()))),
    ("block_id", pa.list_(pa.int32())),
    ("atom_id", pa.list_(pa.int32())),
])


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_list(x: torch.Tensor) -> list:
    return x.detach().float().cpu().numpy().astype(np.float32).tolist()
