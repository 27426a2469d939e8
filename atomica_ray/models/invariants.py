"""Rotation invariants of an encoder's full node irreps: the raw material of the z representations.

After its last layer a node carries (models/interaction.py; fewer than 3 layers carry a prefix of it)

    ns x0e + nv x1o + nv x2e + nv x1e + nv x2o + ns x0o        (ns = hidden size, nv = ns // 2)

and the read-out keeps only the scalars. The invariants kept here (current ATOMICA's `IrrepInvariants`):

    scalars   the 0e and 0o channels as they are                                  [N, n_scalars]
    gram      per l > 0 group of m channels x_1..x_m (each 2l+1 wide): the inner
              products <x_i, x_j>, i <= j, upper triangle row by row               [N, sum m (m + 1) / 2]

Degrees are never mixed: an inner product of two degrees is not invariant (it would need a Clebsch-Gordan
coupling). Within a degree the Gram entries are the complete set of degree-2 invariants; the diagonal holds the
squared channel norms. Computed in float32 whatever the autocast precision.
"""

from __future__ import annotations

import torch
from e3nn import o3


class IrrepInvariants:
    """Scalars and within-degree Gram entries of tensors laid out as `irreps`."""

    def __init__(self, irreps: o3.Irreps | str):
        self.irreps = o3.Irreps(irreps)
        self.scalar_slices: list[slice] = []
        self.groups: list[tuple[slice, int, int]] = []  # (columns, multiplicity, 2l + 1) of each l > 0 group
        for (mul, ir), columns in zip(self.irreps, self.irreps.slices()):
            if ir.l == 0:
                self.scalar_slices.append(columns)
            else:
                self.groups.append((columns, mul, ir.dim))
        self._triu: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def of(cls, encoder) -> "IrrepInvariants":
        """From an `ATOMICAEncoder` (or its `InteractionModule`): the layout its forward returns."""
        return cls(getattr(encoder, "encoder", encoder).irreps_out)

    @property
    def n_scalars(self) -> int:
        return sum(s.stop - s.start for s in self.scalar_slices)

    @property
    def n_gram(self) -> int:
        return sum(mul * (mul + 1) // 2 for _, mul, _ in self.groups)

    @property
    def width(self) -> int:
        """Width of `descriptor`: scalars + Gram entries."""
        return self.n_scalars + self.n_gram

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.irreps.dim:
            raise ValueError(f"node irreps are {x.shape[-1]} wide, but the layout {self.irreps} is {self.irreps.dim}")
        return x.float()

    def scalars(self, x: torch.Tensor) -> torch.Tensor:
        """The 0e and 0o channels.  # [N, n_scalars]"""
        x = self._check(x)
        return torch.cat([x[:, s] for s in self.scalar_slices], dim=1)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Within-degree inner products of the channels, upper triangles.  # [N, n_gram]"""
        x = self._check(x)
        parts = []
        for columns, mul, dim in self.groups:
            channels = x[:, columns].reshape(-1, mul, dim)  # [N, m, 2l+1]
            products = torch.bmm(channels, channels.transpose(1, 2))  # [N, m, m]
            rows, cols = self._upper(mul, x.device)
            parts.append(products[:, rows, cols])  # [N, m (m + 1) / 2]
        if not parts:
            return x.new_zeros(x.shape[0], 0)
        return torch.cat(parts, dim=1)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """[scalars, gram]: z_atom of atom irreps.  # [N, width]"""
        return torch.cat([self.scalars(x), self.gram(x)], dim=1)

    def _upper(self, mul: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (mul, str(device))
        if key not in self._triu:
            rows, cols = torch.triu_indices(mul, mul, device=device)
            self._triu[key] = (rows, cols)
        return self._triu[key]
