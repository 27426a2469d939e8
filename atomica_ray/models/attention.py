"""The two attention steps between ATOMICA's levels: atoms -> block (cross-attention) and blocks -> item (pooling).

ATOMICA pads both to dense tensors without an attention mask, so zero padding takes part in the softmax and an
item's embedding depends on the largest block / item of its batch (atomica-reference.md §5, item 2).
`masked=False` reproduces that exactly (needed for ATOMICA checkpoints to give ATOMICA's outputs);
`masked=True` attends to real entries only. For inference, `CrossAttention`'s `pad_to` pads each block to the
width of its own item instead of the batch's (ATOMICA's numerics at batch size 1, whatever the batch holds), and
masked pooling equals ATOMICA's unpadded pooling of one item alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .scatter import scatter_max, scatter_sum


class CrossAttention(nn.Module):
    """Each block (one query) attends to its own atoms (keys / values), multi-head.

    Computed as a softmax over the atoms of each block (no padded [blocks, max atoms] tensor). The unmasked
    variant adds ATOMICA's padding analytically: a block with n of the batch's at most m atoms also attends to
    m - n zero vectors, whose key and value are the projection biases.
    """

    def __init__(self, dim_query: int, dim_kv: int, dim_out: int, num_heads: int, dropout: float):
        super().__init__()
        self.query_proj = nn.Linear(dim_query, dim_out)
        self.key_proj = nn.Linear(dim_kv, dim_out)
        self.value_proj = nn.Linear(dim_kv, dim_out)
        self.output_proj = nn.Linear(dim_out, dim_out)
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.scale = (dim_out // num_heads) ** -0.5
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, kv_block: torch.Tensor, kv_valid: torch.Tensor | None,
                masked: bool, pad_to: torch.Tensor | None = None) -> torch.Tensor:
        """query [Nb, dim_query]; kv [Na, dim_kv] with kv_block [Na] (block of each atom) and kv_valid [Na]
        (atoms that take part; None = all) -> [Nb, dim_out].

        Unmasked, every block is padded to `pad_to` [Nb] atoms (at least its own count), or, when None, to the
        largest block of the batch as ATOMICA pads."""
        nb, h = query.shape[0], self.num_heads
        q = self.query_proj(query).view(nb, h, -1)  # [Nb, h, d]
        k = self.key_proj(kv).view(kv.shape[0], h, -1)  # [Na, h, d]
        v = self.value_proj(kv).view(kv.shape[0], h, -1)
        score = (q[kv_block] * k).sum(-1) * self.scale  # [Na, h]
        if kv_valid is None:
            kv_valid = torch.ones_like(kv_block, dtype=torch.bool)
        score = score.masked_fill(~kv_valid.unsqueeze(1), float("-inf"))

        n_atoms = scatter_sum(kv_valid.long(), kv_block, nb)  # [Nb]
        peak = scatter_max(score.detach(), kv_block, nb)  # [Nb, h]
        if not masked:
            width = n_atoms.max() if pad_to is None else pad_to
            n_pad = (width - n_atoms).to(score.dtype).unsqueeze(1)  # [Nb, 1]
            pad_key = self.key_proj.bias.view(h, -1)  # key of a zero vector
            pad_score = (q * pad_key).sum(-1) * self.scale  # [Nb, h]
            peak = torch.where(n_pad > 0, torch.maximum(peak, pad_score.detach()), peak)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # blocks without atoms

        weight = torch.exp(score - peak[kv_block])  # [Na, h], unnormalised
        denom = scatter_sum(weight, kv_block, nb)  # [Nb, h]
        if not masked:
            pad_weight = n_pad * torch.exp(pad_score - peak)  # [Nb, h], all padding slots of a block together
            denom = denom + pad_weight
        # denom >= 1 for every block with something to attend to (its max term is exp(0)); 0 for empty blocks,
        # whose output stays 0
        denom = denom.clamp(min=1.0)
        weight = self.dropout(weight / denom[kv_block])
        out = scatter_sum(weight.unsqueeze(-1) * v, kv_block, nb)  # [Nb, h, d]
        if not masked:
            pad_value = self.value_proj.bias.view(1, h, -1)
            out = out + self.dropout(pad_weight / denom).unsqueeze(-1) * pad_value
        out = self.output_proj(out.reshape(nb, self.dim_out))
        return self.dropout(out)


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head self-attention with `mha`'s parameters; x [B, L, H], key_mask [B, L] (True = attend)."""
    b, n, hidden = x.shape
    h = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # [B, L, 3H]
    q, k, v = qkv.view(b, n, 3, h, hidden // h).permute(2, 0, 3, 1, 4)  # [B, h, L, d] each
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         dropout_p=mha.dropout if mha.training else 0.0)  # [B, h, L, d]
    out = out.transpose(1, 2).reshape(b, n, hidden)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


class AttentionPooling(nn.Module):
    """Item embedding from its blocks: layers of (self-attention, residual, LayerNorm), sum over blocks, Linear,
    L2 normalisation (ATOMICA's `AttentionPooling`; the `nn.MultiheadAttention` modules hold the parameters)."""

    def __init__(self, hidden_size: int, num_heads: int = 4, dropout: float = 0.0, num_layers: int = 4):
        super().__init__()
        self.attention_layers = nn.ModuleList(
            nn.MultiheadAttention(hidden_size, num_heads=num_heads, dropout=dropout, batch_first=True)
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.graph_repr_fc = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, block_repr: torch.Tensor, item: torch.Tensor, item_start: torch.Tensor, valid: torch.Tensor,
                n_items: int, max_len: int, masked: bool) -> torch.Tensor:
        """block_repr [n, H] of blocks stored item after item (item [n], item_start [n_items]); only `valid` [n]
        blocks are pooled -> [n_items, H].

        `max_len` (host integer) is the most valid blocks of one item: the padded length ATOMICA uses."""
        valid_long = valid.long()
        before = torch.cumsum(valid_long, 0) - valid_long  # valid blocks before each block
        slot = before - before[item_start][item]  # position among the valid blocks of its item
        slot = torch.where(valid, slot, torch.full_like(slot, max_len))  # others go to a spare column
        dense = block_repr.new_zeros(n_items, max_len + 1, block_repr.shape[1])
        dense[item, slot] = block_repr
        dense = dense[:, :max_len]  # [n_items, L, H], zero padded as in ATOMICA
        key_mask = None
        if masked:
            key_mask = torch.zeros(n_items, max_len + 1, dtype=torch.bool, device=item.device)
            key_mask[item, slot] = torch.ones_like(valid)  # a device value: no copy from the host
            key_mask = key_mask[:, :max_len]
            key_mask |= ~key_mask.any(dim=1, keepdim=True)  # an item with nothing to pool: avoid NaN rows
        for attn, norm in zip(self.attention_layers, self.norms):
            dense = norm(dense + self.dropout(_self_attention(attn, dense, key_mask)))
        rows = dense[item, slot.clamp(max=max(max_len - 1, 0))]  # [n, H]
        rows = torch.where(valid.unsqueeze(1), rows, torch.zeros_like(rows))
        graph_repr = scatter_sum(rows, item, n_items)  # [n_items, H]
        return F.normalize(self.graph_repr_fc(graph_repr), dim=-1)
