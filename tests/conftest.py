"""Fixtures shared by test modules, and a summary that names the failures of a run ended by `timeout`."""

import os
import signal
import threading

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


# ---- a run ended by `timeout` or a CI time cap still names its failures -------------------------------------------
# `timeout` ends pytest with SIGTERM, which would kill it before the summary. Turned into Ctrl-C, pytest stops and
# prints the failures so far and the test that was running. Ray's ray.init() installs its own SIGTERM handler
# (sys.exit): the handler is set again before each test phase, and a SIGTERM that still arrives as SystemExit
# stops the session the same way.
_running = ""


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum} during {_running}")


def _watch(item) -> None:
    global _running
    _running = item.nodeid
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


pytest_runtest_setup = pytest.hookimpl(tryfirst=True)(_watch)
pytest_runtest_call = pytest.hookimpl(tryfirst=True)(_watch)
pytest_runtest_teardown = pytest.hookimpl(tryfirst=True)(lambda item, nextitem: _watch(item))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    error = call.excinfo
    if error is not None and error.errisinstance(SystemExit) and error.value.code == signal.SIGTERM:
        item.session.shouldstop = f"stopped by signal {signal.SIGTERM} during {item.nodeid}"
