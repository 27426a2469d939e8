"""Fixtures shared by test modules."""

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (4 logical CPUs, on 127.0.0.1) for one test module, started as `atomica-ray train` starts it."""
    from atomica_ray.train.launch import init_ray, shutdown_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(num_cpus=4)
    yield
    shutdown_ray()  # and forget the addresses it exported, so the next module starts its own
