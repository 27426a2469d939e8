"""The optimizer step does not depend on the worker count (elastic runs): with the engine's loss scaling (1/batches
of the step) and a summing all-reduce, every step's gradient over 1, 2 or 3 simulated ranks is the mean gradient
of the same batches, and a resize at a step boundary continues with the next unseen batches. No Ray: the ranks are
the engine's own loaders and task forward passes, summed as `dist.reduce_step` sums them."""

from __future__ import annotations

import pytest
import torch

from atomica_ray.data import make_loader
from atomica_ray.tasks import get_task
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.loop import build_model, data_spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from atomica_ray.data.demo import write_demo_splits

    data = write_demo_splits(str(tmp_path_factory.mktemp("steps-data")), n_train=12, n_valid=4, seed=9)
    cfg = TrainConfig.from_dict(dict(task="binary_classifier", train_set=data["train"], num_workers="1:3",
                                     atom_hidden_size=8, block_hidden_size=8, edge_size=8, n_layers=1,
                                     k_neighbors=4, max_n_vertex_per_gpu=70, fragmentation_method="PS_300"))
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    return cfg, task, model, data_spec(cfg, task, cfg.train_set, train=True)


def step_gradients(setup, world: int, start: int = 0) -> list[torch.Tensor]:
    """Per optimizer step: the sum over ranks of each rank's gradients of loss / (batches in the step)."""
    cfg, task, model, spec = setup
    params = [p for p in model.parameters() if p.requires_grad]
    loaders = [make_loader(spec, seed=cfg.seed, epoch=1, rank=r, world_size=world, start_batch=start,
                           per_step=cfg.micro_batches_per_step) for r in range(world)]
    out = []
    for per_rank in zip(*(loader.steps() for loader in loaders)):
        total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
        for size, batches in per_rank:  # one rank's share of the step
            for batch in batches:
                loss, _ = task.forward(model, batch)
                grads = torch.autograd.grad(loss / size, params, allow_unused=True)
                total += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                                    for g, p in zip(grads, params)])
        out.append(total)
    return out


def test_step_gradient_is_the_same_on_1_or_3_workers_and_across_a_resize(setup):
    cfg = setup[0]
    assert cfg.micro_batches_per_step == 3  # grad_accum 1 x the largest worker count
    one = step_gradients(setup, 1)
    assert len(one) >= 3
    three = step_gradients(setup, 3)
    # two steps on 3 workers, then the rest of the epoch on 2 (from batch position 2 x 3)
    resized = three[:2] + step_gradients(setup, 2, start=2 * cfg.micro_batches_per_step)
    for name, other in (("3 workers", three), ("3 then 2 workers", resized)):
        assert len(other) == len(one), name  # the same steps per epoch, so the same lr schedule
        for step, (a, b) in enumerate(zip(one, other)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (name, step, (a - b).abs().max())
