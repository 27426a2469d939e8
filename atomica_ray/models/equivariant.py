"""E(3)-equivariant building blocks of ATOMICA's interaction layers (`models/ATOMICA/utils.py`).

Module and parameter names follow ATOMICA's so that its state dicts load strictly; the tensor products are e3nn's
own modules, whose buffers (`tp.weight` [0], `tp.output_mask`, `tp._compiled_main_left_right._w3j_*`) are part of
ATOMICA's checkpoints.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .scatter import scatter_mean
from .kernels.tensor_product import StackedTensorProduct


class GaussianSmearing(nn.Module):
    """Distance -> `n` Gaussians with centres evenly spaced on [start, stop] and width = their spacing."""

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 32):
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        diff = dist.unsqueeze(-1) - self.offset  # [..., n]
        return torch.exp(self.coeff * diff.pow(2))


def distance_embedder(edge_size: int, stop: float, dropout: float) -> nn.Sequential:
    """Gaussian smearing on [0, stop] then Linear, ReLU, Dropout, Linear (ATOMICA's edge length embedding)."""
    return nn.Sequential(
        GaussianSmearing(stop=stop, num_gaussians=edge_size),
        nn.Linear(edge_size, edge_size),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(edge_size, edge_size),
    )


class EquivariantLayerNorm(nn.Module):
    """Layer norm per irrep type (Equiformer's EquivariantLayerNormV2, 'component' normalisation):
    even scalars are centred, every type is divided by the RMS of its components averaged over multiplicity, then
    scaled per channel; even scalars get a bias.

    Computed for all irreps at once (block sums as differences of a running sum along the features) rather than
    irrep by irrep: a handful of kernels instead of ~10 per irrep, forward and backward."""

    def __init__(self, irreps, eps: float = 1e-5):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        num_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0 and ir.p == 1)
        self.affine_weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        self.affine_bias = nn.Parameter(torch.zeros(num_scalar))
        # per feature component: its irrep block, its channel, whether it is an even scalar; block bounds and sizes
        block, channel, even = [], [], []
        starts, sizes, ch = [], [], 0
        for t, (mul, ir) in enumerate(self.irreps):
            starts.append(len(block))
            sizes.append(mul * ir.dim)
            block += [t] * (mul * ir.dim)
            channel += [ch + i for i in range(mul) for _ in range(ir.dim)]
            even += [ir.l == 0 and ir.p == 1] * (mul * ir.dim)
            ch += mul
        even_index = [i for i, e in enumerate(even) if e]
        for name, value in (("block", block), ("channel", channel), ("starts", starts),
                            ("ends", [s + n for s, n in zip(starts, sizes)]), ("even_index", even_index)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.long), persistent=False)
        self.register_buffer("block_size", torch.tensor(sizes, dtype=torch.get_default_dtype()), persistent=False)
        self.register_buffer("even", torch.tensor(even, dtype=torch.bool), persistent=False)

    def _block_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of each irrep block's components.  # [N, n_blocks]"""
        running = nn.functional.pad(x.cumsum(dim=1), (1, 0))  # [N, D + 1]
        return (running.index_select(1, self.ends) - running.index_select(1, self.starts)) / self.block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, irreps.dim]
        if self.even_index.numel():
            # even scalars minus their mean over channels (ir.dim = 1: a block mean is the channel mean)
            x = x - torch.where(self.even, self._block_mean(x).index_select(1, self.block), 0.0)
        inv_rms = (self._block_mean(x * x) + self.eps).rsqrt()  # [N, n_blocks]
        scale = inv_rms.index_select(1, self.block) * self.affine_weight.index_select(0, self.channel)  # [N, D]
        bias = x.new_zeros(x.shape[1]).index_add(0, self.even_index, self.affine_bias.to(x.dtype))  # [D]
        return x * scale + bias


class TensorProductConv(nn.Module):
    """One equivariant message-passing step (DiffDock-style): per-edge tensor-product weights from an MLP of the
    edge features, messages `TP(h[sender], Y(edge))` averaged at the receiver, then equivariant layer norm.

    `edges[0]` receives, `edges[1]` sends; `out_nodes` sets the number of receivers when they are not the nodes
    themselves (bonds, item centres).

    `self.tp` (e3nn) defines the function and holds ATOMICA's buffers; it is evaluated by `StackedTensorProduct`
    (same function, a few large matmuls) unless `use_e3nn` is set."""

    use_e3nn = False  # class-wide switch: evaluate with e3nn's own code (reference / debugging)

    def __init__(self, in_irreps, sh_irreps, out_irreps, n_edge_features: int, hidden_features: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or n_edge_features
        self.tp = o3.FullyConnectedTensorProduct(in_irreps, sh_irreps, out_irreps, shared_weights=False)
        self.fc = nn.Sequential(
            nn.Linear(n_edge_features, hidden_features),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_features, self.tp.weight_numel),
        )
        self.norm_layer = EquivariantLayerNorm(out_irreps)
        self.stacked_tp = StackedTensorProduct(self.tp)  # non-persistent buffers only: no state-dict keys

    def forward(self, node_attr: torch.Tensor, edges: torch.Tensor, edge_attr: torch.Tensor, edge_sh: torch.Tensor,
                out_nodes: int | None = None) -> torch.Tensor:
        receiver, sender = edges
        if self.use_e3nn:
            message = self.tp(node_attr.index_select(0, sender), edge_sh, self.fc(edge_attr))  # [E, out_dim]
        else:
            hidden = self.fc[2](self.fc[1](self.fc[0](edge_attr)))  # Linear, ReLU, Dropout
            message = self.stacked_tp(node_attr.index_select(0, sender), edge_sh, hidden, self.fc[3])  # [E, out_dim]
        out = scatter_mean(message, receiver, out_nodes if out_nodes is not None else node_attr.shape[0])
        return self.norm_layer(out)


def spherical_harmonics(irreps, vec: torch.Tensor, min_length: float = 0.0) -> torch.Tensor:
    """Y(vec / |vec|) with 'component' normalisation, as ATOMICA calls e3nn.

    Vectors shorter than `min_length` get no direction (Y = 1 for l = 0, 0 above): normalising rounding noise
    would give them a random one."""
    if min_length > 0:
        vec = torch.where(vec.norm(dim=-1, keepdim=True) < min_length, torch.zeros_like(vec), vec)
    return o3.spherical_harmonics(irreps, vec, normalize=True, normalization="component")
