"""The tensor product's backend switch (models/kernels/tensor_product.py): names are checked, each backend falls
back where it does not apply, and every backend that runs here computes the torch path's function.

On a CPU-only machine the Triton kernels run in Triton's interpreter (tests/test_fused_contraction.py) and the
libraries (cuEquivariance, OpenEquivariance) do not run at all; on a GPU, the library cases below compare them
with the fp32 torch path (benchmarks/check_backends.py does so for every tensor product of the released model).
"""

import pytest
import torch

from atomica_ray.models.equivariant import TensorProductConv
from atomica_ray.models.kernels import BACKENDS, get_backend, libraries, set_backend, tensor_product


@pytest.fixture
def backend():
    before = get_backend()
    yield set_backend
    set_backend(before)


def _conv():
    torch.manual_seed(0)
    return TensorProductConv("8x0e + 4x1o + 4x2e", "1x0e + 1x1o + 1x2e", "16x0e + 16x1o", 12)


def test_unknown_backend_is_refused_with_the_choices(backend):
    with pytest.raises(ValueError, match="unknown tensor-product backend 'cuda'.*auto, torch, triton"):
        backend("cuda")
    assert set(BACKENDS) == {"auto", "torch", "triton", "cuequivariance", "openequivariance"}


def test_each_backend_falls_back_where_it_does_not_apply_on_a_cpu(backend):
    stp = _conv().stacked_tp
    hidden = torch.randn(5, 12)
    for name, expected in (("auto", "torch"), ("torch", "torch"), ("cuequivariance", "torch"),
                           ("openequivariance", "torch")):
        backend(name)
        assert stp.backend_for(hidden) == expected, name
    backend("auto")
    assert stp.backend_for(hidden.to(torch.bfloat16)) == "torch"  # bf16 on a CPU: no kernels either
    assert not libraries.applies("cuequivariance", stp.irreps, hidden)  # CPU tensors: never a library


def test_auto_runs_the_kernels_in_fp32_only_with_tensor_core_dots_that_fit(backend, monkeypatch):
    """Where the kernels can run (here: Triton's interpreter), "auto" takes them in bf16 and in fp32 with 3xTF32
    dots, keeps cuBLAS for strict fp32 dots (measured an order of magnitude slower) and for tiles over one
    program's shared memory (a hidden size of 200 pads to 256: too large in fp32, not in bf16)."""
    pytest.importorskip("triton")
    from atomica_ray.models.kernels import fused_contraction, triton_common

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backend("auto")
    stp = TensorProductConv("32x0e + 16x1o", "1x0e + 1x1o + 1x2e", "32x0e + 16x1o", 12).stacked_tp
    assert stp.kernel_layout_ok
    hidden = torch.randn(5, 128)
    assert stp.backend_for(hidden) == "triton" and stp.backend_for(hidden.to(torch.bfloat16)) == "triton"
    monkeypatch.setattr(triton_common, "FP32_DOT", "ieee")
    assert stp.backend_for(hidden) == "torch" and stp.backend_for(hidden.to(torch.bfloat16)) == "triton"
    backend("triton")  # asked for by name: strict fp32 dots too
    assert stp.backend_for(hidden) == "triton"
    monkeypatch.setattr(triton_common, "FP32_DOT", "tf32x3")
    wide = torch.randn(5, 200)
    assert fused_contraction.shared_memory(wide) > fused_contraction.SHARED_MEMORY
    assert fused_contraction.shared_memory(wide.to(torch.bfloat16)) <= fused_contraction.SHARED_MEMORY
    assert stp.backend_for(wide) == "torch" and stp.backend_for(wide.to(torch.bfloat16)) == "triton"


def test_backend_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATOMICA_RAY_TP_BACKEND", "torch")
    assert tensor_product.backend_from_environment() == "torch"
    monkeypatch.setenv("ATOMICA_RAY_TP_BACKEND", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        tensor_product.backend_from_environment()
    monkeypatch.delenv("ATOMICA_RAY_TP_BACKEND")
    assert tensor_product.backend_from_environment() == "auto"


def test_torch_backend_is_the_function_of_e3nn(backend):
    conv = _conv()
    x, y = torch.randn(20, conv.tp.irreps_in1.dim), torch.randn(20, 9)
    h = torch.randn(20, 12)
    backend("torch")
    hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
    assert torch.allclose(conv.stacked_tp(x, y, hidden, conv.fc[3]), conv.tp(x, y, conv.fc(h)), atol=1e-5)


@pytest.mark.parametrize("library", libraries.LIBRARIES)
def test_library_backend_matches_the_torch_path_on_a_gpu(backend, library):
    if not torch.cuda.is_available():
        pytest.skip("the libraries' kernels need a CUDA device")
    if not libraries.available(library):
        extra = {"cuequivariance": "cueq", "openequivariance": "oeq"}[library]
        pytest.skip(f"{library} is not installed (pip install 'atomica-ray[{extra}]', README: Performance)")
    conv = _conv().cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, conv.tp.irreps_in1.dim, device="cuda", generator=gen, requires_grad=True)
    y = torch.randn(300, 9, device="cuda", generator=gen)
    h = torch.randn(300, 12, device="cuda", generator=gen, requires_grad=True)
    g = torch.randn(300, conv.tp.irreps_out.dim, device="cuda", generator=gen)
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for name in ("torch", library):
        backend(name)
        hidden = conv.fc[2](conv.fc[1](conv.fc[0](h)))
        assert conv.stacked_tp.backend_for(hidden) == name
        out = conv.stacked_tp(x, y, hidden, conv.fc[3])
        results.append([out, *torch.autograd.grad(out, [x, h, conv.fc[3].weight], g)])
    for a, b in zip(*results):
        assert ((a - b).norm() / a.norm()).item() < 1e-4
