"""The two-level encoder that every ATOMICA model shares (atomica-reference.md §2.2).

atoms --k-NN graph--> atom encoder --> unit_repr
   \\--> cross-attention into their block --> block encoder on block centroids --> block_repr
                                                      \\--> attention pooling --> graph_repr

Module names are ATOMICA's, so its state dicts load strictly. Two defects of the original are switchable and
recorded in `get_config()` when they differ from ATOMICA (absent keys mean ATOMICA's behaviour):
  unk_is_global    UNK blocks (index 2, equal to the global *atom* index) count as global nodes when building
                   graphs (atomica-reference.md §5 item 1). ATOMICA: True. Fixed: False.
  attention_mask   cross-attention and attention pooling ignore padding instead of attending to zero vectors, so
                   an item's outputs no longer depend on the rest of its batch (§5 item 2). ATOMICA: False.
                   Fixed: True.
  direction_eps    edges shorter than this (Angstrom) carry no direction. ATOMICA (0) normalises rounding noise
                   into a random direction: the global-denoising edge from an item's centre to its global atom,
                   which sits at that centre, breaks the rotation equivariance of the translation / rotation
                   predictions. Fixed: 1e-3.

Inference: with `batch_independent` set (embed / predict / score set it; never recorded in the config), an item's
outputs are those it has alone in a batch, whatever else the batch holds. Without the attention mask that means
ATOMICA's numerics at batch size 1: each block's cross-attention padded to the largest block of its own item, and
pooling without padding (the masked pooling computes exactly that).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..data.vocab import ATOM_GLOBAL, GLB, MODALITIES, UNK, get_vocab
from .attention import AttentionPooling, CrossAttention
from .heads import act_dropout_linear, activation_name
from .graphs import ItemLayout, knn_graph, radius_graph
from .interaction import ATOMICAEncoder
from .scatter import scatter_mean, scatter_sum

# What ATOMICA itself does; a config without these keys was written by ATOMICA (or reproduces it).
ATOMICA_BEHAVIOUR = {"unk_is_global": True, "attention_mask": False, "direction_eps": 0.0}
FIXED_BEHAVIOUR = {"unk_is_global": False, "attention_mask": True, "direction_eps": 1e-3}


@dataclass
class Encoding:
    """What the encoder computes for a batch; readable as attributes or as keys."""

    unit_repr: torch.Tensor  # [Na, atom_hidden], unit norm
    block_repr: torch.Tensor  # [Nb, block_hidden], unit norm
    graph_repr: torch.Tensor | None  # [n_items, block_hidden], unit norm
    batch_id: torch.Tensor  # [Nb] item of each block
    block_id: torch.Tensor  # [Na] block of each atom
    # raw denoising predictions of the atom encoder (pretraining only)
    trans_noise: torch.Tensor | None = None  # [n_items, 3]
    rot_noise: torch.Tensor | None = None  # [n_items, 3]
    atom_noise: torch.Tensor | None = None  # [Na, 3]
    tor_noise: torch.Tensor | None = None  # [n_bonds]
    # full node irreps after the last layer of each encoder (ATOMICA's return_full_node_attr), on request
    atom_irreps: torch.Tensor | None = None  # [Na, encoder.encoder.irreps_out.dim]
    block_irreps: torch.Tensor | None = None  # [Nb, top_encoder.encoder.irreps_out.dim]

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return [f.name for f in fields(self)]


class BlockEmbedding(nn.Module):
    """Learned embeddings of atom types and block types (parameter names as ATOMICA's)."""

    def __init__(self, num_block_type: int, num_atom_type: int, atom_embed_size: int, block_embed_size: int):
        super().__init__()
        self.block_embedding = nn.Embedding(num_block_type, block_embed_size)
        self.atom_embedding = nn.Embedding(num_atom_type, atom_embed_size)


class AtomicaBackbone(nn.Module):
    """Embeddings, both graph levels, both encoders, the atom -> block attention and the pooling."""

    # The encoder's arguments, declared here once: every model class takes them as keyword arguments (`**encoder`)
    # and passes them on (see `encoder_args`). Their ATOMICA defaults and meaning: models/config_keys.py.
    def __init__(self, atom_hidden_size: int, block_hidden_size: int, edge_size: int = 16, k_neighbors: int = 9,
                 n_layers: int = 3, dropout: float = 0.0, bottom_global_message_passing: bool = False,
                 global_message_passing: bool = False, fragmentation_method: str | None = None,
                 unk_is_global: bool = FIXED_BEHAVIOUR["unk_is_global"],
                 attention_mask: bool = FIXED_BEHAVIOUR["attention_mask"],
                 direction_eps: float = FIXED_BEHAVIOUR["direction_eps"], *,
                 atom_noise: bool = False, translation_noise: bool = False, rotation_noise: bool = False,
                 torsion_noise: bool = False, modality_embedding: bool = False):
        super().__init__()
        self.atom_hidden_size = atom_hidden_size
        self.hidden_size = block_hidden_size
        self.edge_size = edge_size
        self.n_layers = n_layers
        self.dropout = dropout
        self.k_neighbors = k_neighbors
        self.global_message_passing = global_message_passing
        self.bottom_global_message_passing = bottom_global_message_passing
        self.fragmentation_method = fragmentation_method
        self.atom_noise, self.translation_noise = atom_noise, translation_noise
        self.rotation_noise, self.torsion_noise = rotation_noise, torsion_noise
        self.use_modality_embedding = modality_embedding
        self.unk_is_global = bool(unk_is_global)
        self.attention_mask = bool(attention_mask)
        self.direction_eps = float(direction_eps)
        self.global_block_id = GLB
        self.batch_independent = False  # inference only (module docstring); not part of the config

        vocab = get_vocab(fragmentation_method)
        self.block_embedding = BlockEmbedding(len(vocab), vocab.num_atom_types, atom_hidden_size, block_hidden_size)
        if modality_embedding:
            self.modality_embedding = nn.Embedding(len(MODALITIES), block_hidden_size)
        # edge types: 0 intra, 1 inter, 2 global-normal, 3 global-global
        self.edge_embedding_bottom = nn.Embedding(4, edge_size)
        self.edge_embedding_top = nn.Embedding(4, edge_size)
        self.encoder = ATOMICAEncoder(
            atom_hidden_size, edge_size, n_layers=n_layers, dropout=dropout, return_atom_noise=atom_noise,
            return_global_noise=translation_noise or rotation_noise, return_torsion_noise=torsion_noise,
            max_torsion_neighbors=k_neighbors, max_edge_length=5, max_global_edge_length=20,
            max_torsion_edge_length=5,
        )
        self.top_encoder = ATOMICAEncoder(block_hidden_size, edge_size, n_layers=n_layers, dropout=dropout,
                                          max_edge_length=5)
        for enc in (self.encoder, self.top_encoder):
            enc.encoder.min_direction_length = self.direction_eps
        self.atom_block_attn = CrossAttention(block_hidden_size, atom_hidden_size, block_hidden_size, num_heads=4,
                                              dropout=dropout)
        self.atom_block_attn_norm = nn.LayerNorm(block_hidden_size)
        self.attention_pooling = AttentionPooling(block_hidden_size, num_heads=4, dropout=dropout, num_layers=4)

    # --- configuration ----------------------------------------------------------------------------------------
    def encoder_config(self) -> dict:
        """ATOMICA's PredictionModel keys, in ATOMICA's order."""
        return {
            "atom_hidden_size": self.atom_hidden_size,
            "block_hidden_size": self.hidden_size,
            "edge_size": self.edge_size,
            "n_layers": self.n_layers,
            "dropout": self.dropout,
            "k_neighbors": self.k_neighbors,
            "global_message_passing": self.global_message_passing,
            "bottom_global_message_passing": self.bottom_global_message_passing,
            "fragmentation_method": self.fragmentation_method,
        }

    def behaviour_config(self) -> dict:
        """The defect flags, only where they differ from ATOMICA (so ATOMICA-numerics configs stay ATOMICA's)."""
        current = {"unk_is_global": self.unk_is_global, "attention_mask": self.attention_mask,
                   "direction_eps": self.direction_eps}
        return {k: v for k, v in current.items() if v != ATOMICA_BEHAVIOUR[k]}

    # --- block-embedding features (optional external per-block inputs) ------------------------------------
    def _init_block_features(self, nonlinearity, block_embedding_size, block_embedding0_size, block_embedding1_size,
                             num_projector_layers, projector_hidden_size, projector_dropout, post: bool):
        """Projectors of external block features and mixers with the block state (ATOMICA's module names)."""
        h, act = self.hidden_size, activation_name(nonlinearity)

        def add(name: str, size: int):
            setattr(self, name.format(kind="projector"), act_dropout_linear(
                act, size, projector_hidden_size, h, num_projector_layers, projector_dropout))
            setattr(self, name.format(kind="mixing_ffn"), act_dropout_linear(
                act, 2 * h, 2 * h, h, num_projector_layers, projector_dropout))

        for stage in ("pre", "post") if post else ("pre",):
            if block_embedding_size:
                add(stage + "_{kind}", block_embedding_size)
            if block_embedding0_size and block_embedding1_size:
                add(stage + "_{kind}0", block_embedding0_size)
                add(stage + "_{kind}1", block_embedding1_size)

    def _mix_block_features(self, stage: str, h: torch.Tensor, segment_ids: torch.Tensor, features: dict):
        """h [Nb, H] mixed with projected external block features, if this model has the `stage` mixers."""
        if hasattr(self, f"{stage}_projector"):
            proj = getattr(self, f"{stage}_projector")(features["block_embeddings"])
            return getattr(self, f"{stage}_mixing_ffn")(torch.cat([h, proj], dim=-1))
        if hasattr(self, f"{stage}_projector0"):
            out = h.clone()
            for seg in (0, 1):
                rows = segment_ids == seg
                proj = getattr(self, f"{stage}_projector{seg}")(features[f"block_embeddings{seg}"])
                # rows of segment `seg`, written back in place (ATOMICA concatenates segment 0 then 1, which
                # reorders blocks whenever a batch holds more than one item)
                out[rows] = getattr(self, f"{stage}_mixing_ffn{seg}")(torch.cat([h[rows], proj], dim=-1))
            return out
        return h

    # --- the encoder ------------------------------------------------------------------------------------------
    def _encode(self, Z, B, A, block_lengths, lengths, segment_ids, *, modality=None, perturb_mask=None,
                tor_edges=None, tor_batch=None, block_features=None, return_graph_repr=True,
                return_irreps=False, pad_width=None) -> Encoding:
        """`pad_width` [n_items] (batch-independent, unmasked only): pad each item's blocks to at least this many
        atoms, e.g. a masked copy of an item padded as the item itself is (ATOMICAScore)."""
        device = Z.device
        n_items, nb, na = lengths.shape[0], B.shape[0], A.shape[0]
        batch_id = torch.repeat_interleave(torch.arange(n_items, device=device), lengths, output_size=nb)  # [Nb]
        block_id = torch.repeat_interleave(torch.arange(nb, device=device), block_lengths, output_size=na)  # [Na]
        atoms_per_item = scatter_sum(block_lengths, batch_id, n_items)  # [n_items]
        pooled = torch.ones_like(B, dtype=torch.bool) if self.global_message_passing else B != GLB  # [Nb]
        pooled_per_item = scatter_sum(pooled.long(), batch_id, n_items)
        # host sizes of the graph tiles and of the pooling, fetched together
        max_blocks, max_atoms, max_pooled = torch.stack(
            [lengths.max(), atoms_per_item.max(), pooled_per_item.max()]).tolist()
        block_layout = ItemLayout(item=batch_id, start=torch.cumsum(lengths, 0) - lengths, size=lengths,
                                  max_size=max_blocks)
        atom_layout = ItemLayout.from_sizes(atoms_per_item, na, max_atoms)
        atom_item = batch_id[block_id]  # [Na]

        is_global = B == GLB
        if self.unk_is_global:
            is_global = is_global | (B == UNK)

        # every graph first: their sizes are data-dependent (host syncs), so they are all settled before the
        # long chain of encoder kernels is queued
        module = self.encoder.encoder
        atom_edges, atom_edge_type = knn_graph(Z, segment_ids[block_id], is_global[block_id], atom_layout,
                                               self.k_neighbors, global_edges=self.bottom_global_message_passing)
        if self.batch_independent:
            # Block centroids pick the block-level k-NN edges, where a distance tie between blocks (common in
            # ideal ligand geometry) is decided by the last bit. CUDA's atomic adds sum a block's atoms in an
            # order that varies with the batch; summed in float64 and rounded once, every order gives the same
            # float32 centroid.
            top_Z = scatter_mean(Z.double(), block_id, nb).to(Z.dtype)  # [Nb, 3]
        else:
            top_Z = scatter_mean(Z, block_id, nb)  # [Nb, 3] block centroids
        block_edges, block_edge_type = knn_graph(top_Z, segment_ids, is_global, block_layout, self.k_neighbors,
                                                 global_edges=self.global_message_passing)
        perturbed = None
        if perturb_mask is not None and module.return_global_noise:
            perturbed = torch.nonzero(perturb_mask).flatten()  # [P]
        radius_edges = None
        if tor_edges is not None and module.return_torsion_noise and tor_edges.numel() > 0:
            bond_pos = (Z[tor_edges[1]] + Z[tor_edges[0]]) / 2  # [n_bonds, 3]
            radius_edges = radius_graph(bond_pos, tor_batch, Z, atom_layout, module.tor_max_radius,
                                        module.tor_max_neighbors)

        # embeddings
        h_atom = self.block_embedding.atom_embedding(A)  # [Na, atom_hidden]
        h_block = self.block_embedding.block_embedding(B)  # [Nb, hidden]
        if block_features is not None:
            h_block = self._mix_block_features("pre", h_block, segment_ids, block_features)
        if self.use_modality_embedding:
            glb = (B == GLB).unsqueeze(1).to(h_block.dtype)
            h_block = h_block + glb * self.modality_embedding(modality[batch_id])

        # atom level
        atom_edge_attr = self.edge_embedding_bottom(atom_edge_type)
        unit_repr, node_attr, node_emb, geometry = self.encoder(h_atom, Z, atom_edges, atom_edge_attr)
        out = {}
        if perturbed is not None:
            out["trans_noise"], out["rot_noise"] = module.global_noise(node_attr, Z, atom_item, perturbed, n_items)
        if perturb_mask is not None and module.return_atom_noise:
            out["atom_noise"] = module.atom_noise(node_attr, atom_edges, atom_edge_attr, geometry)
        if radius_edges is not None:
            out["tor_noise"] = module.torsion_noise(node_attr, node_emb, Z, tor_edges, radius_edges)

        # atoms -> blocks
        kv_valid = None if self.bottom_global_message_passing else A != ATOM_GLOBAL
        pad_to = None
        if self.batch_independent and not self.attention_mask:
            pad_to = self._item_pad_width(block_id, kv_valid, batch_id, nb, n_items, pad_width)
        h_block = self.atom_block_attn_norm(h_block + self.atom_block_attn(
            h_block, unit_repr, block_id, kv_valid, masked=self.attention_mask, pad_to=pad_to))

        # block level
        block_repr, block_irreps, _, _ = self.top_encoder(h_block, top_Z, block_edges,
                                                          self.edge_embedding_top(block_edge_type))
        if block_features is not None:
            block_repr = self._mix_block_features("post", block_repr, segment_ids, block_features)

        graph_repr = None
        if return_graph_repr:
            graph_repr = self.attention_pooling(block_repr, batch_id, block_layout.start, pooled, n_items, max_pooled,
                                                masked=self.attention_mask or self.batch_independent)
        if return_irreps:
            out["atom_irreps"], out["block_irreps"] = node_attr, block_irreps
        return Encoding(unit_repr, block_repr, graph_repr, batch_id, block_id, **out)

    @staticmethod
    def _item_pad_width(block_id, kv_valid, batch_id, nb: int, n_items: int, pad_width) -> torch.Tensor:
        """Atoms each block is padded to: the largest block of its own item (or `pad_width`).  # [Nb]"""
        counted = torch.ones_like(block_id) if kv_valid is None else kv_valid.long()
        n_atoms = scatter_sum(counted, block_id, nb)  # [Nb]
        widest = torch.zeros(n_items, dtype=n_atoms.dtype, device=n_atoms.device).scatter_reduce_(
            0, batch_id, n_atoms, reduce="amax")  # [n_items]
        if pad_width is not None:
            widest = torch.maximum(widest, torch.as_tensor(pad_width, device=widest.device, dtype=widest.dtype))
        return widest[batch_id]

    def encode(self, batch: dict, irreps: bool = False, pad_width: torch.Tensor | None = None,
               graph: bool = True) -> Encoding:
        """Representations of a batch in ATOMICA's format (keys X, B, A, block_lengths, lengths, segment_ids and,
        where the model uses them, modality / block_embeddings*), computed in eval mode as ATOMICA's `infer()`
        does (the module's mode is restored afterwards). Autograd stays as the caller set it.

        `irreps`: also return the full node irreps of both levels (`atom_irreps`, `block_irreps`); `graph=False`
        skips the pooling; `pad_width`: see `_encode`."""
        device = self.edge_embedding_top.weight.device
        dtype = self.edge_embedding_top.weight.dtype

        def tensor(key, float_=False):
            value = batch.get(key)
            if value is None:
                return None
            value = torch.as_tensor(value, device=device)
            return value.to(dtype) if float_ else value.long()

        features = {k: tensor(k, float_=True) for k in ("block_embeddings", "block_embeddings0", "block_embeddings1")}
        was_training = self.training
        self.eval()
        try:
            return self._encode(tensor("X", float_=True), tensor("B"), tensor("A"), tensor("block_lengths"),
                                tensor("lengths"), tensor("segment_ids"), modality=tensor("modality"),
                                block_features=features if any(v is not None for v in features.values()) else None,
                                return_graph_repr=graph, return_irreps=irreps, pad_width=pad_width)
        finally:
            self.train(was_training)


def set_batch_independent(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every encoder inside `model` to batch-independent inference (module docstring)."""
    for module in model.modules():
        if isinstance(module, AtomicaBackbone):
            module.batch_independent = enabled
    return model


# the arguments every model class shares: the backbone's positional-or-keyword parameters
ENCODER_ARGS = tuple(name for name, p in inspect.signature(AtomicaBackbone.__init__).parameters.items()
                     if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def encoder_args(kwargs: dict, model: str) -> dict:
    """`kwargs`, checked to hold encoder arguments only (as ATOMICA's constructors reject others)."""
    unknown = sorted(set(kwargs) - set(ENCODER_ARGS))
    if unknown:
        raise TypeError(f"{model}.__init__() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return kwargs
