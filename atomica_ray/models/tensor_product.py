"""e3nn's fully connected tensor product with per-edge weights, computed as one batched matmul per output irrep.

For a path p = (input irrep l1 with multiplicity U, spherical harmonic l2, output irrep lo with multiplicity W)
e3nn computes (TensorProduct, 'uvw' connection, 'component' / 'element' normalisation)

    out[e, w, k] += a_p * sum_u weight_p[e, u, w] * T_p[e, u, k]
    T_p[e, u, k]  = sum_ij C(l1 l2 lo)[i, j, k] x[e, u, i] y[e, j]

with C the Wigner 3j symbols and a_p the path normalisation. Here all paths into one output irrep are stacked:
out_o[e] = weight_o[e]^T @ T_o[e], a [W, sum U] x [sum U, 2lo+1] matmul per edge. The per-edge weights come from
the rows of a Linear layer permuted (and scaled by a_p) once per call into that stacked order, one Linear per
output irrep; T is computed once per (l1, l2) for every output lo together.

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
        self.in1_slices = [(s.start, mul, ir.l) for s, (mul, ir) in zip(irreps1.slices(), irreps1)]
        self.in2_slices = [(s.start, ir.l) for s, (_, ir) in zip(irreps2.slices(), irreps2)]
        self.out_blocks = [(mul, ir.dim) for mul, ir in irreps_out]

        # input irreps grouped by l: rows of x for one l are stacked so that one C(l1 l2 .) serves them all
        self.l1_groups: dict[int, list[int]] = {}  # l1 -> input irrep indices, in order
        for i, (_, _, l1) in enumerate(self.in1_slices):
            self.l1_groups.setdefault(l1, []).append(i)
        row_of = {}  # input irrep index -> first row inside its l-group
        self.group_rows: dict[int, list[tuple[int, int]]] = {}  # l1 -> (first row, rows) of each member
        for l1, members in self.l1_groups.items():
            row = 0
            for i in members:
                row_of[i] = row
                self.group_rows.setdefault(l1, []).append((row, self.in1_slices[i][1]))
                row += self.in1_slices[i][1]

        # per (l1, l2): every output l reachable from a path, concatenated along the component axis
        weight_offsets, offset = [], 0
        for ins in tp.instructions:
            weight_offsets.append(offset)
            offset += ins.path_shape[0] * ins.path_shape[1] * ins.path_shape[2]
        # keyed by (l1, index of the irrep of the second input): it may repeat an l (torsion head)
        pair_outputs: dict[tuple[int, int], list[int]] = {}
        for ins in tp.instructions:
            l1 = self.in1_slices[ins.i_in1][2]
            lo = irreps_out[ins.i_out].ir.l
            outs = pair_outputs.setdefault((l1, ins.i_in2), [])
            if lo not in outs:
                outs.append(lo)
        self.pairs = []  # (l1, i2, buffer name, {lo: component offset})
        for (l1, i2), outs in sorted(pair_outputs.items()):
            l2 = self.in2_slices[i2][1]
            blocks, k_off, k0 = [], {}, 0
            for lo in outs:
                blocks.append(o3.wigner_3j(l1, l2, lo).reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * lo + 1))
                k_off[lo] = k0
                k0 += 2 * lo + 1
            name = f"cg_{l1}_{i2}"
            self.register_buffer(name, torch.cat(blocks, dim=1), persistent=False)  # [(2l1+1)(2l2+1), sum 2lo+1]
            self.pairs.append((l1, i2, name, k_off))

        # stacked order of the weights: output irrep, then path (instruction order), then (u, w) as e3nn stores
        perm, scale = [], []
        self.paths_by_output: list[list[tuple]] = [[] for _ in irreps_out]
        for ins, w_off in zip(tp.instructions, weight_offsets):
            self.paths_by_output[ins.i_out].append((ins, w_off))
        for paths in self.paths_by_output:
            for ins, w_off in paths:
                n = ins.path_shape[0] * ins.path_shape[1] * ins.path_shape[2]
                perm.extend(range(w_off, w_off + n))
                scale.extend([ins.path_weight] * n)
        self.register_buffer("weight_perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("weight_scale", torch.tensor(scale, dtype=torch.get_default_dtype()), persistent=False)
        self.path_rows = [
            [(self.in1_slices[ins.i_in1][2], ins.i_in2, irreps_out[ins.i_out].ir.l, row_of[ins.i_in1],
              ins.path_shape[0]) for ins, _ in paths]
            for paths in self.paths_by_output
        ]
        self.weight_numel = tp.weight_numel

    def _block_weights(self, linear: nn.Linear) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Rows of `linear` (the per-edge weight MLP's last layer) for each output irrep, in stacked order and
        scaled by the path normalisation."""
        w = linear.weight.index_select(0, self.weight_perm) * self.weight_scale.unsqueeze(1)
        b = linear.bias.index_select(0, self.weight_perm) * self.weight_scale
        out, row = [], 0
        for rows, (mul_out, _) in zip(self.path_rows, self.out_blocks):
            n = sum(n_u for *_, n_u in rows) * mul_out
            out.append((w[row:row + n], b[row:row + n]) if n else None)
            row += n
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        """TP(x, y) with per-edge weights `linear(hidden)`.

        x [E, irreps_in1.dim], y [E, irreps_in2.dim], hidden [E, linear.in_features] -> [E, irreps_out.dim].
        Slices are taken with `split` (whose backward concatenates) rather than indexing (whose backward writes
        into zero tensors of the full size)."""
        e = x.shape[0]
        x_parts = x.split([mul * (2 * l1 + 1) for _, mul, l1 in self.in1_slices], dim=1)
        y_parts = y.split([2 * l2 + 1 for _, l2 in self.in2_slices], dim=1)
        groups = {}
        for l1, members in self.l1_groups.items():
            parts = [x_parts[i].reshape(e, self.in1_slices[i][1], 2 * l1 + 1) for i in members]
            groups[l1] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [E, U_l1, 2l1+1]
        pieces = {}  # (l1, i2, first row of the input irrep, lo) -> [E, U_p, 2lo+1]
        for l1, i2, name, k_off in self.pairs:
            xg, yg = groups[l1], y_parts[i2]
            outer = (xg.unsqueeze(-1) * yg[:, None, None, :]).reshape(e, xg.shape[1], -1)  # [E, U, (2l1+1)(2l2+1)]
            projected = outer @ getattr(self, name)  # [E, U_l1, sum 2lo+1]
            los = list(k_off)
            by_lo = projected.split([2 * lo + 1 for lo in los], dim=2)
            row_sizes = self.group_rows[l1]
            for lo, part in zip(los, by_lo):
                for (row, n_u), piece in zip(row_sizes, part.split([n for _, n in row_sizes], dim=1)):
                    pieces[(l1, i2, row, lo)] = piece

        outs = []
        for (mul_out, dim_out), rows, wb in zip(self.out_blocks, self.path_rows, self._block_weights(linear)):
            if wb is None:
                outs.append(x.new_zeros(e, mul_out * dim_out))
                continue
            t = [pieces[(l1, i2, row, lo)] for l1, i2, lo, row, _ in rows]
            t = t[0] if len(t) == 1 else torch.cat(t, dim=1)  # [E, sum U, 2lo+1]
            w = nn.functional.linear(hidden, *wb).view(e, t.shape[1], mul_out)  # [E, sum U, W]
            outs.append(torch.bmm(w.transpose(1, 2), t).reshape(e, mul_out * dim_out))  # [E, W * (2lo+1)]
        return torch.cat(outs, dim=1)
