"""Properties of the models on small synthetic batches: E(3) invariance / equivariance, batch independence with
the fixed flags, the UNK flag, gradients, devices, determinism, chunked graph building."""

import math

import pytest
import torch

from atomica_ray.data.vocab import GLB, UNK
from atomica_ray.models import ClassifierModel, DenoisePretrainModel, create_model
from atomica_ray.models.graphs import ItemLayout, knn_graph, radius_graph

TINY = dict(atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4, n_layers=3,
            fragmentation_method=None, global_message_passing=True)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_item(gen: torch.Generator, n_res: int, n_lig: int, unk: bool = False, max_block: int = 6) -> dict:
    """One ATOMICA-format item: segment 0 = global block + residue-like blocks (2-6 atoms), segment 1 = global
    block + single-atom ligand blocks; optionally one UNK residue."""
    blocks, atoms, coords, segs = [], [], [], []
    for seg, n, spread in ((0, n_res, 9.0), (1, n_lig, 3.0)):
        seg_coords, seg_blocks, seg_atoms = [], [], []
        center = torch.tensor([0.0, 0.0, 0.0]) if seg == 0 else torch.tensor([6.0, 1.0, -2.0])
        for i in range(n):
            size = int(torch.randint(2, max_block + 1, (1,), generator=gen)) if seg == 0 else 1
            kind = (UNK if unk and i == 1 else int(torch.randint(4, 24, (1,), generator=gen))) if seg == 0 else \
                int(torch.randint(32, 60, (1,), generator=gen))
            base = center + spread * (torch.rand(3, generator=gen) - 0.5)
            seg_coords.append(base + 1.5 * torch.randn(size, 3, generator=gen))
            seg_blocks.append((kind, size))
            seg_atoms += [int(a) for a in torch.randint(3, 12, (size,), generator=gen)]
        xyz = torch.cat(seg_coords)
        coords += [xyz.mean(0, keepdim=True), xyz]  # global atom at the segment centroid first
        blocks += [(GLB, 1)] + seg_blocks
        atoms += [2] + seg_atoms
        segs += [seg] * (n + 1)
    return {"X": torch.cat(coords), "B": torch.tensor([b for b, _ in blocks]),
            "block_lengths": torch.tensor([n for _, n in blocks]), "A": torch.tensor(atoms),
            "segment_ids": torch.tensor(segs)}


def collate(items: list[dict]) -> dict:
    batch = {k: torch.cat([it[k] for it in items]) for k in ("X", "B", "A", "block_lengths", "segment_ids")}
    batch["lengths"] = torch.tensor([len(it["B"]) for it in items])
    return batch


def items(seed: int = 0, sizes=((6, 4), (9, 3), (4, 5))) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [make_item(gen, r, l) for r, l in sizes]


def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def pretrain_inputs(batch: dict, seed: int = 0) -> dict:
    """Noise targets for a pretraining forward: segment 1 of each item noisy, torsions on ligand atom pairs."""
    gen = torch.Generator().manual_seed(seed)
    n = len(batch["lengths"])
    atom_item = torch.repeat_interleave(torch.repeat_interleave(torch.arange(n), batch["lengths"]),
                                        batch["block_lengths"])
    atom_seg = torch.repeat_interleave(batch["segment_ids"], batch["block_lengths"])
    tor, tor_batch = [], []
    for i in range(n):
        lig = torch.nonzero((atom_item == i) & (atom_seg == 1) & (batch["A"] != 2)).flatten()
        tor.append(torch.stack([lig[:-1], lig[1:]]))
        tor_batch.append(torch.full((lig.numel() - 1,), i))
    tor = torch.cat(tor, 1)
    masked = torch.zeros(len(batch["B"]), dtype=torch.bool)
    masked[[2, 5, 9]] = True
    return dict(receptor_segment=torch.ones(n, dtype=torch.long), tr_score=torch.randn(n, 3, generator=gen),
                tr_eps=torch.rand(n, generator=gen), rot_score=torch.randn(n, 3, generator=gen), tor_edges=tor,
                tor_batch=torch.cat(tor_batch), tor_score=torch.randn(tor.shape[1], generator=gen),
                masked_blocks=masked, masked_labels=torch.tensor([1, 7, 30]))


def structure(batch: dict) -> dict:
    return dict(Z=batch["X"], B=batch["B"], A=batch["A"], block_lengths=batch["block_lengths"],
                lengths=batch["lengths"], segment_ids=batch["segment_ids"])


def pretrain_model(**flags) -> DenoisePretrainModel:
    torch.manual_seed(0)
    return DenoisePretrainModel(**TINY, atom_noise=True, num_masked_block_classes=32, **flags).eval()


# --- E(3) ---------------------------------------------------------------------------------------------------------
def test_rotation_translation_invariance_of_representations_and_scalars():
    torch.manual_seed(0)
    model = ClassifierModel(**TINY).eval()
    batch = collate(items())
    rot, shift = random_rotation(1), torch.tensor([3.0, -7.0, 2.5])
    moved = dict(batch, X=batch["X"] @ rot.T + shift)
    label = torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        a, b = model.encode(batch), model.encode(moved)
        loss_a, prob_a = model(**structure(batch), label=label)
        loss_b, prob_b = model(**structure(moved), label=label)
    for key in ("unit_repr", "block_repr", "graph_repr"):
        assert (a[key] - b[key]).abs().max() < 1e-4, key
    assert (prob_a - prob_b).abs().max() < 1e-4 and abs(loss_a - loss_b) < 1e-4


def test_noise_predictions_rotate_with_the_input():
    model = pretrain_model()
    batch = collate(items())
    extra = pretrain_inputs(batch)
    rot, shift = random_rotation(2), torch.tensor([-4.0, 1.0, 8.0])
    moved = dict(batch, X=batch["X"] @ rot.T + shift)
    with torch.no_grad():
        a = model.encode_noisy(*structure(batch).values(), extra["receptor_segment"], extra["tor_edges"],
                               extra["tor_batch"])
        b = model.encode_noisy(*structure(moved).values(), extra["receptor_segment"], extra["tor_edges"],
                               extra["tor_batch"])
    for key in ("trans_noise", "rot_noise", "atom_noise"):  # vectors (1o) plus pseudo-vectors (1e)
        assert (a[key] @ rot.T - b[key]).abs().max() < 1e-4, key
        assert a[key].abs().max() > 1e-3, key  # not trivially zero
    assert (a.tor_noise - b.tor_noise).abs().max() < 1e-4  # torsion scores are invariant
    assert (a.graph_repr - b.graph_repr).abs().max() < 1e-4


# --- batch composition ---------------------------------------------------------------------------------------------
def _alone_vs_batched(model):
    gen = torch.Generator().manual_seed(3)
    # the first item's blocks are smaller than its batch mates': ATOMICA pads them to the batch's largest
    its = [make_item(gen, 3, 2, max_block=3), make_item(gen, 12, 6, max_block=9), make_item(gen, 5, 1)]
    with torch.no_grad():
        batched = model.encode(collate(its))
        alone = model.encode(collate(its[:1]))
    n_blocks = len(its[0]["B"])
    return (alone.graph_repr[0] - batched.graph_repr[0]).abs().max().item(), \
        (alone.block_repr - batched.block_repr[:n_blocks]).abs().max().item()


def test_fixed_flags_make_items_independent_of_their_batch():
    torch.manual_seed(0)
    graph_diff, block_diff = _alone_vs_batched(ClassifierModel(**TINY).eval())
    assert graph_diff < 1e-5 and block_diff < 1e-5


def test_atomica_attention_depends_on_the_batch():
    """The defect the flag fixes is real: without masks a small item's outputs change with its batch mates."""
    torch.manual_seed(0)
    graph_diff, block_diff = _alone_vs_batched(ClassifierModel(**TINY, attention_mask=False).eval())
    assert graph_diff > 1e-4 and block_diff > 1e-4


def test_unk_blocks_are_global_only_with_the_atomica_flag():
    gen = torch.Generator().manual_seed(5)
    batch = collate([make_item(gen, 6, 3, unk=True)])
    unk_block = int(torch.nonzero(batch["B"] == UNK)[0])
    layout = ItemLayout.from_sizes(batch["lengths"], len(batch["B"]), int(batch["lengths"].max()))
    pos = torch.randn(len(batch["B"]), 3, generator=gen)
    for unk_is_global in (True, False):
        is_global = (batch["B"] == GLB) | ((batch["B"] == UNK) & unk_is_global)
        edges, types = knn_graph(pos, batch["segment_ids"], is_global, layout, 3, global_edges=True)
        unk_types = set(types[(edges[0] == unk_block)].tolist())
        assert unk_types == ({2, 3} if unk_is_global else {0, 1, 2})


# --- graphs ----------------------------------------------------------------------------------------------------
def test_chunked_graph_building_matches_one_tile():
    batch = collate(items(seed=7))
    n_items, na = len(batch["lengths"]), len(batch["A"])
    batch_id = torch.repeat_interleave(torch.arange(n_items), batch["lengths"])
    block_id = torch.repeat_interleave(torch.arange(len(batch["B"])), batch["block_lengths"])
    sizes = torch.zeros(n_items, dtype=torch.long).index_add_(0, batch_id, batch["block_lengths"])
    layout = ItemLayout.from_sizes(sizes, na, int(sizes.max()))
    seg, glob = batch["segment_ids"][block_id], (batch["B"] == GLB)[block_id]
    full = knn_graph(batch["X"], seg, glob, layout, 5, True)
    tiny = knn_graph(batch["X"], seg, glob, layout, 5, True, max_tile=int(sizes.max()) * 3)
    assert torch.equal(full[0], tiny[0]) and torch.equal(full[1], tiny[1])
    # k-NN: at most k intra + k inter edges per node, never across items, never self loops
    e = full[0]
    assert (batch_id[block_id][e[0]] == batch_id[block_id][e[1]]).all() and (e[0] != e[1]).all()
    intra = e[:, full[1] == 0]
    assert torch.bincount(intra[0], minlength=na).max() <= 5
    centers, center_item = batch["X"][:4] + 0.1, batch_id[block_id][:4]
    r_full = radius_graph(centers, center_item, batch["X"], layout, 4.0, 6)
    r_tiny = radius_graph(centers, center_item, batch["X"], layout, 4.0, 6, max_tile=1)
    assert torch.equal(r_full, r_tiny) and r_full.shape[1] > 0
    assert ((batch["X"][r_full[1]] - centers[r_full[0]]).norm(dim=-1) < 4.0).all()


# --- training ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_every_trainable_parameter_gets_a_gradient(device):
    model = pretrain_model().train().to(device)
    batch = collate(items())
    extra = pretrain_inputs(batch)
    n_atoms = len(batch["A"])
    gen = torch.Generator().manual_seed(1)
    extra.update(atom_score=torch.randn(n_atoms, 3, generator=gen), atom_eps=torch.rand(3, generator=gen))
    inputs = {k: v.to(device) for k, v in {**structure(batch), **extra}.items()}
    out = model(**inputs)
    assert out.loss.device.type == device and torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert trainable and not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("device", DEVICES)
def test_classifier_trains_on_any_device(device):
    torch.manual_seed(0)
    model = create_model("binary_classifier", **TINY).to(device)
    batch = {k: v.to(device) for k, v in collate(items()).items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    label = torch.tensor([0.0, 1.0, 1.0], device=device)
    losses = []
    for _ in range(5):
        loss, prob = model(**structure(batch), label=label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert prob.device.type == device and losses[-1] < losses[0]


def test_seeded_models_and_outputs_reproduce():
    batch = collate(items())
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model("regression", **TINY).eval()
        with torch.no_grad():
            outs.append((model.state_dict(), model(**structure(batch), label=torch.zeros(3))[1]))
    (sd_a, pred_a), (sd_b, pred_b) = outs
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a) and torch.equal(pred_a, pred_b)


def test_no_hard_coded_devices_in_the_model_code():
    from pathlib import Path

    import atomica_ray.models as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert ".cuda(" not in text and 'device="cuda' not in text and "device='cuda" not in text, path.name


def test_rotation_helper_is_proper():
    rot = random_rotation(9)
    assert math.isclose(float(torch.det(rot)), 1.0, abs_tol=1e-5)
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-5)


# --- heads with extra inputs ----------------------------------------------------------------------------------------
def test_protein_interface_contrastive_training_step():
    torch.manual_seed(0)
    model = create_model("prot_interface", **TINY).train()
    its = items(seed=11)
    cmplx = collate(its)
    prot_items = [{k: (v[: int((it["segment_ids"] == 0).sum())] if k in ("B", "block_lengths", "segment_ids") else
                       v[: int(it["block_lengths"][it["segment_ids"] == 0].sum())]) for k, v in it.items()}
                  for it in its]
    prot = collate(prot_items)
    loss = model(cmplx, prot)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.cmplx_model.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # ATOMICA's NT-Xent, written out
    z, za = torch.randn(4, 8), torch.randn(4, 8)
    from atomica_ray.models import contrastive_loss
    z, za = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(za, dim=1)
    t, eye = 0.5, torch.eye(4, dtype=torch.bool)
    ab, aa, ba, bb = z @ za.T / t, z @ z.T / t, za @ z.T / t, za @ za.T / t
    la = -torch.log(torch.exp(ab.diag()) / (torch.exp(aa[~eye].view(4, -1)).sum(1) + torch.exp(ab).sum(1)))
    lb = -torch.log(torch.exp(ba.diag()) / (torch.exp(bb[~eye].view(4, -1)).sum(1) + torch.exp(ba).sum(1)))
    assert torch.allclose(contrastive_loss(z, za), torch.cat([la, lb]).mean(), atol=1e-6)


@pytest.mark.parametrize("per_segment", [False, True])
def test_affinity_with_external_block_features(per_segment):
    torch.manual_seed(0)
    batch = collate(items())
    nb = len(batch["B"])
    seg = batch["segment_ids"]
    if per_segment:
        sizes = dict(block_embedding0_size=5, block_embedding1_size=3)
        feats = dict(block_embeddings0=torch.randn(int((seg == 0).sum()), 5),
                     block_embeddings1=torch.randn(int((seg == 1).sum()), 3))
    else:
        sizes, feats = dict(block_embedding_size=6), dict(block_embeddings=torch.randn(nb, 6))
    model = create_model("PDBBind", **TINY, projector_hidden_size=16, **sizes)
    loss, pred = model(**structure(batch), label=torch.zeros(3), **feats)
    loss.backward()
    assert pred.shape == (3,)
    prefix = "pre_projector0" if per_segment else "pre_projector"
    assert getattr(model, prefix)[2].weight.grad is not None
    # the first item alone gives the same prediction (features are placed per block, not reordered)
    model.eval()
    n0, seg0 = int(batch["lengths"][0]), seg[: int(batch["lengths"][0])]
    one = {k: v for k, v in collate(items()[:1]).items()}
    if per_segment:
        feats_one = dict(block_embeddings0=feats["block_embeddings0"][: int((seg0 == 0).sum())],
                         block_embeddings1=feats["block_embeddings1"][: int((seg0 == 1).sum())])
    else:
        feats_one = dict(block_embeddings=feats["block_embeddings"][:n0])
    with torch.no_grad():
        _, alone = model(**structure(one), label=torch.zeros(1), **feats_one)
        _, batched = model(**structure(batch), label=torch.zeros(3), **feats)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_modality_embedding_and_block_feature_pretraining():
    batch = collate(items())
    extra = pretrain_inputs(batch)
    torch.manual_seed(0)
    model = create_model("pretrain_torsion", **TINY, atom_noise=0, modality_embedding=True, block_embedding_size=4,
                         num_projector_layers=2, projector_hidden_size=8)
    assert type(model).__name__ == "DenoisePretrainModelWithBlockEmbedding"
    out = model(**structure(batch), **extra, modality=torch.tensor([0, 1, 7]),
                block_embeddings=torch.randn(len(batch["B"]), 4))
    out.loss.backward()
    assert model.modality_embedding.weight.grad[[0, 1, 7]].abs().sum() > 0
    assert model.modality_embedding.weight.grad[2].abs().sum() == 0
    assert model.pre_projector[2].weight.grad is not None


def test_stacked_tensor_product_equals_e3nn():
    """The fast evaluation of every tensor product of the encoder is e3nn's function."""
    from e3nn import o3

    from atomica_ray.models.equivariant import TensorProductConv
    model = pretrain_model()
    gen = torch.Generator().manual_seed(0)
    convs = [m for m in model.modules() if isinstance(m, TensorProductConv)]
    assert len(convs) == 2 * TINY["n_layers"] + 3  # both encoders, atom / global / torsion heads
    for conv in convs:
        x = torch.randn(50, conv.tp.irreps_in1.dim, generator=gen)
        y = torch.randn(50, conv.tp.irreps_in2.dim, generator=gen)
        h = torch.randn(50, conv.fc[0].in_features, generator=gen)
        reference = conv.tp(x, y, conv.fc(h))
        hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
        fast = conv.stacked_tp(x, y, hidden, conv.fc[3])
        assert (reference - fast).abs().max() < 1e-5 * max(1.0, reference.abs().max().item()), str(conv.tp)
        assert isinstance(conv.tp, o3.FullyConnectedTensorProduct)


def test_chunked_tensor_product_gradients_equal_e3nn(monkeypatch):
    """Per-edge weights made in chunks of edges and made again in backward: e3nn's values and gradients."""
    from atomica_ray.models.kernels import tensor_product
    from atomica_ray.models.equivariant import TensorProductConv
    monkeypatch.setattr(tensor_product, "WEIGHT_CHUNK_ELEMENTS", 3000)  # ~10 chunks of 37 edges
    gen = torch.Generator().manual_seed(1)
    conv = TensorProductConv("8x0e + 4x1o + 4x2e", "1x0e + 1x1o + 1x2e", "8x0e + 4x1o + 4x2e + 4x1e + 4x2o", 24)
    x = torch.randn(37, conv.tp.irreps_in1.dim, generator=gen, requires_grad=True)
    y = torch.randn(37, 9, generator=gen)
    h = torch.randn(37, 24, generator=gen, requires_grad=True)
    g = torch.randn(37, conv.tp.irreps_out.dim, generator=gen)
    params = [x, h, conv.fc[0].weight, conv.fc[3].weight, conv.fc[3].bias]
    reference = conv.tp(x, y, conv.fc(h))
    fast = conv.stacked_tp(x, y, conv.fc[2](conv.fc[1](conv.fc[0](h))), conv.fc[3])
    assert torch.allclose(fast, reference, atol=1e-5)
    for a, b in zip(torch.autograd.grad(reference, params, g), torch.autograd.grad(fast, params, g)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
