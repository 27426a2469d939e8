"""e3nn's fully connected tensor product with per-edge weights, computed as one batched matmul per output irrep.

For a path p = (input irrep l1 with multiplicity U, spherical harmonic l2, output irrep lo with multiplicity W)
e3nn computes (TensorProduct, 'uvw' connection, 'component' / 'element' normalisation)

    out[e, w, k] += a_p * sum_u weight_p[e, u, w] * T_p[e, u, k],   T_p[e, u, k] = sum_ij C(l1 l2 lo)[i, j, k] x[e, u, i] y[e, j]

with C the Wigner 3j symbols and a_p the path normalisation. Here all paths into one output irrep are stacked:
out_o[e] = weight_o[e]^T @ T_o[e], a [W, sum U] x [sum U, 2lo+1] matmul per edge. The per-edge weights come from
a Linear layer whose rows are permuted (and scaled by a_p) once per call so that its output is already in that
stacked order; T is computed once per (l1, l2) for every output lo together.

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
        for l1, members in self.l1_groups.items():
            row = 0
            for i in members:
                row_of[i] = row
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

    def stacked_linear(self, h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        """`linear(h)` with output columns in stacked order and scaled by the path normalisation.  # [E, numel]"""
        w = linear.weight.index_select(0, self.weight_perm) * self.weight_scale.unsqueeze(1)
        b = linear.bias.index_select(0, self.weight_perm) * self.weight_scale
        return nn.functional.linear(h, w, b)

    def forward(self, x: torch.Tensor, y: torch.Tensor, stacked_weight: torch.Tensor) -> torch.Tensor:
        """x [E, irreps_in1.dim], y [E, irreps_in2.dim], stacked_weight [E, weight_numel] from `stacked_linear`."""
        e = x.shape[0]
        groups = {}
        for l1, members in self.l1_groups.items():
            parts = [x.narrow(1, self.in1_slices[i][0], self.in1_slices[i][1] * (2 * l1 + 1))
                     .reshape(e, self.in1_slices[i][1], 2 * l1 + 1) for i in members]
            groups[l1] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [E, U_l1, 2l1+1]
        projected = {}  # (l1, i2) -> [E, U_l1, sum 2lo+1]
        for l1, i2, name, k_off in self.pairs:
            start, l2 = self.in2_slices[i2]
            xg, yg = groups[l1], y.narrow(1, start, 2 * l2 + 1)
            outer = (xg.unsqueeze(-1) * yg[:, None, None, :]).reshape(e, xg.shape[1], -1)  # [E, U, (2l1+1)(2l2+1)]
            projected[(l1, i2)] = (outer @ getattr(self, name), k_off)

        outs, col = [], 0
        for (mul_out, dim_out), rows in zip(self.out_blocks, self.path_rows):
            if not rows:
                outs.append(x.new_zeros(e, mul_out * dim_out))
                continue
            t = []
            for l1, i2, lo, row, n_u in rows:
                p, k_off = projected[(l1, i2)]
                t.append(p[:, row:row + n_u, k_off[lo]:k_off[lo] + dim_out])  # [E, U_p, 2lo+1]
            t = t[0] if len(t) == 1 else torch.cat(t, dim=1)  # [E, sum U, 2lo+1]
            n = t.shape[1] * mul_out
            w = stacked_weight[:, col:col + n].reshape(e, t.shape[1], mul_out)  # [E, sum U, W]
            col += n
            outs.append(torch.bmm(w.transpose(1, 2), t).reshape(e, mul_out * dim_out))  # [E, W * (2lo+1)]
        return torch.cat(outs, dim=1)
