"""A local Ray that starts: on a Ray without its dashboard packages (ray[train,tune] without "default") it starts
without the dashboard, says so in one warning, and runs tasks; a start that fails (here: the dashboard's port is
taken) is retried once without the dashboard, saying so. (That every port is on loopback: test_faults.)

The programs run in subprocesses: hiding `ray.dashboard.optional_deps` (a None entry in sys.modules makes its
import raise ImportError, in our check and in Ray's own) must not leak into the other tests' Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = r"""
import os, sys
sys.modules["ray.dashboard.optional_deps"] = None  # as if aiohttp_cors, opencensus, ... were not installed
import ray
from atomica_ray.train.launch import init_ray

init_ray(num_cpus=1)

@ray.remote
def square(x):
    return x * x

print("result", ray.get([square.remote(i) for i in range(4)]))
print("RAY_API_SERVER_ADDRESS", os.environ.get("RAY_API_SERVER_ADDRESS"))
ray.shutdown()
"""


def test_init_ray_without_dashboard_packages(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "result [0, 1, 4, 9]" in proc.stdout, out
    # pinned to a closed loopback port, so that the cleaner cannot ask another local cluster
    assert "RAY_API_SERVER_ADDRESS http://127.0.0.1:" in proc.stdout, out
    warnings = [line for line in proc.stderr.splitlines() if "without its dashboard" in line]
    assert len(warnings) == 1, out
    assert "import ray.dashboard.optional_deps failed" in warnings[0], out
    assert "state API" in warnings[0] and "placement-group cleaner" in warnings[0], out


FALLBACK = r"""
import socket
import ray
from atomica_ray.train.launch import start_local_ray

taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()  # the dashboard's port is taken: Ray's start fails
print("LINE", start_local_ray(num_cpus=1, dashboard_port=taken.getsockname()[1]))
print("RESULT", ray.get(ray.remote(lambda: 7).remote()))
ray.shutdown()
"""


def test_failed_start_is_retried_once_without_the_dashboard(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                                                            "RAY_GCS_SERVER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", FALLBACK], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "RESULT 7" in proc.stdout, out
    retries = [line for line in proc.stderr.splitlines() if "retrying without its dashboard" in line]
    assert len(retries) == 1 and retries[0].startswith("local Ray did not start ("), out
    assert "LINE local Ray on 127.0.0.1: 1 CPUs, no dashboard" in proc.stdout, out
