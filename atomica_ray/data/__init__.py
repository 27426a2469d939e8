"""ATOMICA data on Parquet: vocabulary, readers, datasets, batching, collation (docs/DESIGN.md).

`from atomica_ray.data import DataSpec, open_dataset, make_loader` imports lazily, so light users
(`vocab`, `atomica-ray inspect`) do not pay for torch.
"""

_LAZY = {
    "DataSpec": "atomica_ray.data.loader",
    "open_dataset": "atomica_ray.data.loader",
    "make_loader": "atomica_ray.data.loader",
    "get_vocab": "atomica_ray.data.vocab",
    "MODALITIES": "atomica_ray.data.vocab",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atomica_ray.data' has no attribute {name!r}")
