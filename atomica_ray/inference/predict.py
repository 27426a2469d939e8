"""`Predictor`: a task model's per-item predictions of a shard, as Parquet rows.

Columns: `id`, `prediction` (affinity / value / probability of class 1; for multiclass the predicted class) and
`probabilities` [n_classes] for multiclass, plus `label` when every item of the dataset has one. The task's own
`forward` computes them (the loss it also returns is ignored), on a batch-independent model: an item's prediction
does not depend on its batch partners.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from atomica_ray.data.collate import collate, to_device
from atomica_ray.data.loader import FIELDS_USED
from atomica_ray.inference.batches import pack_records
from atomica_ray.inference.runner import Runner, precision_context
from atomica_ray.tasks import get_task


def item_label(rec: dict, kind: str):
    """The label a kind reads from a record (None when the record has none)."""
    if kind == "labelled":
        return rec["label"] if rec["label"] is not None else rec["affinity"]
    if kind == "affinity":
        return rec["affinity"]
    return rec["label"]


def schema(multiclass: bool, labelled: bool) -> pa.Schema:
    fields = [pa.field("id", pa.string())]
    if multiclass:
        fields += [pa.field("prediction", pa.int64()), pa.field("probabilities", pa.list_(pa.float32()))]
    else:
        fields.append(pa.field("prediction", pa.float64()))
    if labelled:
        fields.append(pa.field("label", pa.int64() if multiclass else pa.float64()))
    return pa.schema(fields)


class Predictor(Runner):
    def __init__(self, job, model, device):
        super().__init__(job, model, device)
        self.task = get_task(job.options["task"])
        self.kind, self.labelled = job.options["kind"], job.options["labelled"]
        self.multiclass = self.kind == "multiclass"
        self.fields = FIELDS_USED[self.kind]
        self.schema = schema(self.multiclass, self.labelled)

    def tables(self, records: list[dict]) -> Iterator[pa.Table]:
        for rec in records:
            value = item_label(rec, self.kind) if self.labelled else None
            rec["label"] = (int(value) if self.multiclass else float(value)) if value is not None else (
                0 if self.multiclass else 0.0)  # the forward needs one; its loss is ignored
        for items in pack_records(records, self.job.block_budget, self.job.atom_budget):
            batch = to_device(collate(items, self.kind), self.device)
            with torch.inference_mode(), precision_context(self.job.precision, self.device):
                _, out = self.task.forward(self.model, batch)
            columns = {"id": [it["id"] for it in items]}
            if self.multiclass:
                prob = out["prob"].float().cpu().numpy()
                columns["prediction"] = prob.argmax(1).astype(np.int64)
                columns["probabilities"] = list(prob.astype(np.float32))
            else:
                columns["prediction"] = out[self.task.prediction_keys[0]].float().cpu().numpy().astype(np.float64)
            if self.labelled:
                columns["label"] = [it["label"] for it in items]
            self.count(len(items))
            yield pa.table(columns, schema=self.schema)
