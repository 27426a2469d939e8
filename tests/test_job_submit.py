"""A real job submission: `ray start --head` on loopback with Ray's token authentication, then
`ray job submit --working-dir . -- atomica-ray train ...`, as a user would do it.

The token is handed to Ray the documented way (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<file>) for both
`ray start` and `ray job submit`. The head is stopped by killing the processes of this test's own Ray session
(found by its private --temp-dir), never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(marker: str) -> list[int]:
    """PIDs of the processes whose command line names `marker`, and all their descendants."""
    parent, cmdline = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = {pid for pid, cmd in cmdline.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, ppid in parent.items() if ppid in found and pid not in found}
        found |= children
        grew = bool(children)
    return sorted(found)


def stop_session(marker: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
        pids = session_processes(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while pids and time.time() < deadline and session_processes(marker):
            time.sleep(0.2)


def run(cmd: list[str], env: dict, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_for_job(address: str, job_id: str, env: dict, timeout: float) -> str:
    """The job's final status line (lower case), or the last one seen when `timeout` passes."""
    status, deadline = "", time.time() + timeout
    while time.time() < deadline:
        out = run(["ray", "job", "status", "--address", address, job_id], env, 60)
        status = (out.stdout + out.stderr).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    return status


def test_job_submit_trains_and_checkpoints():
    if shutil.which("ray") is None or shutil.which("atomica-ray") is None:
        pytest.skip("needs the `ray` and `atomica-ray` commands on PATH (pip install -e .)")
    from atomica_ray.data.demo import write_demo_splits

    work = Path(tempfile.mkdtemp(prefix="arjob-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    ray_tmp = work / "ray"
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    port, dashboard = free_port(), free_port()
    # Ray Train's placement-group cleaner must query this cluster's state API, not the latest `ray start` on the
    # machine (see atomica_ray.train.launch.init_ray)
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    data = write_demo_splits(str(work / "data"), n_train=12, n_valid=8, seed=3)
    storage = work / "runs"
    try:
        start = run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                     f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                     "--include-dashboard=true", f"--temp-dir={ray_tmp}", "--disable-usage-stats"], env, 120)
        assert start.returncode == 0, start.stdout + start.stderr
        address = f"http://127.0.0.1:{dashboard}"

        # the head really demands the token: a client without it is refused
        no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        refused = run(["ray", "job", "list", "--address", address], no_token, 60)
        assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()

        job_id = f"atomica-{secrets.token_hex(4)}"
        train = ["atomica-ray", "train", "--task", "binary_classifier", "--train_set", data["train"],
                 "--valid_set", data["valid"], "--max_epoch", "1", "--num-workers", "2",
                 "--storage-path", str(storage), "--name", "job-run", "--fragmentation_method", "PS_300",
                 "--atom_hidden_size", "8", "--block_hidden_size", "8", "--edge_size", "8", "--n_layers", "1",
                 "--k_neighbors", "4", "--max_n_vertex_per_gpu", "150", "--no-progress-bar"]
        deadline = time.time() + 120
        while True:  # right after `ray start` the head's job agent may not be up yet: Ray says to retry
            submit = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id",
                          job_id, "--no-wait", "--", *train], env, 120, cwd=ROOT)
            if submit.returncode == 0 or "No available agent" not in submit.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        status = ""
        deadline = time.time() + 300
        while time.time() < deadline:
            out = run(["ray", "job", "status", "--address", address, job_id], env, 60)
            status = (out.stdout + out.stderr).lower()  # "... Job 'id' succeeded" / "failed" / "stopped"
            if any(s in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(2)
        logs = run(["ray", "job", "logs", "--address", address, job_id], env, 60).stdout
        assert "succeeded" in status, f"job status: {status}\n--- job logs ---\n{logs[-6000:]}"

        run_dir = storage / "job-run"
        checkpoints = sorted(run_dir.glob("checkpoint_epoch0000_*"))
        assert checkpoints, f"no checkpoint in {run_dir}: {list(run_dir.iterdir()) if run_dir.exists() else None}"
        assert (checkpoints[0] / "model" / "config.json").is_file()
        assert (checkpoints[0] / "train_state.pt").is_file()
        assert (run_dir / "metrics_history.jsonl").is_file()
        assert "val_bce" in logs  # the driver printed the final metrics

        # the run directory, handed to `atomica-ray predict` in a second job: its best checkpoint (by val_bce), on
        # the Ray Data pipeline of the job's cluster (the job's driver joins it through RAY_ADDRESS)
        predictions = work / "pred.parquet"
        predict_id = f"atomica-predict-{secrets.token_hex(4)}"
        predict = ["atomica-ray", "predict", "--checkpoint", str(run_dir), "--data_path", data["valid"],
                   "--output_path", str(predictions), "--device", "cpu", "--shard_items", "4"]
        submit = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id",
                      predict_id, "--no-wait", "--", *predict], env, 120, cwd=ROOT)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        status = wait_for_job(address, predict_id, env, 300)
        logs = run(["ray", "job", "logs", "--address", address, predict_id], env, 60).stdout
        assert "succeeded" in status, f"job status: {status}\n--- job logs ---\n{logs[-6000:]}"
        assert "checkpoint_epoch0000" in logs and "predict: predicted 8 items" in logs
        assert pq.read_table(predictions).num_rows == 8
    finally:
        stop_session(str(ray_tmp))
        assert not session_processes(str(ray_tmp)), "the test's Ray head is still running"
        shutil.rmtree(work, ignore_errors=True)
