"""ATOMICA-Interface (`ProteinInterfaceModel`): contrastive alignment of a protein's embedding alone with the
embedding of its complex (symmetric NT-Xent, temperature 0.5)."""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Encoding
from .heads import relu_linear
from .prediction import PredictionModel


def contrastive_loss(z: torch.Tensor, z_aug: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Symmetric NT-Xent (SimCLR): each pair (z_i, z_aug_i) is positive, every other embedding of either view a
    negative.  z, z_aug [bs, H]."""
    z, z_aug = F.normalize(z, dim=1), F.normalize(z_aug, dim=1)
    off_diag = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)

    def one_side(a, b):
        ab = a @ b.t() / temperature  # [bs, bs]
        aa = (a @ a.t() / temperature)[off_diag].view(a.shape[0], -1)  # [bs, bs - 1]
        positive = torch.diag(ab)
        return -torch.log(torch.exp(positive) / (torch.exp(aa).sum(1) + torch.exp(ab).sum(1)))

    return torch.cat((one_side(z, z_aug), one_side(z_aug, z))).mean()


class ProteinInterfaceModel(nn.Module):
    """A frozen complex encoder and a trainable copy that sees the protein alone, each followed by an FFN."""

    def __init__(self, model: PredictionModel):
        super().__init__()
        self.temp = 0.5
        self.cmplx_model = model
        self.prot_model = deepcopy(model)
        self.cmplx_model.requires_grad_(False)
        h = model.hidden_size
        self.prot_ffn = relu_linear(h, h, h, h)
        self.cmplx_ffn = relu_linear(h, h, h, h)

    head_modules = ("prot_ffn", "cmplx_ffn")

    @property
    def hidden_size(self) -> int:
        return self.prot_model.hidden_size

    def get_config(self) -> dict:
        return {"model_type": type(self).__name__, "prot_model": self.prot_model.get_config()}

    @staticmethod
    def _graph_repr(model: PredictionModel, batch: dict) -> torch.Tensor:
        return model(batch["X"], batch["B"], batch["A"], batch["block_lengths"], batch["lengths"],
                     batch["segment_ids"]).graph_repr

    def forward(self, batch_cmplx: dict, batch_prot: dict) -> torch.Tensor:
        with torch.no_grad():
            cmplx = self._graph_repr(self.cmplx_model, batch_cmplx)
        prot = self._graph_repr(self.prot_model, batch_prot)
        cmplx = F.normalize(self.cmplx_ffn(cmplx), p=2, dim=-1)
        prot = F.normalize(self.prot_ffn(prot), p=2, dim=-1)
        return contrastive_loss(prot, cmplx, temperature=self.temp)

    def encode(self, batch: dict) -> Encoding:
        """Representations of the protein encoder (the one ATOMICA-Interface embeds with), in eval mode."""
        return self.prot_model.encode(batch)

    def infer(self, batch_prot: dict, extra_info: bool = False):
        self.eval()
        out = self.prot_model.encode(batch_prot)
        prot_repr = self.prot_ffn(out.graph_repr)
        return (prot_repr, out) if extra_info else prot_repr
