"""`Predictor`: a task model's per-item predictions of a shard, as Parquet rows.

Columns: `id`, `prediction` (affinity / value / probability of class 1; for multiclass the predicted class) and
`probabilities` [n_classes] for multiclass, plus `label` when every item of the dataset has one. The list-label
tasks write lists: `residue_binary_classifier` one probability per non-global block (the blocks in item order, as
its `block_labels`), `multilabel_classifier` one probability per class; their `label` is the list they were
trained on. The task's own
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
from atomica_ray.data.vocab import GLB
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


LIST_KINDS = {"residue": ("block_labels", pa.int8()), "multilabel": ("label_vector", pa.float32())}


def schema(multiclass: bool, labelled: bool, kind: str = "") -> pa.Schema:
    fields = [pa.field("id", pa.string())]
    if kind in LIST_KINDS:
        fields.append(pa.field("prediction", pa.list_(pa.float32())))
        if labelled:
            fields.append(pa.field("label", pa.list_(LIST_KINDS[kind][1])))
        return pa.schema(fields)
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
        self.schema = schema(self.multiclass, self.labelled, self.kind)

    def tables(self, records: list[dict]) -> Iterator[pa.Table]:
        for rec in records:
            self.fill_label(rec)
        for items in pack_records(records, self.job.block_budget, self.job.atom_budget):
            batch = to_device(collate(items, self.kind), self.device)
            with torch.inference_mode(), precision_context(self.job.precision, self.device):
                _, out = self.task.forward(self.model, batch)
            self.count(len(items))
            yield pa.table({"id": [it["id"] for it in items], **self.columns(items, out)}, schema=self.schema)

    def fill_label(self, rec: dict) -> None:
        """Give every record the label its task's forward needs (a zero of the right shape when the dataset has
        none: the loss it also computes is ignored)."""
        if self.kind in LIST_KINDS:
            field, _ = LIST_KINDS[self.kind]
            if rec.get(field) is None:
                n = int((np.asarray(rec["B"]) != GLB).sum()) if self.kind == "residue" else self.model.num_classes
                rec[field] = np.zeros(n, np.int8 if self.kind == "residue" else np.float32)
            return
        value = item_label(rec, self.kind) if self.labelled else None
        rec["label"] = (int(value) if self.multiclass else float(value)) if value is not None else (
            0 if self.multiclass else 0.0)

    def columns(self, items: list[dict], out: dict) -> dict:
        """The prediction columns of a batch (and its labels), in the schema's types."""
        if self.kind in LIST_KINDS:
            field, _ = LIST_KINDS[self.kind]
            prob = out["prob"].float().cpu().numpy()
            if self.kind == "residue":  # [n_non_global_blocks of the batch] -> one list per item
                counts = [int((np.asarray(it["B"]) != GLB).sum()) for it in items]
                per_item = np.split(prob, np.cumsum(counts)[:-1])
            else:  # [bs, num_classes]
                per_item = list(prob)
            columns = {"prediction": [p.astype(np.float32) for p in per_item]}
            labels = [np.asarray(it[field]) for it in items]
        elif self.multiclass:
            prob = out["prob"].float().cpu().numpy()
            columns = {"prediction": prob.argmax(1).astype(np.int64), "probabilities": list(prob.astype(np.float32))}
            labels = [it["label"] for it in items]
        else:
            columns = {"prediction": out[self.task.prediction_keys[0]].float().cpu().numpy().astype(np.float64)}
            labels = [it["label"] for it in items]
        if self.labelled:
            columns["label"] = labels
        return columns
