"""Fixtures shared by test modules."""

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (4 logical CPUs) for one test module, started as `atomica-ray train` starts it."""
    import ray

    from atomica_ray.train.launch import init_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    api = os.environ.get("RAY_API_SERVER_ADDRESS")
    init_ray(num_cpus=4)
    yield
    ray.shutdown()
    if api is None:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
