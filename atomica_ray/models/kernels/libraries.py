"""Maintained equivariant kernel libraries as tensor-product backends: NVIDIA's cuEquivariance
(`cuequivariance_torch.FullyConnectedTensorProduct`, its CUDA "fused_tp" kernel) and OpenEquivariance
(`openequivariance.TensorProduct`, JIT-compiled CUDA kernels).

Both take the per-edge weights whole ([E, weight_numel], in e3nn's order: both libraries state e3nn compatibility
for a fully connected "uvw" tensor product; tests/test_kernels_backends.py on a GPU and
`benchmarks/bench_contraction.py --backend NAME --check` hold them to the fp32 torch path), so with them the
Linear's output is made and kept for backward, which the Triton kernels avoid (fused_contraction.py): at the
released configuration that is E x 11264 values per layer.
Which backend wins at this model's sizes is measured in benchmarks/RESULTS.md ("Issue 18 (round 2)").

Neither library is a dependency: each is used only where it imports (`pip install 'atomica-ray[cueq]'` or
`[oeq]`, see pyproject.toml), on a CUDA device, and in the dtypes it supports; elsewhere the switch falls back.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

LIBRARIES = ("cuequivariance", "openequivariance")


class Spec(NamedTuple):
    """A tensor product as the libraries build it: e3nn irreps strings and (i_in1, i_in2, i_out, path weight) of
    each "uvw" instruction, in e3nn's order."""
    irreps_in1: str
    irreps_in2: str
    irreps_out: str
    instructions: tuple


_modules: dict = {}  # (library, spec, device, dtype) -> the library's module (no parameters: weights are inputs)
_imports: dict = {}  # library -> module or None


def _import(library: str):
    if library not in _imports:
        try:
            if library == "cuequivariance":
                _imports[library] = (importlib.import_module("cuequivariance"),
                                     importlib.import_module("cuequivariance_torch"))
            else:
                _imports[library] = importlib.import_module("openequivariance")
        except Exception:  # not installed, or its CUDA extension does not load here
            _imports[library] = None
    return _imports[library]


def available(library: str) -> bool:
    return _import(library) is not None


def _dtype(library: str, hidden: torch.Tensor) -> torch.dtype:
    """The dtype the library computes in: the autocast dtype under autocast, else hidden's."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return hidden.dtype


def applies(library: str, spec: Spec, hidden: torch.Tensor) -> bool:
    if not hidden.is_cuda or not available(library):
        return False
    dtype = _dtype(library, hidden)
    if library == "openequivariance":  # fp32 / fp64 kernels only
        return dtype in (torch.float32, torch.float64)
    return dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _build(library: str, spec: Spec, device: torch.device, dtype: torch.dtype):
    if library == "cuequivariance":
        cue, cuet = _import(library)
        return cuet.FullyConnectedTensorProduct(
            cue.Irreps("O3", spec.irreps_in1), cue.Irreps("O3", spec.irreps_in2), cue.Irreps("O3", spec.irreps_out),
            layout=cue.mul_ir, shared_weights=False, internal_weights=False, device=device, dtype=dtype,
            # its fused kernel computes in fp32 or fp64 only; bf16 / fp16 inputs are accumulated in fp32
            math_dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    oeq = _import(library)
    import numpy as np

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    # e3nn's default normalisation ("component", "element"), as o3.FullyConnectedTensorProduct: OEQ computes the
    # same path weights from the instructions
    problem = oeq.TPProblem(spec.irreps_in1, spec.irreps_in2, spec.irreps_out,
                            [(i1, i2, io, "uvw", True) for i1, i2, io, _ in spec.instructions],
                            shared_weights=False, internal_weights=False, irrep_dtype=np_dtype, weight_dtype=np_dtype)
    return oeq.TensorProduct(problem).to(device)


def tensor_product(library: str, spec: Spec, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """TP(x, y) with per-edge weights `weight` [E, numel] (e3nn order), by `library`, in its compute dtype."""
    dtype = _dtype(library, weight)
    key = (library, spec, x.device, dtype)
    if key not in _modules:
        _modules[key] = _build(library, spec, x.device, dtype)
    module = _modules[key]
    with torch.autocast(x.device.type, enabled=False):
        weight = weight.to(dtype)
        if library == "openequivariance":
            weight = module.reorder_weights_from_e3nn(weight, True)  # its kernels' order
        return module(x.to(dtype), y.to(dtype), weight)
