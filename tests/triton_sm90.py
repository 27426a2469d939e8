"""Compile Triton kernels for an H100 (sm_90, Triton's bundled ptxas) without a GPU: the interpreter accepts code
that the GPU compiler rejects, so the kernel tests check both."""

import os
import subprocess
import sys

import pytest


def compile_for_sm90(script: str, tmp_path, expected: int) -> None:
    """Run `script` (which prints `COMPILED <n>`) in a fresh interpreter-free process with an empty Triton cache."""
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("Triton without its bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from another run's cache
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"COMPILED {expected}" in done.stdout, done.stdout
