"""The local Ray that `atomica-ray train` and `tune` start for themselves (outside `ray job submit`, without
--address) is a new one, as the README says, even when a `ray start` cluster runs on the machine (plain
`ray.init()` would join the cluster named in <ray temp dir>/ray_current_cluster), and it takes none of the ports
that a `ray start --head` serves by default, the ones cluster/local-debugging.md sends jobs to: the dashboard and
job API (8265, in the guide's URLs), GCS (6379) and the Ray client (10001). Otherwise a head started after a local
run moves its dashboard to another port, and `ray job submit --address http://127.0.0.1:8265` reaches the local
run's Ray instead.

Both are started in one subprocess, as the commands start them (launch.init_ray, sweep.start_ray), with a private
Ray temp dir whose ray_current_cluster names a cluster (one that has ended: the file outlives it), and every
listening socket of that process tree is read with psutil.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts two local Rays

PROGRAM = r"""
import json, os
import ray
import psutil  # Ray's bundled copy, on sys.path once ray is imported

from atomica_ray.train import launch
from atomica_ray.tune import sweep

# `atomica-ray tune` starts its Ray with sweep.start_ray where the tune layer has its own, else with the engine's
start_ray = getattr(sweep, "start_ray", launch.init_ray)
stop_ray = getattr(sweep, "stop_ray", None) or getattr(launch, "shutdown_ray", ray.shutdown)
init_ray = launch.init_ray
shutdown = getattr(launch, "shutdown_ray", ray.shutdown)


def listening():
    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return sorted(found)


out = {}
start_ray(None, 1)  # atomica-ray tune
out["tune"] = {"dashboard": ray._private.worker.get_dashboard_url(), "listening": listening()}
stop_ray()
init_ray(None, 1)  # atomica-ray train
out["train"] = {"dashboard": ray._private.worker.get_dashboard_url(), "listening": listening()}
shutdown()
print("PORTS " + json.dumps(out))
"""


def guide_ports() -> set[int]:
    from ray._private import ray_constants

    guide = (ROOT / "cluster" / "local-debugging.md").read_text()
    urls = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", guide)}
    assert urls == {ray_constants.DEFAULT_DASHBOARD_PORT}, urls  # the guide's head keeps Ray's default
    return urls | {ray_constants.DEFAULT_PORT, 10001}


def test_local_ray_of_train_and_tune_is_new_and_leaves_the_heads_ports_free(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="arports-", dir="/tmp"))  # short: Ray's socket paths stay < 108 chars
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # the last `ray start` on this machine
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    try:
        proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PORTS "))[6:])
    head = guide_ports()
    for command, seen in found.items():
        ports = {port for _, port in seen["listening"]}
        assert len(ports) >= 4, (command, seen)  # GCS, raylet, dashboard, agents: the processes were seen
        assert not ports & head, f"atomica-ray {command}'s local Ray listens on {sorted(ports & head)}"
        dashboard = int(seen["dashboard"].rsplit(":", 1)[1])
        assert dashboard in ports and dashboard not in head, (command, seen)
        assert ["127.0.0.1", dashboard] in seen["listening"], f"{command}: dashboard beyond loopback: {seen}"
