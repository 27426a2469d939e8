"""scatter_sum / scatter_mean (models/scatter.py): torch_scatter's sums, with a backward that holds only the index."""

import torch

from atomica_ray.models.scatter import scatter_mean, scatter_sum


def test_scatter_sum_equals_index_add_and_its_gradient():
    torch.manual_seed(0)
    src = torch.randn(300, 7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 40, (300,))
    want = torch.zeros(45, 7, 3, dtype=torch.float64).index_add(0, index, src)  # rows 40..44 stay empty
    got = scatter_sum(src, index, 45)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, src, g)[0], torch.autograd.grad(want, src, g)[0])
    assert torch.autograd.gradcheck(lambda s: scatter_sum(s, index, 45), (src,))
    assert torch.autograd.gradgradcheck(lambda s: scatter_sum(s, index, 45), (src,))


def test_scatter_backward_holds_the_index_not_the_messages():
    src = torch.randn(500, 64, requires_grad=True)
    index = torch.randint(0, 20, (500,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        scatter_mean(src * 2, index, 20)
    assert (500, 64) not in saved, saved  # torch's index_add would hold its [E, D] source until backward
    assert (500,) in saved


def test_no_graph_without_gradients():
    out = scatter_sum(torch.ones(5, 2), torch.tensor([0, 0, 1, 1, 1]), 3)
    assert out.grad_fn is None and out.tolist() == [[2.0, 2.0], [3.0, 3.0], [0.0, 0.0]]
