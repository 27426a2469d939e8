"""Small datasets with list-valued labels, made from the demo generator (shared by the list-label test modules).

Residue labels are the interface labels of the items themselves (a block is positive when a heavy atom is within
4 Å of the partner); label vectors have 3 labels: the item's contact label, affinity above the median, and more
than the median number of blocks.
"""

from __future__ import annotations

import functools

import numpy as np


def demo_records(n: int, seed: int):
    """Fresh copies of the cached records (tests may change them)."""
    return [dict(r) for r in _demo_records(n, seed)]


@functools.lru_cache(maxsize=8)
def _demo_records(n: int, seed: int):
    from atomica_ray.data.demo import demo_items
    from atomica_ray.data.items import validate_item
    from atomica_ray.data.labels import with_interface_labels
    from atomica_ray.data.vocab import get_vocab

    n_types = len(get_vocab("PS_300"))
    items = demo_items(n, seed=seed)
    aff = np.array([it["affinity"]["neglog_aff"] for it in items])
    size = np.array([len(it["data"]["B"]) for it in items])
    records = []
    for i, it in enumerate(items):
        rec = with_interface_labels(validate_item(it, "demo", i, n_types))
        rec["label_vector"] = np.array([it["label"], aff[i] > np.median(aff), size[i] > np.median(size)],
                                       dtype=np.float32)
        records.append(rec)
    return records


def write_splits(root, n_train: int = 12, n_valid: int = 6, seed: int = 3) -> dict:
    from atomica_ray.data.parquet import write_dataset

    records = demo_records(n_train + n_valid, seed)
    out = {}
    for split, part in (("train", records[:n_train]), ("valid", records[n_train:])):
        out[split] = str(root / split)
        write_dataset((("demo", r) for r in part), out[split])
    return out
