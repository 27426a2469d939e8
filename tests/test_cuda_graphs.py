"""CUDA graphs of the encoder stacks (models/kernels/cuda_graphs.py): the padding they need does not change the function.

The capture and replay themselves need a GPU: benchmarks/check_cuda_graphs.py compares a graphed and an eager
training step of the released model there (figures in benchmarks/RESULTS.md)."""

import torch

from atomica_ray.models.kernels.cuda_graphs import bucket, capture_stats, enable_cuda_graphs, pad_graph
from atomica_ray.models.interaction import ATOMICAEncoder, layer_stack


def test_buckets_cover_the_size_with_little_padding():
    sizes = list(range(1, 5000)) + [65_432, 123_457]
    for n in sizes:
        b = bucket(n)
        assert b >= n
        assert b - n < max(64, n / 16 + 1), (n, b)
    assert [bucket(n) for n in sizes] == sorted(bucket(n) for n in sizes)
    assert len({bucket(n) for n in range(60_000, 120_000)}) <= 17  # few distinct shapes to capture


def _graph(n: int, e: int, generator):
    pos = torch.randn(n, 3, generator=generator) * 3
    edges = torch.randint(0, n, (2, e), generator=generator)
    edges = edges[:, edges[0] != edges[1]]
    return pos, edges


def test_padded_stack_equals_the_unpadded_one_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    enc = ATOMICAEncoder(16, 8, n_layers=4).double()  # float64: only summation order differs, so ~1e-15
    n = 37
    pos, edges = _graph(n, 300, g)
    pos = pos.double()
    h = torch.randn(n, 16, generator=g, dtype=torch.float64, requires_grad=True)
    attr = torch.randn(edges.shape[1], 8, generator=g, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in layer_stack(enc.encoder, h, pos, edges, attr)]

    def run(padded: bool):
        args = (h, pos, edges, attr)
        if padded:
            args = pad_graph(*args, n_pad=bucket(n + 2), e_pad=bucket(edges.shape[1]))
            assert args[0].shape[0] >= n + 2 and args[2].shape[1] > edges.shape[1]  # both really padded
        outs = layer_stack(enc.encoder, *args)
        outs = [o[:n] if i < 3 else o[: edges.shape[1]] for i, o in enumerate(outs)]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        params = [p for p in enc.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [h, attr, *params], allow_unused=True)
        return outs, [gr for gr in grads if gr is not None]

    (outs, grads), (outs_p, grads_p) = run(False), run(True)
    assert len(grads) == len(grads_p) > 10
    for a, b in zip(outs + grads, outs_p + grads_p):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_graphs_switch_on_every_encoder_and_cpu_runs_stay_eager():
    from atomica_ray.models import ClassifierModel

    model = ClassifierModel(atom_hidden_size=16, block_hidden_size=16, edge_size=8, k_neighbors=4, n_layers=2,
                            num_pred_layers=1, pred_hidden_size=16)
    assert enable_cuda_graphs(model) == 2  # atom-level and block-level encoders
    assert model.encoder.cuda_graphs is not None and model.top_encoder.cuda_graphs is not None
    g = torch.Generator().manual_seed(1)
    pos, edges = _graph(20, 80, g)
    h = torch.randn(20, 16, generator=g, requires_grad=True)
    attr = torch.randn(edges.shape[1], 8, generator=g)
    out = model.encoder(h, pos, edges, attr)
    assert not model.encoder.cuda_graphs.graphs and capture_stats(model) == (0, 0.0)  # nothing captured on the CPU
    enable_cuda_graphs(model, False)
    torch.testing.assert_close(model.encoder(h, pos, edges, attr)[0], out[0], rtol=0, atol=0)
