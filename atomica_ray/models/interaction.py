"""ATOMICA's interaction module (`models/ATOMICA/atomica.py`): a stack of tensor-product convolutions on a graph
and the optional denoising heads of the atom-level encoder.

Irreps grow layer by layer (ns scalars, nv = ns // 2 vectors):
  0: ns x0e
  1: + nv x1o + nv x2e
  2: + nv x1e + nv x2o
  3+: + ns x0o
The node embedding read out is [0e scalars, 0o pseudo-scalars] (just the 0e scalars with fewer than 3 layers).
The full node irreps after the last layer (`irreps_out`, before the read-out; ATOMICA's `return_full_node_attr`)
are returned too, on every path (eager, Triton kernels, CUDA graphs): the z representations are built from them
(models/invariants.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from e3nn import o3
from torch import nn

from .kernels.cuda_graphs import GraphedStack
from .equivariant import TensorProductConv, distance_embedder, spherical_harmonics
from .scatter import scatter_mean


def irreps_sequence(ns: int, nv: int) -> list[str]:
    return [
        f"{ns}x0e",
        f"{ns}x0e + {nv}x1o + {nv}x2e",
        f"{ns}x0e + {nv}x1o + {nv}x2e + {nv}x1e + {nv}x2o",
        f"{ns}x0e + {nv}x1o + {nv}x2e + {nv}x1e + {nv}x2o + {ns}x0o",
    ]


class InteractionModule(nn.Module):
    def __init__(self, ns: int, nv: int, num_conv_layers: int, sh_lmax: int, edge_size: int, dropout: float = 0.0,
                 return_atom_noise: bool = False, return_torsion_noise: bool = False,
                 return_global_noise: bool = False, max_torsion_neighbors: int = 9, max_edge_length: float = 20,
                 max_global_edge_length: float = 20, max_torsion_edge_length: float = 5):
        super().__init__()
        self.ns, self.nv = ns, nv
        # edges shorter than this carry no direction (0 = ATOMICA: any rounding noise is normalised)
        self.min_direction_length = 0.0
        self.num_conv_layers = num_conv_layers
        self.sh_irreps = o3.Irreps.spherical_harmonics(lmax=sh_lmax)
        self.edge_embedder = distance_embedder(edge_size, max_edge_length, dropout)
        self.node_embedding_dim = ns if num_conv_layers < 3 else 2 * ns

        seq = irreps_sequence(ns, nv)
        irreps_at = lambda i: seq[min(i, len(seq) - 1)]  # noqa: E731
        # edge features: [length embedding, edge type embedding, receiver scalars, sender scalars]
        n_edge = 2 * ns + 2 * edge_size
        self.layers = nn.ModuleList(
            TensorProductConv(irreps_at(i), self.sh_irreps, irreps_at(i + 1), n_edge, n_edge, dropout)
            for i in range(num_conv_layers)
        )
        final_irreps = irreps_at(num_conv_layers)
        self.irreps_out = o3.Irreps(final_irreps)  # layout of the full node irreps forward() returns

        self.return_atom_noise = return_atom_noise
        self.return_torsion_noise = return_torsion_noise
        self.return_global_noise = return_global_noise
        if return_global_noise:
            # translation (1o) and rotation (1e) of the noisy segment, from edges item centre -> its atoms
            self.global_denoise_edge_embedder = distance_embedder(edge_size, max_global_edge_length, dropout)
            self.global_denoise_predictor = TensorProductConv(final_irreps, self.sh_irreps, "2x1o + 2x1e",
                                                              ns + edge_size, ns + edge_size, dropout)
            self.global_denoise_predictor.norm_layer.affine_bias.requires_grad = False  # no even scalars: unused
        if return_torsion_noise:
            self.tor_max_radius = max_torsion_edge_length
            self.tor_max_neighbors = max_torsion_neighbors
            self.torsion_edge_embedder = distance_embedder(edge_size, max_torsion_edge_length, dropout)
            self.final_tp_tor = o3.FullTensorProduct(self.sh_irreps, "2e")
            self.tor_bond_conv = TensorProductConv(final_irreps, self.final_tp_tor.irreps_out, f"{ns}x0o + {ns}x0e",
                                                   2 * ns + edge_size, 2 * ns + edge_size, dropout)
            self.tor_final_layer = nn.Sequential(
                nn.Linear(2 * ns, ns, bias=False), nn.Tanh(), nn.Dropout(dropout), nn.Linear(ns, 1, bias=False)
            )
        if return_atom_noise:
            self.local_denoise_edge_embedder = distance_embedder(edge_size, max_edge_length, dropout)
            self.local_denoise_predictor = TensorProductConv(final_irreps, self.sh_irreps, "1o + 1e", n_edge, n_edge,
                                                             dropout)
            self.local_denoise_predictor.norm_layer.affine_bias.requires_grad = False
        self.out_ffn = nn.Sequential(
            nn.Linear(self.node_embedding_dim, self.node_embedding_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(self.node_embedding_dim, ns),
        )

    def _edge_features(self, length_embedding, edge_type_attr, node_attr, edges):
        # index_select, not x[idx]: its backward adds rows with atomics; x[idx]'s sorts the indices first (GPU)
        ns = self.ns
        return torch.cat(
            (length_embedding, edge_type_attr, node_attr[:, :ns].index_select(0, edges[0]),
             node_attr[:, :ns].index_select(0, edges[1])), dim=1
        )  # [E, 2 edge_size + 2 ns]

    def forward(self, node_attr: torch.Tensor, pos: torch.Tensor, edges: torch.Tensor, edge_type_attr: torch.Tensor):
        """Returns (final irreps features [N, dim], node embeddings [N, node_embedding_dim], edge geometry)."""
        edge_vec = pos[edges[1]] - pos[edges[0]]  # [E, 3], receiver -> sender
        edge_sh = spherical_harmonics(self.sh_irreps, edge_vec, self.min_direction_length)  # [E, 9]
        edge_length = edge_vec.norm(dim=-1)  # [E]
        length_embedding = self.edge_embedder(edge_length)
        for layer in self.layers:
            edge_attr = self._edge_features(length_embedding, edge_type_attr, node_attr, edges)
            update = layer(node_attr, edges, edge_attr, edge_sh)
            node_attr = F.pad(node_attr, (0, update.shape[-1] - node_attr.shape[-1])) + update  # residual
        if self.num_conv_layers < 3:
            node_embeddings = node_attr[:, : self.ns]
        else:
            node_embeddings = torch.cat((node_attr[:, : self.ns], node_attr[:, -self.ns :]), dim=1)
        return node_attr, node_embeddings, (edge_sh, edge_length)

    # --- denoising heads --------------------------------------------------------------------------------------
    def atom_noise(self, node_attr, edges, edge_type_attr, edge_geometry) -> torch.Tensor:
        """Per-atom noise prediction, 1o + 1e summed.  # [N, 3]"""
        edge_sh, edge_length = edge_geometry
        edge_attr = self._edge_features(self.local_denoise_edge_embedder(edge_length), edge_type_attr, node_attr, edges)
        pred = self.local_denoise_predictor(node_attr, edges, edge_attr, edge_sh)  # [N, 6]
        return pred[:, :3] + pred[:, 3:]

    def global_noise(self, node_attr, pos, item, atoms, n_items: int):
        """Translation and rotation scores of each item's noisy segment.  # [n_items, 3] x 2

        Edges go from the centre of the perturbed atoms (`atoms` [P], indices) of each item to each of them."""
        atom_item = item[atoms]
        center = scatter_mean(pos[atoms], atom_item, n_items)  # [n_items, 3]
        edges = torch.stack((atom_item, atoms))  # [2, P]: centre receives from atom
        vec = pos[atoms] - center[atom_item]
        edge_attr = torch.cat((self.global_denoise_edge_embedder(vec.norm(dim=-1)),
                               node_attr[:, : self.ns].index_select(0, atoms)), 1)
        pred = self.global_denoise_predictor(node_attr, edges, edge_attr,
                                             spherical_harmonics(self.sh_irreps, vec, self.min_direction_length),
                                             out_nodes=n_items)  # [n_items, 12] = 2x1o + 2x1e
        return pred[:, :3] + pred[:, 6:9], pred[:, 3:6] + pred[:, 9:]

    def torsion_noise(self, node_attr, node_embeddings, pos, tor_edges, radius_edges) -> torch.Tensor:
        """One score per rotatable bond, from the atoms near its midpoint.  # [n_bonds]

        `radius_edges` [2, E]: row 0 bond, row 1 atom (see graphs.radius_graph)."""
        bond_pos = (pos[tor_edges[1]] + pos[tor_edges[0]]) / 2  # [n_bonds, 3]
        bond_attr = node_embeddings.index_select(0, tor_edges[0]) + node_embeddings.index_select(0, tor_edges[1])
        bond, atom = radius_edges
        vec = pos[atom] - bond_pos[bond]
        edge_attr = torch.cat(
            (self.torsion_edge_embedder(vec.norm(dim=-1)), node_embeddings[:, : self.ns].index_select(0, atom),
             bond_attr[:, : self.ns].index_select(0, bond)), dim=-1,
        )
        edge_sh = spherical_harmonics(self.sh_irreps, vec, self.min_direction_length)
        bond_sh = spherical_harmonics("2e", pos[tor_edges[1]] - pos[tor_edges[0]], self.min_direction_length)
        tor_edge_sh = self.final_tp_tor(edge_sh, bond_sh[bond])
        pred = self.tor_bond_conv(node_attr, radius_edges, edge_attr, tor_edge_sh, out_nodes=tor_edges.shape[1])
        return self.tor_final_layer(pred).flatten()


class ATOMICAEncoder(nn.Module):
    """The interaction module plus its read-out: L2-normalised node representations (ATOMICA's `ATOMICAEncoder`)."""

    def __init__(self, hidden_size: int, edge_size: int, n_layers: int = 3, return_atom_noise: bool = False,
                 return_global_noise: bool = False, return_torsion_noise: bool = False, dropout: float = 0.0,
                 max_torsion_neighbors: int = 9, max_edge_length: float = 20, max_global_edge_length: float = 20,
                 max_torsion_edge_length: float = 5):
        super().__init__()
        self.encoder = InteractionModule(
            ns=hidden_size, nv=hidden_size // 2, num_conv_layers=n_layers, sh_lmax=2, edge_size=edge_size,
            dropout=dropout, return_atom_noise=return_atom_noise, return_torsion_noise=return_torsion_noise,
            return_global_noise=return_global_noise, max_torsion_neighbors=max_torsion_neighbors,
            max_edge_length=max_edge_length, max_global_edge_length=max_global_edge_length,
            max_torsion_edge_length=max_torsion_edge_length,
        )

        self.cuda_graphs = None  # a GraphedStack once `use_cuda_graphs(True)`

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay the layer stack from CUDA graphs when training on a GPU (models/kernels/cuda_graphs.py)."""
        if not enabled:
            self.cuda_graphs = None
            return
        stack = LayerStack(self.encoder)  # not a submodule of self: no state-dict keys of its own
        used = ("interaction.edge_embedder.", "interaction.layers.", "interaction.out_ffn.")
        names = [n for n, p in stack.named_parameters() if p.requires_grad and n.startswith(used)]
        # outputs: representation, irreps features, node embeddings (per node); sh, lengths (per edge)
        self.cuda_graphs = GraphedStack(stack, names, (True, True, True, False, False))

    def forward(self, h, pos, edges, edge_type_attr):
        """Returns (normalised representation [N, hidden], irreps features, node embeddings, edge geometry)."""
        if self.cuda_graphs is not None and self.training and GraphedStack.usable(h):
            outs = self.cuda_graphs(h, pos, edges, edge_type_attr)
        else:
            outs = layer_stack(self.encoder, h, pos, edges, edge_type_attr)
        repr_, node_attr, node_embeddings, edge_sh, edge_length = outs
        return repr_, node_attr, node_embeddings, (edge_sh, edge_length)


def layer_stack(interaction: InteractionModule, h, pos, edges, edge_type_attr):
    """The layers and the read-out: (representation, irreps features, node embeddings, edge sh, edge lengths)."""
    node_attr, node_embeddings, (edge_sh, edge_length) = interaction(h, pos, edges, edge_type_attr)
    repr_ = F.normalize(interaction.out_ffn(node_embeddings), dim=-1)
    return repr_, node_attr, node_embeddings, edge_sh, edge_length


class LayerStack(nn.Module):
    """`layer_stack` as a module: the unit CUDA graphs capture (its parameters can be swapped for copies)."""

    def __init__(self, interaction: InteractionModule):
        super().__init__()
        self.interaction = interaction

    def forward(self, h, pos, edges, edge_type_attr):
        return layer_stack(self.interaction, h, pos, edges, edge_type_attr)
