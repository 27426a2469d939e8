"""CUDA graphs of an encoder's layer stack, forward and backward, over padded ("bucketed") graph sizes.

A training step of the released model issues ~4000 small kernels; issuing them from Python takes longer than the
GPU takes to run them (benchmarks/RESULTS.md). Most of them are the two encoders' tensor-product layers, whose
only varying inputs are the node and edge counts. So the layer stack is captured once per size bucket and
replayed: one launch for its forward, one for its backward.

Padding keeps the function exact on the real rows: padding edges run from one padding node to another (two
padding nodes at distinct, far-away positions, so their direction is defined), padding nodes carry zero features,
and only real rows are returned. Messages of real edges never reach padding nodes and vice versa.

All buckets of one stack share one memory pool. That is safe because (a) a bucket's forward and backward replays
are never interleaved with another replay of the same stack (a second forward that comes before the first
one's backward has run takes the eager path), (b) inputs are copied in just before a replay and outputs
and gradients are copied out just after it.
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from collections import OrderedDict

import torch

# Buckets: sizes rounded up to 1/16 of their power of two (padding <= 6.25%); at most this many per stack (LRU).
BUCKET_FRACTION = 16
MAX_BUCKETS = 32
WARMUP_ITERS = 2  # eager runs on the capture stream before capture (Triton compiles, cuBLAS picks kernels)
CAPTURE_MODE = "thread_local"  # other threads (the loader's pin-memory thread) may use CUDA meanwhile
MAX_CAPTURE_FAILURES = 3  # per bucket; then it stays eager


def bucket(n: int, minimum: int = 64) -> int:
    """Smallest size >= n of the form k * 2**floor(log2 n) / BUCKET_FRACTION."""
    step = max(minimum, 2 ** max(0, int(math.log2(max(n, 1)))) // BUCKET_FRACTION)
    return -(-n // step) * step


class Captured:
    """Forward and backward graphs of `module` at one set of input shapes.

    The graphs' leaves are their own: static copies of the inputs and of the parameters (refreshed before each
    replay). A parameter's gradient accumulator is shared by every live autograd graph that uses it; one made
    outside the capture (the previous step's graph, still referenced by its loss) would tie the capture to the
    stream it ran on, which the driver refuses."""

    def __init__(self, module: torch.nn.Module, names: list[str], params: list[torch.nn.Parameter],
                 inputs: tuple[torch.Tensor, ...], pool, stream: torch.cuda.Stream):
        self.params = params
        self.weights = [p.detach().clone().requires_grad_(True) for p in params]
        self.inputs = tuple(x.detach().clone().requires_grad_(x.requires_grad) for x in inputs)
        self.diff = [t for t in (*self.inputs, *self.weights) if t.requires_grad]

        def run():
            return torch.func.functional_call(module, dict(zip(names, self.weights)), self.inputs)

        # warm-up and capture on one stream (cuBLAS keeps a workspace per (handle, stream), made on first use)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_ITERS):
                outs = run()
                need = [o for o in outs if o.requires_grad]
                torch.autograd.grad(need, self.diff, [torch.ones_like(o) for o in need], allow_unused=True)
                del outs, need
        stream.synchronize()

        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool, stream=stream, capture_error_mode=CAPTURE_MODE):
            self.outputs = run()
        self.needs_grad = [o.requires_grad for o in self.outputs]
        self.grad_outputs = [torch.empty_like(o) for o in self.outputs if o.requires_grad]
        with torch.cuda.graph(self.backward_graph, pool=pool, stream=stream, capture_error_mode=CAPTURE_MODE):
            grads = torch.autograd.grad([o for o in self.outputs if o.requires_grad], self.diff, self.grad_outputs,
                                        allow_unused=True)
        self.grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self.diff)]
        self.outputs = tuple(o.detach() for o in self.outputs)


class _InFlight:
    """Held by the autograd graph of a replayed forward until its backward has replayed."""

    done = False


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, captured: Captured, token: _InFlight, *tensors):
        ctx.captured, ctx.token = captured, token
        for static, x in zip(captured.inputs, tensors):
            static.copy_(x)
        torch._foreach_copy_(captured.weights, captured.params)  # the optimizer has moved them since
        captured.forward_graph.replay()
        outs = tuple(o.clone() for o in captured.outputs)
        ctx.mark_non_differentiable(*(o for o, g in zip(outs, captured.needs_grad) if not g))
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        captured = ctx.captured
        for static, g in zip(captured.grad_outputs, (g for g, need in zip(grad_outputs, captured.needs_grad) if need)):
            if g is None:
                static.zero_()
            else:
                static.copy_(g)
        captured.backward_graph.replay()
        ctx.token.done = True
        grads = iter(g.clone() for g in captured.grads)
        inputs = (*captured.inputs, *captured.weights)
        return (None, None, *(next(grads) if t.requires_grad else None for t in inputs))


class GraphedStack:
    """Runs `module(h, pos, edges, edge_attr) -> tuple of [N, ...] / [E, ...] tensors` through CUDA graphs.

    `node_outputs` says which outputs are node-indexed ([N, ...]) and which edge-indexed ([E, ...]).
    `names`: every trainable parameter the module uses (their gradients come out of the backward graph)."""

    def __init__(self, module: torch.nn.Module, names: list[str], node_outputs: tuple[bool, ...]):
        self.module, self.names, self.node_outputs = module, names, node_outputs
        params = dict(module.named_parameters())
        self.params = [params[n] for n in names]
        self.graphs: OrderedDict[tuple, Captured] = OrderedDict()
        self.pool = self.stream = None
        self.in_flight = lambda: None  # weak reference to the _InFlight of the last replayed forward
        self.failures: dict[tuple, int] = {}  # failed captures per bucket
        self.captures, self.capture_seconds = 0, 0.0  # so far, failed ones included

    @staticmethod
    def usable(h: torch.Tensor) -> bool:
        return h.is_cuda and torch.is_grad_enabled() and not torch.cuda.is_current_stream_capturing()

    def _capture(self, key, inputs) -> Captured | None:
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            # One capture stream per stack, not one per bucket: the caching allocator keeps the eager warm-up's
            # freed blocks for the stream they were made on, so a new stream per bucket would strand them.
            self.stream = torch.cuda.Stream()
        start = time.perf_counter()
        self.captures += 1
        try:
            captured = Captured(self.module, self.names, self.params, inputs, self.pool, self.stream)
            self.graphs[key] = captured
        except RuntimeError as error:  # a capture the driver refused: run this bucket eagerly, try again later
            self.failures[key] = self.failures.get(key, 0) + 1
            warnings.warn(f"CUDA graph capture failed for {key[:2]} nodes/edges (attempt {self.failures[key]} of "
                          f"{MAX_CAPTURE_FAILURES}); running eagerly: {str(error).splitlines()[0]}")
            torch.cuda.synchronize()
            return None
        finally:
            self.capture_seconds += time.perf_counter() - start
        while len(self.graphs) > MAX_BUCKETS:
            self.graphs.popitem(last=False)
        return captured

    def __call__(self, h, pos, edges, edge_attr):
        n, e = h.shape[0], edges.shape[1]
        n_pad, e_pad = bucket(n + 2), bucket(e)
        key = (n_pad, e_pad, h.dtype, edge_attr.dtype, h.requires_grad, pos.requires_grad, edge_attr.requires_grad,
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        last = self.in_flight()
        if last is not None and not last.done:  # its saved activations live in the shared pool: keep them
            return self.module(h, pos, edges, edge_attr)
        captured = self.graphs.get(key)
        if captured is None and self.failures.get(key, 0) >= MAX_CAPTURE_FAILURES:
            return self.module(h, pos, edges, edge_attr)
        inputs = pad_graph(h, pos, edges, edge_attr, n_pad, e_pad)
        with torch.autocast("cuda", enabled=key[-2], dtype=key[-1], cache_enabled=False):
            if captured is None:
                captured = self._capture(key, inputs)
                if captured is None:
                    return self.module(h, pos, edges, edge_attr)
            self.graphs.move_to_end(key)
            token = _InFlight()
            self.in_flight = weakref.ref(token)
            outs = _Replay.apply(captured, token, *inputs, *self.params)
        return tuple(o[:n] if node else o[:e] for o, node in zip(outs, self.node_outputs))


def pad_graph(h, pos, edges, edge_attr, n_pad: int, e_pad: int):
    """Inputs padded to `n_pad` nodes (>= n + 2) and `e_pad` edges; padding edges join the last two padding nodes."""
    n, e = h.shape[0], edges.shape[1]
    far = pos.detach().abs().max() + 100.0  # outside every real item, so no geometry is shared with them
    pad_pos = torch.zeros(n_pad - n, 3, dtype=pos.dtype, device=pos.device)
    pad_pos[:, 0] = far + torch.arange(n_pad - n, dtype=pos.dtype, device=pos.device)  # distinct points
    pad_edges = torch.stack((edges.new_full((e_pad - e,), n_pad - 1), edges.new_full((e_pad - e,), n_pad - 2)))
    return (torch.nn.functional.pad(h, (0, 0, 0, n_pad - n)), torch.cat((pos, pad_pos)),
            torch.cat((edges, pad_edges), dim=1), torch.nn.functional.pad(edge_attr, (0, 0, 0, e_pad - e)))


def enable_cuda_graphs(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn CUDA graphs on (or off) for every encoder of `model` that supports them; returns how many."""
    encoders = [m for m in model.modules() if hasattr(m, "use_cuda_graphs")]
    for m in encoders:
        m.use_cuda_graphs(enabled)
    return len(encoders)


def capture_stats(model: torch.nn.Module) -> tuple[int, float]:
    """(captures, seconds spent capturing) so far, over every graphed encoder of `model`. Each new size bucket
    costs one capture; many in a late epoch mean more buckets than MAX_BUCKETS are in use."""
    stacks = [m.cuda_graphs for m in model.modules() if getattr(m, "cuda_graphs", None) is not None]
    return sum(s.captures for s in stacks), sum(s.capture_seconds for s in stacks)
