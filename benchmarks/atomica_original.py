"""ATOMICA's original model code, importable for a side-by-side benchmark (bench_step.py --atomica-src PATH).

PATH is a checkout of github.com/mims-harvard/ATOMICA (its `models/`, `data/`, `utils/` on sys.path). Nothing of it
is copied here or into the repository. What its model code imports but a GPU machine's image may lack is stood in
for, as the reference fixtures were made (../shared/atomica_reference/README.md: "native torch stand-ins with
torch_scatter / torch_cluster semantics"):
- `torch_scatter` (scatter / scatter_sum / scatter_mean / scatter_min) and `torch_cluster.radius`: native torch,
  with those packages' semantics (radius: the first `max_num_neighbors` points by index, strictly within r);
- the data-processing packages its `data/` imports at module level (Biopython, biotite, RDKit, orjson): empty
  modules, since no model code calls them; the block vocabulary's fragments (PS_300) are read from
  atomica-ray's copy of the same vocabulary file (`atomica_ray.data.vocab.read_fragment_smiles`) instead of
  through RDKit's tokenizer.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import torch

DATA_PACKAGES = ("Bio", "biotite", "rdkit", "orjson")


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % src.dim()
    shape = [1] * src.dim()
    shape[dim] = -1
    return index.view(shape).expand_as(src) if index.dim() == 1 else index.expand_as(src)


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    dim = dim % src.dim()
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    idx = _broadcast(index, src, dim)
    result = src.new_zeros(shape)
    if reduce in ("sum", "add"):
        return result.scatter_add_(dim, idx, src)
    if reduce == "mean":
        total = result.scatter_add_(dim, idx, src)
        count = src.new_zeros(shape).scatter_add_(dim, idx, torch.ones_like(src))
        return total / count.clamp(min=1)
    op = {"max": "amax", "min": "amin"}[reduce]
    return result.scatter_reduce_(dim, idx, src, op, include_self=False)


def scatter_sum(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, dim_size=dim_size, reduce="sum")


def scatter_mean(src, index, dim=-1, out=None, dim_size=None):
    return scatter(src, index, dim, dim_size=dim_size, reduce="mean")


def scatter_min(src, index, dim=-1, out=None, dim_size=None):
    values = scatter(src, index, dim, dim_size=dim_size, reduce="min")
    dim = dim % src.dim()
    idx = _broadcast(index, src, dim)
    hit = src == values.gather(dim, idx)
    positions = torch.arange(src.shape[dim], device=src.device).view([-1 if d == dim else 1 for d in range(src.dim())])
    positions = torch.where(hit, positions.expand_as(src), src.shape[dim])
    arg = torch.full(values.shape, src.shape[dim], dtype=torch.long, device=src.device)
    return values, arg.scatter_reduce_(dim, idx, positions, "amin", include_self=True)


def radius(x, y, r, batch_x=None, batch_y=None, max_num_neighbors=32, chunk: int = 1024):
    """[2, E]: row 0 indexes y, row 1 the points of x of the same batch strictly within r, the first
    max_num_neighbors of them by index."""
    batch_x = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if batch_x is None else batch_x
    batch_y = torch.zeros(y.shape[0], dtype=torch.long, device=y.device) if batch_y is None else batch_y
    out = []
    for s in range(0, y.shape[0], chunk):
        near = (torch.cdist(y[s:s + chunk], x) < r) & (batch_y[s:s + chunk, None] == batch_x[None, :])
        near &= torch.cumsum(near, dim=1) <= max_num_neighbors
        row, col = near.nonzero(as_tuple=True)
        out.append(torch.stack((row + s, col)))
    return torch.cat(out, dim=1) if out else torch.zeros(2, 0, dtype=torch.long, device=x.device)


class _Anything(type):
    """A placeholder class whose every attribute is another placeholder (e.g. RDKit's `BondType.SINGLE`)."""

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything(attr, (), {})


class _Empty(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules (any attribute is a placeholder class) for the data packages ATOMICA's `data/` imports."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in DATA_PACKAGES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: _Anything(attr, (), {}) if not attr.startswith("__") else None
        return module

    def exec_module(self, module):
        pass


def load(src: str):
    """ATOMICA's `models` package from the checkout at `src`, with the stand-ins above."""
    for name, attrs in (("torch_scatter", dict(scatter=scatter, scatter_sum=scatter_sum, scatter_mean=scatter_mean,
                                               scatter_min=scatter_min)),
                        ("torch_cluster", dict(radius=radius))):
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    missing = []
    for name in DATA_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.meta_path.insert(0, _Empty())
    sys.path.insert(0, src)
    tokenize = importlib.import_module("data.tokenizer.tokenize_3d")
    from atomica_ray.data.vocab import read_fragment_smiles

    class Fragments:  # what ATOMICA's Vocab reads of its tokenizer: the fragments' SMILES by index
        def __init__(self, method):
            self.smiles = read_fragment_smiles(method)

        def __len__(self):
            return len(self.smiles)

        def idx_to_subgraph(self, i):
            return self.smiles[i]

    def load_fragments(self, method):
        self.tokenizer = None if method is None else Fragments(method)
        return self.tokenizer

    type(tokenize.TOKENIZER).load = load_fragments
    return importlib.import_module("models")


def build(models, name: str, released: dict, pretrain: dict):
    """ATOMICA's model of this class at the released configuration (as bench_step.build builds ours)."""
    if name == "DenoisePretrainModel":
        return models.DenoisePretrainModel(**released, **pretrain)
    return models.ClassifierModel(**released, num_pred_layers=3, nonlinearity=torch.nn.ReLU(), pred_dropout=0.0,
                                  pred_hidden_size=32)
