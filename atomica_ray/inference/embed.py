"""`Embedder`: named representations of every item of a shard, as Parquet rows.

Columns: `id`, `block_id` [n_blocks] (block types, as ATOMICA names them), `atom_id` [n_atoms] (atom types), then
one column per requested name (an alias keeps its own column name): atom level [n_atoms][width], block level
[n_blocks][width], graph / interface level [width]; float32. A ProteinInterfaceModel embeds the protein
(segment 0) alone, as ATOMICA does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from atomica_ray import representations as R
from atomica_ray.data.collate import collate, to_device
from atomica_ray.data.loader import segment_only
from atomica_ray.inference.batches import pack_records
from atomica_ray.inference.runner import Runner, precision_context

VECTOR = pa.list_(pa.float32())
ROWS = pa.list_(VECTOR)


def schema(columns: list[tuple[str, str]]) -> pa.Schema:
    fields = [pa.field("id", pa.string()), pa.field("block_id", pa.list_(pa.int32())),
              pa.field("atom_id", pa.list_(pa.int32()))]
    for column, name in columns:
        fields.append(pa.field(column, VECTOR if R.REPRESENTATIONS[name].level in ("graph", "interface") else ROWS))
    return pa.schema(fields)


def vectors(values: np.ndarray) -> pa.Array:
    """[n, w] -> n lists of w floats."""
    n, w = values.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int32)),
                                    pa.array(values.reshape(-1), type=pa.float32()))


def grouped_rows(values: np.ndarray, counts: list[int]) -> pa.Array:
    """[sum(counts), w] -> one list of `count` vectors per item."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), vectors(values))


def ints(values: list[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(values).astype(np.int32)))


class Embedder(Runner):
    def __init__(self, job, model, device):
        super().__init__(job, model, device)
        self.protein_only = type(model).__name__ == "ProteinInterfaceModel"
        self.columns = [tuple(c) for c in job.options["columns"]]
        self.names = sorted({name for _, name in self.columns})
        self.pool, self.segment = job.options.get("pool"), job.options.get("segment")
        self.schema = schema(self.columns)

    def tables(self, records: list[dict]) -> Iterator[pa.Table]:
        if self.protein_only:
            records = [segment_only(r, 0) for r in records]
        for items in pack_records(records, self.job.block_budget, self.job.atom_budget):
            batch = to_device(collate(items, "plain"), self.device)
            with torch.inference_mode(), precision_context(self.job.precision, self.device):
                out = R.compute(self.model, batch, self.names, pool=self.pool, segment=self.segment)
            out = {k: v.float().cpu().numpy() for k, v in out.items()}
            n_blocks, n_atoms = [len(it["B"]) for it in items], [len(it["A"]) for it in items]
            arrays = [pa.array([it["id"] for it in items], pa.string()), ints([it["B"] for it in items]),
                      ints([it["A"] for it in items])]
            for _, name in self.columns:
                level = R.REPRESENTATIONS[name].level
                if level == "atom":
                    arrays.append(grouped_rows(out[name], n_atoms))
                elif level == "block":
                    arrays.append(grouped_rows(out[name], n_blocks))
                else:
                    arrays.append(vectors(out[name]))
            self.count(len(items))
            yield pa.Table.from_arrays(arrays, schema=self.schema)
