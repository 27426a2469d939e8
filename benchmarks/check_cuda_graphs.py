"""Check on a GPU that CUDA-graphed encoder stacks (models/kernels/cuda_graphs.py) compute what the eager code computes.

    python benchmarks/check_cuda_graphs.py --batches .bench/bench_batches.pt [--model Classifier] [--bf16]

For every reference batch, twice (the second pass replays graphs captured in the first, on other data in between):
the loss and the gradient of every parameter of a graphed training step, against an eager step of the same model
and weights. Prints the worst ||graphed - eager|| / ||eager|| over parameters and the number of graphs captured.
"""

from __future__ import annotations

import argparse
import time

import torch

from atomica_ray.models.kernels.cuda_graphs import enable_cuda_graphs
from bench_step import build, loss_of, step_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="/work/shared/atomica_reference/bench_batches.pt")
    parser.add_argument("--model", default="DenoisePretrainModel", choices=["DenoisePretrainModel", "Classifier"])
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    name = "ClassifierModel" if args.model == "Classifier" else args.model
    torch.manual_seed(0)
    model = build(name).cuda().train()
    batches = [{k: v.cuda() for k, v in b.items() if isinstance(v, torch.Tensor)}
               for b in torch.load(args.batches, weights_only=True)[name]]
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(batch):
        torch.manual_seed(1)  # same noise draws, if any, on both sides
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_of(name, model(**step_inputs(name, batch)))
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]

    enable_cuda_graphs(model, True)
    stacks = [m.cuda_graphs for m in model.modules() if getattr(m, "cuda_graphs", None) is not None]

    def rel(a, b):  # over all parameters at once: per-parameter ratios blow up where a gradient is ~0
        return (torch.cat([x.flatten() for x in a]) - torch.cat([y.flatten() for y in b])).norm().item() / \
            torch.cat([y.flatten() for y in b]).norm().item()

    worst = {"loss": 0.0, "grad": 0.0, "noise": 0.0}
    for sweep in range(2):
        for i, batch in enumerate(batches):
            loss_e, grads_e = _eager(model, grads, batch)
            loss_e2, grads_e2 = _eager(model, grads, batch)  # eager against eager: the run-to-run noise floor
            t0 = time.perf_counter()
            loss_g, grads_g = grads(batch)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            r, noise = rel(grads_g, grads_e), rel(grads_e2, grads_e)
            worst["loss"] = max(worst["loss"], abs(loss_g.item() - loss_e.item()) / abs(loss_e.item()))
            worst["grad"], worst["noise"] = max(worst["grad"], r), max(worst["noise"], noise)
            print(f"sweep {sweep} batch {i}: loss eager {loss_e.item():.6f} graphed {loss_g.item():.6f}  "
                  f"grad rel {r:.2e} (eager vs eager {noise:.2e})  graphed step {1000 * dt:.0f} ms  "
                  f"graphs {[len(s.graphs) for s in stacks]}")
    print(f"{name} bf16={args.bf16}: worst loss rel {worst['loss']:.2e}; gradients (all parameters) rel "
          f"{worst['grad']:.2e}, eager vs eager {worst['noise']:.2e}")


def _eager(model, grads, batch):
    """The same model and weights with its graphs put aside for one call."""
    for m in model.modules():
        if getattr(m, "cuda_graphs", None) is not None:
            m._saved_graphs, m.cuda_graphs = m.cuda_graphs, None
    try:
        return grads(batch)
    finally:
        for m in model.modules():
            if hasattr(m, "_saved_graphs"):
                m.cuda_graphs = m._saved_graphs
                del m._saved_graphs


if __name__ == "__main__":
    main()
