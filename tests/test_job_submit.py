"""A real job submission: a head started with the local guide's own `ray start --head` command
(cluster/local-debugging.md, with this test's ports and temp dir), Ray's token authentication, then
`ray job submit --working-dir . -- atomica-ray train ...`, as a user would do it; then `predict` on the run
directory and `process` of the example structure files, each as a job on the same cluster.

The guide's claims are checked on the running head: every port its processes listen on is a loopback one, and the
job agent answers on its own port (not Ray's fixed 52365, which another Ray on a shared machine may hold: then
the agent serves no jobs and every submission fails with "No available agent to submit job"). Waits are
conditions with generous deadlines: a loaded 2-core machine may take minutes to start a head.

The token is handed to Ray the documented way (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<file>) for both
`ray start` and `ray job submit`. The head is stopped by killing the processes of this test's own Ray session
(found by its private --temp-dir), never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "cluster" / "local-debugging.md"
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


def wait_for(condition, deadline_s: float, what: str, every_s: float = 1.0):
    """Poll `condition()` until it returns something true; fail naming `what` after `deadline_s` seconds."""
    deadline = time.time() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"{what}: not after {deadline_s:.0f} s")
        time.sleep(every_s)


def guide_head_commands() -> tuple[dict[str, str], list[str], list[str]]:
    """The guide's first `ray start --head` block: the environment it exports (or puts before the command), the
    argv of `ray start --head` and of the command after it (`ray status`)."""
    text = GUIDE.read_text().replace("\\\n", " ")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "ray start --head" in b)
    lines = [shlex.split(line) for line in block.splitlines() if line.strip()]
    start = next(i for i, words in enumerate(lines) if "ray" in words and words[words.index("ray"):][:3] == [
        "ray", "start", "--head"])
    env = {}
    for words in lines[:start] + [lines[start][: lines[start].index("ray")]]:
        assignments = words[1:] if words[:1] == ["export"] else words
        env.update(w.split("=", 1) for w in assignments if re.match(r"\w+=", w))
    head = lines[start][lines[start].index("ray"):]
    return env, head, lines[start + 1]


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def listening(marker: str) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of the session's processes."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    found = []
    for pid in session_processes(marker):
        try:
            process = psutil.Process(pid)
            found += [(process.name(), c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:  # ended meanwhile
            continue
    return found


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except urllib.error.HTTPError:  # it answered (e.g. 401 without the token)
        return True
    except OSError:
        return False


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
    port, dashboard, agent = free_port(), free_port(), free_port()
    # Ray Train's placement-group cleaner must query this cluster's state API, not the latest `ray start` on the
    # machine (see atomica_ray.train.launch.init_ray)
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    data = write_demo_splits(str(work / "data"), n_train=12, n_valid=8, seed=3)
    storage = work / "runs"
    guide_env, head, status = guide_head_commands()
    assert status[:2] == ["ray", "status"], status
    # the guide's command with this test's ports (the guide's agent port 0 means "a free one": here a known free
    # one, to wait on), temp dir and CPUs
    head = [a for a in head if not a.startswith(("--port", "--dashboard-port", "--dashboard-agent-listen-port"))]
    head += [f"--port={port}", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
             "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={ray_tmp}", "--disable-usage-stats"]
    try:
        start = run(head, {**env, **guide_env}, 300)
        assert start.returncode == 0, start.stdout + start.stderr
        address = f"http://127.0.0.1:{dashboard}"

        # the job agent is up once its HTTP port answers; until then the head refuses submissions
        wait_for(lambda: answers(f"http://127.0.0.1:{agent}/api/healthz"), 300, f"the job agent on port {agent}")
        # the guide's next command works in the guide's shell
        checked = run([*status, f"--address=127.0.0.1:{port}"], {**env, **guide_env}, 300)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # the guide's claim: nothing of this cluster listens beyond loopback
        sockets = listening(str(ray_tmp))
        assert {p for _, _, p in sockets} >= {port, dashboard, agent}, sockets
        assert [s for s in sockets if not is_loopback(s[1])] == [], "listening beyond loopback"

        # the head really demands the token: a client without it is refused
        no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        refused = run(["ray", "job", "list", "--address", address], no_token, 120)
        assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()

        job_id = f"atomica-{secrets.token_hex(4)}"
        train = ["atomica-ray", "train", "--task", "binary_classifier", "--train_set", data["train"],
                 "--valid_set", data["valid"], "--max_epoch", "1", "--num-workers", "2",
                 "--storage-path", str(storage), "--name", "job-run", "--fragmentation_method", "PS_300",
                 "--atom_hidden_size", "8", "--block_hidden_size", "8", "--edge_size", "8", "--n_layers", "1",
                 "--k_neighbors", "4", "--max_n_vertex_per_gpu", "150", "--no-progress-bar"]

        def submitted():  # the head may still be registering its agent: Ray says to try again
            result = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id",
                          job_id, "--no-wait", "--", *train], env, 300, cwd=ROOT)
            if result.returncode != 0 and "No available agent" in result.stderr:
                return None
            return result

        submit = wait_for(submitted, 300, "the head accepting the job (No available agent to submit job)", 2)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        def finished():
            out = run(["ray", "job", "status", "--address", address, job_id], env, 120)
            status = (out.stdout + out.stderr).lower()  # "... Job 'id' succeeded" / "failed" / "stopped"
            return status if any(s in status for s in ("succeeded", "failed", "stopped")) else None

        status = wait_for(finished, 600, f"job {job_id} finishing", 2)
        logs = run(["ray", "job", "logs", "--address", address, job_id], env, 120).stdout
        assert "succeeded" in status, f"job status: {status}\n--- job logs ---\n{logs[-6000:]}"

        run_dir = storage / "job-run"
        checkpoints = sorted(run_dir.glob("checkpoint_epoch0000_*"))
        assert checkpoints, f"no checkpoint in {run_dir}: {list(run_dir.iterdir()) if run_dir.exists() else None}"
        assert (checkpoints[0] / "model" / "config.json").is_file()
        assert (checkpoints[0] / "train_state.pt").is_file()
        assert (run_dir / "metrics_history.jsonl").is_file()
        assert "val_bce" in logs  # the driver printed the final metrics

        # the run directory, handed to `atomica-ray predict` in a second job: its best checkpoint (by the task's
        # selection metric), on the Ray Data pipeline of the job's cluster (the job's driver joins it: RAY_ADDRESS)
        predictions = work / "pred.parquet"
        predict_id = f"atomica-predict-{secrets.token_hex(4)}"
        predict = ["atomica-ray", "predict", "--checkpoint", str(run_dir), "--data_path", data["valid"],
                   "--output_path", str(predictions), "--device", "cpu", "--shard_items", "4"]
        submit = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id",
                      predict_id, "--no-wait", "--", *predict], env, 120, cwd=ROOT)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        job_id = predict_id  # what finished() asks about
        status = wait_for(finished, 600, f"job {predict_id} finishing", 2)
        logs = run(["ray", "job", "logs", "--address", address, predict_id], env, 120).stdout
        assert "succeeded" in status, f"job status: {status}\n--- job logs ---\n{logs[-6000:]}"
        assert "checkpoint_epoch0000" in logs and "predict: predicted 8 items" in logs
        assert pq.read_table(predictions).num_rows == 8

        # structure files -> items on the job's cluster (`process` joins it through RAY_ADDRESS, as train does)
        try:
            import gemmi  # noqa: F401
        except ImportError:
            return  # the structures extra is not installed: `process` refuses before Ray (tests/test_cli_process.py)
        processed = work / "complexes"
        process_id = f"atomica-process-{secrets.token_hex(4)}"
        process = ["atomica-ray", "process", "examples/structures/index.csv", "--out", str(processed),
                   "--fragmentation_method", "none", "--no-progress"]
        submit = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id",
                      process_id, "--no-wait", "--", *process], env, 120, cwd=ROOT)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        job_id = process_id
        status = wait_for(finished, 600, f"job {process_id} finishing", 2)
        logs = run(["ray", "job", "logs", "--address", address, process_id], env, 120).stdout
        assert "succeeded" in status, f"job status: {status}\n--- job logs ---\n{logs[-6000:]}"
        assert "wrote 6 items from 6 of 6 rows" in logs, logs[-3000:]
        from atomica_ray.data.parquet import ParquetItems

        assert len(ParquetItems(str(processed))) == 6
    finally:
        stop_session(str(ray_tmp))
        assert not session_processes(str(ray_tmp)), "the test's Ray head is still running"
        shutil.rmtree(work, ignore_errors=True)
