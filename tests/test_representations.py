"""The eight named representations (atomica_ray/representations.py): parity with current ATOMICA's own code
(tests/fixtures/atomica_representations.pt, see tests/fixtures/README.md), batch independence, invariance, and
the names / pooling / segment rules."""

from pathlib import Path

import numpy as np
import pytest
import torch

from atomica_ray import representations as R
from atomica_ray.data.collate import collate
from atomica_ray.models import PredictionModel, load_atomica

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = list(R.REPRESENTATIONS)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURES / "atomica_reference.pt", weights_only=True)["PredictionModel"]


@pytest.fixture(scope="module")
def upstream():
    return torch.load(FIXTURES / "atomica_representations.pt", weights_only=True)


@pytest.fixture(scope="module")
def atomica_model(reference):
    """ATOMICA's weights with ATOMICA's numerics (attention_mask off, UNK blocks global)."""
    model = load_atomica(reference["config"], reference["state_dict"]).eval()
    assert not model.attention_mask and model.unk_is_global
    return model


@pytest.fixture(scope="module")
def our_model(reference):
    """Our numerics (attention mask on, UNK not global), same architecture, random weights."""
    torch.manual_seed(0)
    config = {k: v for k, v in reference["config"].items() if k != "model_type"}
    model = PredictionModel(**config).eval()
    assert model.attention_mask and not model.unk_is_global
    return model


@pytest.fixture(scope="module")
def items(reference):
    """The 4 reference items (37, 29, 34, 44 blocks; largest blocks of 12, 14, 11, 8 atoms) as records."""
    b = reference["batch"]
    blocks = b["lengths"].tolist()
    atoms = [int(a.sum()) for a in torch.split(b["block_lengths"], blocks)]
    out, b0, a0 = [], 0, 0
    for i, (nb, na) in enumerate(zip(blocks, atoms)):
        out.append({"id": f"item{i}", "X": b["X"][a0:a0 + na].numpy(), "A": b["A"][a0:a0 + na].numpy(),
                    "atom_positions": np.zeros(na, np.int64), "B": b["B"][b0:b0 + nb].numpy(),
                    "block_lengths": b["block_lengths"][b0:b0 + nb].numpy(),
                    "segment_ids": b["segment_ids"][b0:b0 + nb].numpy()})
        b0, a0 = b0 + nb, a0 + na
    return out


def per_item(model, items, order, pool, segment) -> dict:
    """{(item, name): vectors} of one batch made of `items` in `order`."""
    with torch.no_grad():
        out = R.compute(model, collate([items[i] for i in order], "plain"), NAMES, pool=pool, segment=segment)
    split = {"atom": [len(items[i]["A"]) for i in order], "block": [len(items[i]["B"]) for i in order]}
    result = {}
    for name, values in out.items():
        level = R.REPRESENTATIONS[name].level
        parts = torch.split(values, split[level]) if level in split else values.split(1)
        result.update({(i, name): p for i, p in zip(order, parts)})
    return result


@pytest.fixture(scope="module")
def atomica_alone(atomica_model, items):
    """Every item alone in its batch, all names (mean_std_global, segment 1)."""
    out = {}
    for i in range(len(items)):
        out.update(per_item(atomica_model, items, [i], "mean_std_global", 1))
    return out


def test_matches_atomica_representations(atomica_model, items, atomica_alone, upstream):
    """Every name, both pools, both segments, against ATOMICA's code on the same weights and items (each alone in
    its batch). Tolerance relative to the vectors' scale: z holds Gram entries up to ~100, which float32 rounds
    at ~1e-5."""
    def check(i, key, value):
        want = upstream["items"][i][key]
        assert value.shape == want.shape, (key, value.shape, want.shape)
        diff = (value - want).abs().max().item()
        assert diff <= 1e-5 * max(1.0, want.abs().max().item()), f"item {i} {key}: {diff:.2e}"

    parts = list(R.component_widths(atomica_model).values())
    for i, item in enumerate(items):
        got = {name: atomica_alone[(i, name)] for name in NAMES}
        for name in ("h_atom", "h_block", "h_graph", "z_atom", "z_block"):
            check(i, name, got[name])
        check(i, "h_interface:1", got["h_interface"])
        check(i, "z_interface:1:mean_std_global", got["z_interface"])
        check(i, "z_graph:mean_std_global", got["z_graph"])
        # the other pool / segment: the same pooling functions on this forward pass's blocks
        segments = torch.as_tensor(item["segment_ids"])
        is_global = torch.as_tensor(item["B"]) == atomica_model.global_block_id
        batch_id = torch.zeros(len(item["B"]), dtype=torch.long)
        with torch.no_grad():
            check(i, "h_interface:0", R.attention_pool(atomica_model, got["h_block"], batch_id,
                                                       [len(item["B"])], segments == 0))
        check(i, "z_graph:mean_component_normalized",
              R.pool_blocks(got["z_block"], batch_id, 1, is_global, "mean_component_normalized", parts))
        for segment in (0, 1):
            for pool in R.POOLING:
                check(i, f"z_interface:{segment}:{pool}",
                      R.pool_blocks(got["z_block"], batch_id, 1, is_global, pool, parts, segments == segment))


def test_vectors_do_not_depend_on_the_batch(atomica_model, our_model, items, atomica_alone):
    """Mixed batches (items of different largest blocks, sizes and order): every item's vectors of all eight names
    equal its batch-of-one vectors within 1e-5 (float32), with ATOMICA's numerics (attention mask off, UNK blocks
    global) and with ours."""
    for numerics, model, pool, segment in (("atomica", atomica_model, "mean_std_global", 1),
                                           ("ours", our_model, "mean_component_normalized", 0)):
        if numerics == "atomica":
            alone = atomica_alone
        else:
            alone = {}
            for i in range(len(items)):
                alone.update(per_item(model, items, [i], pool, segment))
        for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0]):
            for key, value in per_item(model, items, order, pool, segment).items():
                diff = (value - alone[key]).abs().max().item()
                assert diff <= 1e-5, f"{numerics}: {key} in batch {order}: {diff:.2e}"


def test_atomica_numerics_without_batch_independence_do_depend_on_the_batch(atomica_model, items):
    """The control: ATOMICA's own batch padding moves an item's blocks when a partner has a larger block."""
    with torch.no_grad():
        alone = atomica_model.encode(collate([items[3]], "plain")).block_repr  # largest block: 8 atoms
        mixed = atomica_model.encode(collate([items[1], items[3]], "plain")).block_repr[len(items[1]["B"]):]  # 14
    assert (mixed - alone).abs().max().item() > 1e-3


def test_invariant_under_rotation_and_translation(atomica_model, items, atomica_alone):
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0]
    moved = dict(items[1], X=(items[1]["X"] @ rotation.numpy().T + np.float32([3.0, -2.0, 5.0])).astype(np.float32))
    a = {key: v for key, v in atomica_alone.items() if key[0] == 1}
    b = per_item(atomica_model, {1: moved}, [1], "mean_std_global", 1)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-4 * max(1.0, a[key].abs().max().item()), key


def test_widths_of_the_released_configuration():
    """ATOMICA's figures for its released checkpoint: z_atom 608, z_block 1792 = 32 + 544 + 1216."""
    model = PredictionModel(atom_hidden_size=32, block_hidden_size=32, edge_size=32, k_neighbors=8, n_layers=4,
                            global_message_passing=True, fragmentation_method="PS_300")
    assert R.component_widths(model) == {"h_block": 32, "gram": 544, "atom": 1216}
    widths = R.widths(model)
    assert widths["z_atom"] == 608 and widths["z_block"] == 1792 and widths["z_graph"] == (5376, 1792)
    assert widths["h_atom"] == widths["h_graph"] == 32
    text = R.describe(model)
    assert "z_block      block      1792" in text and "5376 | 1792" in text


def test_fewer_layers_have_fewer_invariants(items):
    """After 1 layer the irreps are 8x0e + 4x1o + 4x2e (no 1e, 2o, 0o yet): z_atom = 8 scalars + 2 x 10 Gram."""
    model = PredictionModel(atom_hidden_size=8, block_hidden_size=8, edge_size=8, k_neighbors=4, n_layers=1,
                            fragmentation_method="PS_300").eval()
    out = per_item(model, items, [1], "mean_component_normalized", 1)
    assert out[(1, "z_atom")].shape == (len(items[1]["A"]), 8 + 20)
    assert out[(1, "z_block")].shape == (len(items[1]["B"]), 8 + 20 + 2 * 28)
    assert torch.isfinite(out[(1, "z_interface")]).all()


def test_names_aliases_and_required_options():
    assert R.parse("h_block, z_graph,graph_embedding") == [
        ("h_block", "h_block"), ("z_graph", "z_graph"), ("graph_embedding", "h_graph")]
    assert R.canonical("block_invariant_repr") == "z_block"
    with pytest.raises(KeyError, match="unknown representation 'h_residue'"):
        R.parse("h_residue")
    with pytest.raises(ValueError, match="z_graph need --pool"):
        R.check_options(["z_graph"], None, None)
    with pytest.raises(ValueError, match="h_interface, z_interface need --segment"):
        R.check_options(["h_interface", "z_interface"], "mean_std_global", None)
    with pytest.raises(ValueError, match="--segment 2"):
        R.check_options(["z_interface"], "mean_std_global", 2)
    R.check_options(["h_block", "h_graph"], None, None)  # nothing to pool, no segment needed
