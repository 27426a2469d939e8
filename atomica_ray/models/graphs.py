"""Graphs of ATOMICA's two levels: k-nearest-neighbour edges inside each item and the torsion-bond radius graph.

ATOMICA (`models/tools.py`, `KNNBatchEdgeConstructor`) builds, inside every item of a batch and without self loops:
  0 intra   k nearest nodes of the same segment, neither end global
  1 inter   k nearest nodes of the other segment(s), neither end global
  2 global-normal   every pair of one segment with at least one global end (both directions)
  3 global-global   every pair of global nodes of the item
Edges are `[receiver, sender]`: messages flow from row 1 to row 0. Order: type, then receiver, then distance
(k-NN) or sender index (global edges), which is the order ATOMICA produces.

Nodes of a batch are stored item after item. Candidates of node i are the nodes of its own item, laid out as a
[rows, largest item] tile; tiles are processed in chunks of rows so that memory is bounded by `max_tile` elements
plus the edges, whatever the item sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Elements of one candidate tile (rows x largest item). 2**24 floats = 64 MiB per tile tensor.
DEFAULT_MAX_TILE = 1 << 24


@dataclass
class ItemLayout:
    """Where each item's nodes lie in a flat, item-sorted node array."""

    item: torch.Tensor  # [N] item of each node, non-decreasing
    start: torch.Tensor  # [n_items] index of each item's first node
    size: torch.Tensor  # [n_items] nodes per item
    max_size: int  # largest item (host integer: sizes the candidate tiles)

    @classmethod
    def from_sizes(cls, size: torch.Tensor, n_nodes: int, max_size: int) -> "ItemLayout":
        """`size` [n_items] on the device; `n_nodes`, `max_size` host integers (no device sync here)."""
        start = torch.cumsum(size, 0) - size
        item = torch.repeat_interleave(torch.arange(size.shape[0], device=size.device), size, output_size=n_nodes)
        return cls(item=item, start=start, size=size, max_size=max_size)


def _row_chunks(n_rows: int, width: int, max_tile: int):
    rows = max(1, max_tile // max(width, 1))
    for r0 in range(0, n_rows, rows):
        yield r0, min(n_rows, r0 + rows)


def _candidates(rows: torch.Tensor, row_item: torch.Tensor, layout: ItemLayout):
    """Candidate tile of some rows: node index of every slot of the row's item, and which slots exist."""
    local = torch.arange(layout.max_size, device=rows.device)  # [M]
    start = layout.start[row_item].unsqueeze(1)  # [R, 1]
    valid = local.unsqueeze(0) < layout.size[row_item].unsqueeze(1)  # [R, M]
    cand = torch.where(valid, start + local.unsqueeze(0), start)  # [R, M], invalid slots point at a real node
    return cand, valid


def _topk(cand: torch.Tensor, dist: torch.Tensor, allowed: torch.Tensor, k: int):
    """The k nearest allowed candidates of each row, nearest first, ties to the lower node index:
    (node [R, k], kept [R, k]).

    torch.topk breaks distance ties (common in ideal or rounded coordinates) by its algorithm of the moment, which
    changes with the tile's width, i.e. with the largest item of the batch, so an item's graph would depend on its
    batch. Ranking by one unique key, the float's bits (monotonic for non-negative floats) then the candidate's
    slot, makes the choice a function of the item alone; it agrees with ATOMICA wherever ATOMICA's is not a tie."""
    dist = dist.float().masked_fill(~allowed, float("inf"))  # [R, M]
    slots = torch.arange(dist.shape[1], device=dist.device)
    key = (dist.view(torch.int32).long() << 32) | slots  # [R, M] int64: distance first, then slot
    ranked = torch.topk(key, min(k, dist.shape[1]), dim=1, largest=False).values  # [R, k], ascending
    slot = ranked & 0xFFFFFFFF
    return torch.gather(cand, 1, slot), torch.gather(dist, 1, slot) < float("inf")


def _kept_edges(rows: torch.Tensor, sections: list[tuple[torch.Tensor, torch.Tensor]]):
    """Edges (row, node) of every kept slot of the `sections` [(node [R, C], kept [R, C]), ...], section after
    section, row-major within one, and the section of each edge: `([2, E], [E])`. One `nonzero` for all of them:
    its size is the one host sync."""
    idx = torch.cat([kept.reshape(-1) for _, kept in sections]).nonzero().squeeze(1)  # [E] flat slot
    src, dst, section = torch.zeros_like(idx), torch.zeros_like(idx), torch.zeros_like(idx)
    start = 0
    for s, (node, kept) in enumerate(sections):
        end = start + kept.numel()
        if end > start:
            inside = (idx >= start) & (idx < end)
            local = (idx - start).clamp_(0, end - start - 1)  # [E], valid only where inside
            src = torch.where(inside, rows[local // node.shape[1]], src)
            dst = torch.where(inside, node.reshape(-1)[local], dst)
            section = torch.where(inside, s, section)
        start = end
    return torch.stack([src, dst]), section


@torch.no_grad()
def knn_graph(
    pos: torch.Tensor,  # [N, 3]
    segment: torch.Tensor,  # [N]
    is_global: torch.Tensor,  # [N] bool
    layout: ItemLayout,
    k: int,
    global_edges: bool,
    max_tile: int = DEFAULT_MAX_TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATOMICA's k-NN graph of one level: `(edges [2, E], edge_type [E])`, types 0-3 as in the module docstring.

    `global_edges=False` returns intra and inter edges only.
    """
    n = pos.shape[0]
    edges, types = [], []
    for r0, r1 in _row_chunks(n, layout.max_size, max_tile):
        rows = torch.arange(r0, r1, device=pos.device)  # [R]
        cand, valid = _candidates(rows, layout.item[rows], layout)  # [R, M]
        pair = valid & (cand != rows.unsqueeze(1))
        # same formula as ATOMICA (norm of receiver - sender), so k-NN ties resolve alike
        dist = torch.linalg.vector_norm(pos[rows].unsqueeze(1) - pos[cand], dim=-1)  # [R, M]
        same_seg = segment[rows].unsqueeze(1) == segment[cand]
        g_row, g_col = is_global[rows].unsqueeze(1), is_global[cand]
        normal = pair & ~(g_row | g_col)
        # the section order is the edge type, 0-3 as in the module docstring
        sections = [_topk(cand, dist, normal & same_seg, k), _topk(cand, dist, normal & ~same_seg, k)]
        if global_edges:
            sections += [(cand, pair & same_seg & (g_row | g_col)), (cand, pair & g_row & g_col)]
        e, t = _kept_edges(rows, sections)
        edges.append(e)
        types.append(t)
    if len(edges) == 1:
        return edges[0], types[0]
    edges, types = torch.cat(edges, dim=1), torch.cat(types)
    order = torch.sort(types, stable=True).indices  # chunks: type-major again (stable: rows stay ascending)
    return edges[:, order], types[order]


@torch.no_grad()
def radius_graph(
    centers: torch.Tensor,  # [C, 3]
    center_item: torch.Tensor,  # [C] item of each center
    pos: torch.Tensor,  # [N, 3] item-sorted nodes
    layout: ItemLayout,
    radius: float,
    max_neighbors: int,
    max_tile: int = DEFAULT_MAX_TILE,
) -> torch.Tensor:
    """Nodes of the same item strictly within `radius` of each center, at most `max_neighbors` of them, the first
    ones by node index (torch_cluster's `radius` on GPU, which ATOMICA's torsion head uses).

    Returns `[2, E]`: row 0 the center, row 1 the node; center-major, node index ascending.
    """
    out = []
    for r0, r1 in _row_chunks(centers.shape[0], layout.max_size, max_tile):
        rows = torch.arange(r0, r1, device=pos.device)
        cand, valid = _candidates(rows, center_item[rows], layout)  # [R, M]
        sq = (pos[cand] - centers[rows].unsqueeze(1)).pow(2).sum(-1)  # [R, M] squared distance
        near = valid & (sq < radius * radius)
        near &= torch.cumsum(near, dim=1) <= max_neighbors
        out.append(_kept_edges(rows, [(cand, near)])[0])
    if not out:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    return torch.cat(out, dim=1)
