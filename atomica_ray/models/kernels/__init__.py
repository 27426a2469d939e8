"""The tensor product's execution backends, apart from the model classes (models/ holds ATOMICA's classes, the
checkpoint contract; this package holds how their tensor products and layer stacks run):

- tensor_product.py   the public operation (`StackedTensorProduct`: e3nn's fully connected tensor product with
                      per-edge weights) and the switch that picks its backend (`set_backend`), with the torch
                      path (CPU; cuBLAS on a GPU) that every other backend is checked against
- fused_projection.py, fused_contraction.py   the Triton kernels (triton_common.py: what both share)
- libraries.py        cuEquivariance and OpenEquivariance behind the same switch, where installed
- cuda_graphs.py      CUDA graphs of an encoder's layer stack over bucketed graph sizes

As e3nn's o3/_tensor_product/ keeps `TensorProduct` apart from its code generators: the model code calls
`StackedTensorProduct` and never a backend directly.
"""

from .cuda_graphs import capture_stats, enable_cuda_graphs
from .tensor_product import BACKENDS, StackedTensorProduct, get_backend, set_backend

__all__ = ["BACKENDS", "StackedTensorProduct", "capture_stats", "enable_cuda_graphs", "get_backend", "set_backend"]
