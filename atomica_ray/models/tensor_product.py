"""e3nn's fully connected tensor product with per-edge weights, computed as one batched matmul per output irrep.

For a path p = (input irrep l1 with multiplicity U, spherical harmonic l2, output irrep lo with multiplicity W)
e3nn computes (TensorProduct, 'uvw' connection, 'component' / 'element' normalisation)

    out[e, w, k] += a_p * sum_u weight_p[e, u, w] * T_p[e, u, k]
    T_p[e, u, k]  = sum_ij C(l1 l2 lo)[i, j, k] x[e, u, i] y[e, j]

with C the Wigner 3j symbols and a_p the path normalisation. Here all paths into one output irrep are stacked:
out_o[e] = weight_o[e]^T @ T_o[e], a [W, sum U] x [sum U, 2lo+1] matmul per edge. The per-edge weights come from
the rows of a Linear layer permuted (and scaled by a_p) once per call into that stacked order, one Linear per
output irrep. T is computed with one matmul per input l1: the outer product of all l1 inputs with all spherical
harmonics times a (block-sparse) matrix of every C(l1 . .) needed.

e3nn runs one einsum per path on strided weight slices; this does a handful of matmuls. It is the same function
(up to float rounding), which tests/test_models_properties.py checks against e3nn.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn


class StackedTensorProduct(nn.Module):
    """Execution plan for `tp` (an `o3.FullyConnectedTensorProduct` with `shared_weights=False` whose second input
    has multiplicity 1 per irrep, i.e. spherical harmonics). Holds only non-persistent buffers."""

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        irreps1, irreps2, irreps_out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        if any(mul != 1 for mul, _ in irreps2):
            raise ValueError("the second input must have multiplicity 1 (spherical harmonics)")
        self.in1 = [(mul, ir.l) for mul, ir in irreps1]
        self.out_blocks = [(mul, ir.dim) for mul, ir in irreps_out]
        y_start = [s.start for s in irreps2.slices()]

        # input irreps grouped by l1 (their rows stacked), and the (second input, output l) pairs each group needs
        self.groups: dict[int, list[int]] = {}  # l1 -> input irrep indices
        for i, (_, l1) in enumerate(self.in1):
            self.groups.setdefault(l1, []).append(i)
        needs: dict[int, list[tuple[int, int]]] = {l1: [] for l1 in self.groups}
        for ins in tp.instructions:
            key = (ins.i_in2, irreps_out[ins.i_out].ir.l)
            if key not in needs[self.in1[ins.i_in1][1]]:
                needs[self.in1[ins.i_in1][1]].append(key)
        self.group_columns: dict[int, list[tuple[int, int]]] = {}
        for l1, columns in needs.items():
            if not columns:
                continue
            self.group_columns[l1] = columns
            blocks = []
            for i2, lo in columns:  # C(l1 l2 lo) on the rows of the l2 harmonics, zero on the others
                l2 = irreps2[i2].ir.l
                block = torch.zeros(2 * l1 + 1, irreps2.dim, 2 * lo + 1)
                block[:, y_start[i2]:y_start[i2] + 2 * l2 + 1] = o3.wigner_3j(l1, l2, lo)
                blocks.append(block.reshape(-1, 2 * lo + 1))
            self.register_buffer(f"cg_{l1}", torch.cat(blocks, dim=1), persistent=False)  # [(2l1+1) D2, Q]

        # stacked order of the weights: output irrep, then path (instruction order), then (u, w) as e3nn stores
        offsets = torch.cumsum(torch.tensor([0] + [i.path_shape[0] * i.path_shape[1] * i.path_shape[2]
                                                   for i in tp.instructions]), 0).tolist()
        perm, scale = [], []
        self.paths = [[] for _ in irreps_out]  # per output irrep: (input irrep, second input irrep, lo)
        for i_out in range(len(irreps_out)):
            for ins, start, stop in zip(tp.instructions, offsets[:-1], offsets[1:]):
                if ins.i_out == i_out:
                    self.paths[i_out].append((ins.i_in1, ins.i_in2, irreps_out[i_out].ir.l))
                    perm.extend(range(start, stop))
                    scale.extend([ins.path_weight] * (stop - start))
        self.register_buffer("weight_perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("weight_scale", torch.tensor(scale, dtype=torch.get_default_dtype()), persistent=False)
        self.block_rows = [sum(self.in1[i1][0] for i1, _, _ in paths) * mul
                           for paths, (mul, _) in zip(self.paths, self.out_blocks)]
        self.weight_numel = tp.weight_numel

    def forward(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        """TP(x, y) with per-edge weights `linear(hidden)`.

        x [E, irreps_in1.dim], y [E, irreps_in2.dim], hidden [E, linear.in_features] -> [E, irreps_out.dim].
        Slices are taken with `split` (whose backward concatenates) rather than indexing (whose backward writes
        into zero tensors of the full size)."""
        e = x.shape[0]
        x_parts = x.split([mul * (2 * l1 + 1) for mul, l1 in self.in1], dim=1)
        pieces = {}  # (input irrep, second input irrep, lo) -> [E, U, 2lo+1]
        for l1, columns in self.group_columns.items():
            members = self.groups[l1]
            xs = [x_parts[i].reshape(e, self.in1[i][0], 2 * l1 + 1) for i in members]
            xg = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)  # [E, U_l1, 2l1+1]
            outer = (xg.unsqueeze(-1) * y[:, None, None, :]).reshape(e, xg.shape[1], -1)  # [E, U_l1, (2l1+1) D2]
            projected = outer @ getattr(self, f"cg_{l1}")  # [E, U_l1, Q]
            for (i2, lo), part in zip(columns, projected.split([2 * lo + 1 for _, lo in columns], dim=2)):
                for i1, piece in zip(members, part.split([self.in1[i][0] for i in members], dim=1)):
                    pieces[(i1, i2, lo)] = piece

        w_all = linear.weight.index_select(0, self.weight_perm) * self.weight_scale.unsqueeze(1)
        b_all = linear.bias.index_select(0, self.weight_perm) * self.weight_scale
        outs = []
        for (mul_out, dim_out), paths, w, b in zip(self.out_blocks, self.paths, w_all.split(self.block_rows),
                                                   b_all.split(self.block_rows)):
            if not paths:
                outs.append(x.new_zeros(e, mul_out * dim_out))
                continue
            t = [pieces[path] for path in paths]
            t = t[0] if len(t) == 1 else torch.cat(t, dim=1)  # [E, sum U, 2lo+1]
            weight = nn.functional.linear(hidden, w, b).view(e, t.shape[1], mul_out)  # [E, sum U, W]
            outs.append(torch.bmm(weight.transpose(1, 2), t).reshape(e, mul_out * dim_out))  # [E, W * (2lo+1)]
        return torch.cat(outs, dim=1)
