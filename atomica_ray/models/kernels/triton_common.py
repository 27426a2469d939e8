"""What both Triton modules (fused_contraction.py, fused_projection.py) need, written once: the optional import,
when the kernels may run, the dot precision that follows torch's TF32 switch, and the edge tile of a program."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path is used
    triton = None
    tl = None


def interpreting() -> bool:
    """Triton's interpreter (numpy on the CPU) is on: the tests run the kernels without a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def runnable(t: torch.Tensor) -> bool:
    """Triton imports and `t` is on a CUDA device (or the interpreter is on)."""
    return triton is not None and (t.is_cuda or interpreting())


# tl.dot of fp32 operands with TF32 off: "tf32x3" splits each operand into a TF32 head and a TF32 tail and sums
# head*head + head*tail + tail*head in fp32 (the "3xTF32" of CUTLASS): three tensor-core products whose error,
# about 2^-21 of each product, is near fp32 rounding, where "ieee" (strict fp32 FMAs, no tensor cores) is an order
# of magnitude slower on this kernel (benchmarks/RESULTS.md, issue 16). Set "ieee" for bit-faithful fp32 dots.
FP32_DOT = "tf32x3"


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp32 operands follow torch's TF32 switch ("tf32" when on, as cuBLAS does for the
    same matmul), else FP32_DOT; other dtypes are exact products."""
    if dtype != torch.float32:
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else FP32_DOT


if triton is not None:
    TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def edge_tile(E, BE: tl.constexpr):
        """This program's BE edges (int64, so that row offsets of large buffers cannot overflow) and which exist."""
        e = tl.program_id(0).to(tl.int64) * BE + tl.arange(0, BE)  # [BE]
        return e, e < E
