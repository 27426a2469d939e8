"""The eight named representations of current ATOMICA (`atomica.representations`), from one forward pass.

    name         level      what it is                                                      width (released)
    h_atom       atom       the atom encoder's read-out of the 0e/0o channels, unit norm   atom_hidden   (32)
    h_block      block      the block encoder's read-out, unit norm                        block_hidden  (32)
    h_graph      graph      learned attention pooling over the item's blocks               block_hidden  (32)
    h_interface  interface  the same attention pooling over one segment's blocks           block_hidden  (32)
    z_atom       atom       [0e and 0o channels, within-degree Gram entries of the l > 0     (608)
                            channels] of the atom's full irreps (models/invariants.py)
    z_block      block      [h_block, Gram entries of the block's own irreps,               (1792 = 32 + 544 +
                            mean and s.d. of z_atom over the block's atoms]                   2 x 608)
    z_graph      graph      z_block pooled over the item's blocks (`pool`)                  3 x or 1 x z_block
    z_interface  interface  z_block pooled over one segment's blocks (`pool`, `segment`)    3 x or 1 x z_block

h keeps the scalar channels only; z adds what the l > 0 channels say about geometry, as invariants a plain head
can read (the paper's frozen benchmarks train on z). The interface level pools one molecule's blocks after
message passing over the whole complex, so it still knows the partner; `segment` says which molecule (0 the
receptor, 1 the ligand or partner). h_interface pools the segment's blocks including its global block, as ATOMICA
does. z_atom is built from the raw channels, h_atom from their projection: z_atom is not h_atom plus invariants,
while z_block does begin with h_block.

Pooling of z_graph / z_interface has no default, on purpose (the two are not comparable):
    mean_std_global            [mean, population s.d., first global block of the item] of the non-global
                               blocks: 3 x z_block wide; to train a head on top
    mean_component_normalized  the mean, with z_block's three parts (h_block, Gram, atoms) L2-normalised
                               one by one: 1 x z_block wide; to compare frozen vectors with a cosine (the parts'
                               norms differ by about 10x, so without it one part decides every cosine)

Every vector is the one the item has alone in a batch, whatever else its batch holds (`batch_independent` in
models/backbone.py): with ATOMICA's numerics, ATOMICA at batch size 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from atomica_ray.models.backbone import AtomicaBackbone
from atomica_ray.models.invariants import IrrepInvariants
from atomica_ray.models.scatter import scatter_mean

POOLING = ("mean_std_global", "mean_component_normalized")
LEVELS = ("atom", "block", "graph", "interface")


@dataclass(frozen=True)
class Representation:
    name: str
    level: str  # atom | block | graph | interface
    family: str  # h | z
    description: str

    @property
    def needs_pool(self) -> bool:
        return self.family == "z" and self.level in ("graph", "interface")

    @property
    def needs_segment(self) -> bool:
        return self.level == "interface"


REPRESENTATIONS: dict[str, Representation] = {r.name: r for r in (
    Representation("h_atom", "atom", "h", "atom encoder read-out (scalar channels), unit norm"),
    Representation("h_block", "block", "h", "block encoder read-out (scalar channels), unit norm; compare residues"),
    Representation("h_graph", "graph", "h", "learned attention pooling of the item's blocks; visualise, browse"),
    Representation("h_interface", "interface", "h",
                   "attention pooling of one segment's blocks (--segment); compare one side of complexes"),
    Representation("z_atom", "atom", "z", "0e/0o channels + within-degree Gram entries of the atom's irreps"),
    Representation("z_block", "block", "z",
                   "[h_block, Gram entries of the block's irreps, mean and s.d. of z_atom over its atoms]; "
                   "per-residue heads and probes"),
    Representation("z_graph", "graph", "z", "z_block pooled over the item's blocks (--pool); heads on complexes"),
    Representation("z_interface", "interface", "z",
                   "z_block pooled over one segment's blocks (--pool, --segment); ATOMICAScore's read-out"),
)}

# older names, still accepted; a column keeps the name it was asked for
ALIASES = {
    "atom_embedding": "h_atom", "block_embedding": "h_block", "graph_embedding": "h_graph",  # atomica-ray embed
    "unit_repr": "h_atom", "block_repr": "h_block", "graph_repr": "h_graph",  # model attributes
    "atom_invariant_repr": "z_atom", "block_invariant_repr": "z_block", "graph_invariant_repr": "z_graph",
}


def canonical(name: str) -> str:
    """The representation a name (or alias) stands for; KeyError naming the choices otherwise."""
    if name in REPRESENTATIONS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise KeyError(f"unknown representation {name!r}; choose from {', '.join(REPRESENTATIONS)} "
                   f"(or the older names {', '.join(ALIASES)})")


def parse(text: str) -> list[tuple[str, str]]:
    """'h_block,z_graph,...' -> [(column, representation)], in order, without repeats."""
    columns: list[tuple[str, str]] = []
    for name in (n.strip() for n in text.replace(" ", ",").split(",")):
        if name and name not in [c for c, _ in columns]:
            columns.append((name, canonical(name)))
    if not columns:
        raise ValueError("--representations is empty")
    return columns


def check_options(names, pool: str | None, segment: int | None) -> None:
    """Refuse a pooling / segment that the names need and lack (there is deliberately no default pooling)."""
    specs = [REPRESENTATIONS[canonical(n)] for n in names]
    if pool is not None and pool not in POOLING:
        raise ValueError(f"--pool {pool!r}: choose {' or '.join(POOLING)}")
    pooled = [s.name for s in specs if s.needs_pool]
    if pooled and pool is None:
        raise ValueError(f"{', '.join(pooled)} need --pool: mean_std_global to train a head on the vectors, "
                         "mean_component_normalized to compare them with a cosine (there is no default: the two "
                         "are not comparable)")
    interface = [s.name for s in specs if s.needs_segment]
    if interface and segment is None:
        raise ValueError(f"{', '.join(interface)} need --segment: 0 (receptor) or 1 (ligand or partner)")
    if isinstance(segment, int) and segment not in (0, 1):
        raise ValueError(f"--segment {segment}: ATOMICA items have segments 0 and 1")


# --- the model's side ------------------------------------------------------------------------------------------

def encoder_of(model) -> AtomicaBackbone:
    """The encoder that embeds: the model itself, or the protein encoder of a ProteinInterfaceModel."""
    if isinstance(model, AtomicaBackbone):
        return model
    inner = getattr(model, "prot_model", None)
    if isinstance(inner, AtomicaBackbone):
        return inner
    raise TypeError(f"{type(model).__name__} has no ATOMICA encoder to take representations from")


def invariants(model: AtomicaBackbone) -> tuple[IrrepInvariants, IrrepInvariants]:
    """(atom level, block level) invariants of this model's irreps layouts (cached on the model)."""
    cached = model.__dict__.get("_representation_invariants")
    if cached is None:
        cached = (IrrepInvariants.of(model.encoder), IrrepInvariants.of(model.top_encoder))
        model.__dict__["_representation_invariants"] = cached
    return cached


def component_widths(model: AtomicaBackbone) -> dict[str, int]:
    """Widths of z_block's three parts, in order (what mean_component_normalized normalises one by one)."""
    atom, block = invariants(model)
    return {"h_block": model.top_encoder.encoder.ns, "gram": block.n_gram, "atom": 2 * atom.width}


def widths(model) -> dict[str, int | tuple[int, int]]:
    """Width of every representation for this model; pooled z: (mean_std_global, mean_component_normalized)."""
    enc = encoder_of(model)
    z_block = sum(component_widths(enc).values())
    h = enc.top_encoder.encoder.ns
    return {"h_atom": enc.encoder.encoder.ns, "h_block": h, "h_graph": h, "h_interface": h,
            "z_atom": invariants(enc)[0].width, "z_block": z_block,
            "z_graph": (3 * z_block, z_block), "z_interface": (3 * z_block, z_block)}


def width(model, name: str, pool: str | None) -> int:
    w = widths(model)[canonical(name)]
    if isinstance(w, tuple):
        return w[POOLING.index(pool)]
    return w


def describe(model=None) -> str:
    """What each name is, with its width for `model` (or without widths)."""
    sizes = widths(model) if model is not None else {}
    rows = [("name", "level", "width", "what it is")]
    for r in REPRESENTATIONS.values():
        w = sizes.get(r.name, "?")
        if isinstance(w, tuple):
            w = f"{w[0]} | {w[1]}"
        rows.append((r.name, r.level, str(w), r.description))
    pad = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(pad[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * p for p in pad) + "  " + "-" * 10)
    lines += ["", "z_graph / z_interface widths: --pool mean_std_global | mean_component_normalized.",
              "older names accepted: " + ", ".join(f"{a} = {c}" for a, c in ALIASES.items())]
    if model is not None:
        enc = encoder_of(model)
        lines.append(f"global_message_passing={enc.global_message_passing}: h_graph "
                     f"{'includes' if enc.global_message_passing else 'excludes'} the global blocks.")
    return "\n".join(lines)


@contextlib.contextmanager
def batch_independent(model: AtomicaBackbone):
    """Every item computed as it is alone in a batch (models/backbone.py), for the duration."""
    before = model.batch_independent
    model.batch_independent = True
    try:
        yield model
    finally:
        model.batch_independent = before


def compute(model, batch: dict, names, *, pool: str | None = None, segment: int | torch.Tensor | None = None,
            pad_width: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The named representations (canonical names) of a collated batch, rows item after item:
    atom level [Na, w], block level [Nb, w], graph and interface levels [n_items, w]. float32.

    `segment`: the interface level's segment, one for all items or one per item [n_items]; `pad_width`: see
    `AtomicaBackbone._encode`."""
    names = {canonical(n) for n in names}
    check_options(names, pool, segment)
    enc_model = encoder_of(model)
    want_z = any(REPRESENTATIONS[n].family == "z" for n in names)
    with batch_independent(enc_model):
        enc = enc_model.encode(batch, irreps=want_z, pad_width=pad_width, graph="h_graph" in names)
    device = enc.block_repr.device
    B = torch.as_tensor(batch["B"], device=device)
    segment_ids = torch.as_tensor(batch["segment_ids"], device=device)
    n_items = int(torch.as_tensor(batch["lengths"]).shape[0])
    if isinstance(segment, torch.Tensor):
        segment = torch.as_tensor(segment, device=device)[enc.batch_id]  # [Nb]: each block's item's segment
    keep = None if segment is None else segment_ids == segment  # [Nb]

    out: dict[str, torch.Tensor] = {}
    if "h_atom" in names:
        out["h_atom"] = enc.unit_repr.float()
    if "h_block" in names:
        out["h_block"] = enc.block_repr.float()
    if "h_graph" in names:
        out["h_graph"] = enc.graph_repr.float()
    if "h_interface" in names:
        out["h_interface"] = attention_pool(enc_model, enc.block_repr, enc.batch_id, batch["lengths"], keep).float()
    if want_z:
        atom_inv, block_inv = invariants(enc_model)
        z_atom = atom_inv.descriptor(enc.atom_irreps)  # [Na, za]
        if "z_atom" in names:
            out["z_atom"] = z_atom
        if names & {"z_block", "z_graph", "z_interface"}:
            z_block = torch.cat([enc.block_repr.float(), block_inv.gram(enc.block_irreps),
                                 mean_and_std(z_atom, enc.block_id, B.shape[0])], dim=1)  # [Nb, zb]
            if "z_block" in names:
                out["z_block"] = z_block
            parts = list(component_widths(enc_model).values())
            is_global = B == enc_model.global_block_id
            if "z_graph" in names:
                out["z_graph"] = pool_blocks(z_block, enc.batch_id, n_items, is_global, pool, parts)
            if "z_interface" in names:
                out["z_interface"] = pool_blocks(z_block, enc.batch_id, n_items, is_global, pool, parts, keep)
    return out


# --- pooling ---------------------------------------------------------------------------------------------------

def mean_and_std(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """[mean, population s.d.] of the rows of each group, s.d. as sqrt(E[x^2] - E[x]^2) like ATOMICA.
    # [n, 2 * x.shape[1]]"""
    mean = scatter_mean(x, index, n)
    std = (scatter_mean(x * x, index, n) - mean * mean).clamp_min(0).sqrt()
    return torch.cat([mean, std], dim=1)


def component_normalize(x: torch.Tensor, parts: list[int]) -> torch.Tensor:
    """Each part of the last axis L2-normalised on its own (a cosine then weighs every part equally)."""
    if sum(parts) != x.shape[-1]:
        raise ValueError(f"parts of widths {parts} do not cover a vector of width {x.shape[-1]}")
    pieces = [p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12) for p in torch.split(x, parts, dim=-1)]
    return torch.cat(pieces, dim=-1)


def pool_blocks(x: torch.Tensor, batch_id: torch.Tensor, n_items: int, is_global: torch.Tensor, mode: str,
                parts: list[int], keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-block rows x [Nb, w] pooled per item by `mode` over its non-global blocks (and `keep` ones).
    # [n_items, 3w] (mean_std_global) or [n_items, w]"""
    if mode not in POOLING:
        raise ValueError(f"unknown pooling {mode!r}; choose {' or '.join(POOLING)}")
    pooled = ~is_global if keep is None else ~is_global & keep
    rows, owner = x[pooled], batch_id[pooled]
    mean = scatter_mean(rows, owner, n_items)  # [n_items, w]
    if mode == "mean_component_normalized":
        return component_normalize(mean, parts)
    stats = mean_and_std(rows, owner, n_items)
    # the item's first global block (a complex has one per segment; an interface reuses its item's), the mean
    # for an item without one
    nb = x.shape[0]
    index = torch.arange(nb, device=x.device)
    first = torch.full((n_items,), nb, dtype=torch.long, device=x.device).scatter_reduce_(
        0, batch_id[is_global], index[is_global], reduce="amin")
    found = (first < nb).unsqueeze(1)
    glob = torch.where(found, x[first.clamp(max=nb - 1)], mean)
    return torch.cat([stats, glob], dim=1)


def attention_pool(model: AtomicaBackbone, block_repr: torch.Tensor, batch_id: torch.Tensor, lengths,
                   keep: torch.Tensor) -> torch.Tensor:
    """The model's attention pooling over the `keep` blocks of each item, unpadded (as for one item alone).
    # [n_items, H]"""
    lengths = torch.as_tensor(lengths, device=block_repr.device)
    n_items = lengths.shape[0]
    start = torch.cumsum(lengths, 0) - lengths  # [n_items]
    counts = torch.zeros(n_items, dtype=torch.long, device=block_repr.device).index_add_(0, batch_id, keep.long())
    return model.attention_pooling(block_repr, batch_id, start, keep, n_items, int(counts.max()), masked=True)
