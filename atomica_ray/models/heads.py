"""Small MLP heads in ATOMICA's layouts (the Sequential indices are part of the checkpoint keys)."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU}


def activation_name(nonlinearity) -> str:
    """'relu' | 'gelu' | 'elu' from a name, an nn.Module instance or class (ATOMICA passes `torch.nn.ReLU()`).

    ATOMICA records GELU / ELU heads as `null` in config.json (atomica-reference.md §5 item 5); such a config
    needs the activation given explicitly."""
    if isinstance(nonlinearity, str) and nonlinearity.lower() in ACTIVATIONS:
        return nonlinearity.lower()
    for name, cls in ACTIVATIONS.items():
        if nonlinearity is cls or isinstance(nonlinearity, cls):
            return name
    raise ValueError(
        f"nonlinearity must be one of {sorted(ACTIVATIONS)} (or the torch.nn module), got {nonlinearity!r}; "
        "ATOMICA writes null for GELU / ELU heads, so pass nonlinearity='gelu' or 'elu' when loading such a config"
    )


def act_dropout_linear(act: str, in_size: int, hidden: int, out_size: int, n_layers: int, dropout: float):
    """[act, Dropout, Linear] repeated: in -> hidden (x n_layers - 1, at least once) -> out.

    ATOMICA's prediction / projector FFN; it always has at least two Linear layers."""
    sizes = [in_size] + [hidden] * max(n_layers - 1, 1) + [out_size]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [ACTIVATIONS[act](), nn.Dropout(dropout), nn.Linear(a, b)]
    return nn.Sequential(*layers)


def relu_linear(*sizes: int) -> nn.Sequential:
    """[ReLU, Linear] per consecutive pair of sizes."""
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.ReLU(), nn.Linear(a, b)]
    return nn.Sequential(*layers)


def noise_scale_ffn(hidden: int, dropout: float) -> nn.Sequential:
    """Scalar scale of a denoising prediction from a representation: ReLU, Dropout, Linear, ReLU, Dropout, Linear."""
    return nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, 1, bias=False))


def masked_block_ffn(hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    """Logits of the masked block's type from its representation."""
    return nn.Sequential(
        nn.ReLU(), nn.Linear(hidden, hidden), nn.Dropout(dropout),
        nn.ReLU(), nn.Linear(hidden, n_classes), nn.Dropout(dropout),
        nn.ReLU(), nn.Linear(n_classes, n_classes), nn.Dropout(dropout),
    )
