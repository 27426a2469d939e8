"""Elastic training and preemption on a real multi-node Ray on one machine (`ray.cluster_utils.Cluster`: a head
without CPUs and one-CPU worker nodes, each node its own raylet).

One elastic run (`num_workers 1:2`) lives through what a spot cluster does to it, mid-epoch each time (the run
waits at the listed optimizer steps: config `hold_at_steps`, a test hook):
  step 2: a worker node is removed (its processes killed)    -> the run goes on with 1 worker,
  step 4: a node is added                                   -> the run grows back to 2 workers,
  step 9: a node is drained the way the autoscaler preempts a spot node (`ray drain-node --reason
          DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N`), then removed
                                                            -> a just-in-time checkpoint at step 9 is written, and
                                                               the run resumes from it on 1 worker.
Each test checks what the user sees in metrics_history.jsonl: every epoch once, every step once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from atomica_ray.train.config import TrainConfig

pytestmark = pytest.mark.slow
HOLDS = (2, 4, 9)  # remove a node, add one, preempt one (epoch 0 has 7 steps of 2 batches, epoch 1 has 8)
DRAIN_DEADLINE_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, failed=lambda: None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        error = failed()
        if error is not None:
            raise AssertionError(f"the run ended ({error!r}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def refresh_resource_view() -> None:
    """Make Ray's AutoscalingCoordinator look at the cluster's nodes now, as its 20 s tick would: the elastic
    policy sizes a worker group from that view, and a test need not wait for the tick."""
    import ray

    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    ray.get(coordinator.get_reserved_resources.remote("atomica-ray-test", recompute=True), timeout=60)


def latest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint Ray Train has committed as the latest (what a restart resumes from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return json.dumps(latest)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    saved = dict(os.environ)
    temp = tempfile.mkdtemp(prefix="arel-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    os.makedirs(os.path.join(temp, "ray"))
    os.environ.update(
        # Cluster writes the address of "the" local cluster to <RAY_TMPDIR>/ray/ray_current_cluster, which a plain
        # ray.init() elsewhere on this machine would join: keep it private
        RAY_TMPDIR=temp,
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0",
        # Ray Train polls the drain state every 5 s by default; a test needs no such wait
        RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5",
        # a placement group asked for a node that just went fails after this long, and Ray retries smaller
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10",
        # no dashboard here: point Train's placement-group cleaner at a closed port, never at another cluster's
        RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{free_port()}",
    )
    c = None
    try:
        c = Cluster(initialize_head=True, connect=True,
                    head_node_args=dict(num_cpus=0, gcs_server_port=free_port(), include_dashboard=False,
                                        temp_dir=temp))
        nodes = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c, nodes
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from atomica_ray.data.demo import write_demo_splits

    return write_demo_splits(str(tmp_path_factory.mktemp("elastic-data")), n_train=24, n_valid=6, seed=4)


@pytest.fixture(scope="module")
def spot_run(cluster, data, tmp_path_factory):
    """The elastic run, and the cluster events driven from a thread while `fit()` runs."""
    from atomica_ray.train.launch import build_trainer

    c, nodes = cluster
    storage = tmp_path_factory.mktemp("elastic-runs")
    run_dir = storage / "spot"
    cfg = TrainConfig.from_dict(dict(
        task="binary_classifier", train_set=data["train"], valid_set=data["valid"], max_epoch=2,
        num_workers="1:2", resize_interval_s=1.0, max_failures=2, max_preemptions=2, preemption_check_steps=1,
        report_every_steps=2, hold_at_steps=list(HOLDS), atom_hidden_size=8, block_hidden_size=8, edge_size=8,
        n_layers=1, k_neighbors=4, max_n_vertex_per_gpu=70, fragmentation_method="PS_300", progress_bar=False,
        tensorboard=False, seed=5, lr=2e-3))
    events: dict = {}
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = build_trainer(cfg, run_name="spot", storage_path=str(storage)).fit()
        except BaseException as error:
            outcome["error"] = error

    def held(step):
        return (run_dir / f".held_at_step_{step}").is_file()

    def committed(name):  # a restart resumes from the latest checkpoint Ray Train has committed
        return name in (latest_checkpoint(run_dir) or "")

    # fit() in a thread: the cluster is driven from this (main) thread, where Ray can start a node
    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    ended = lambda: outcome.get("error")  # noqa: E731
    try:
        wait_for(lambda: held(2), 300, "the hold at step 2", ended)
        events["workers_at_2"] = (run_dir / ".held_at_step_2").read_text()
        wait_for(lambda: committed("step00000002"), 60, "the step-2 checkpoint", ended)
        c.remove_node(nodes[1])  # a node lost without notice: its worker dies with it
        refresh_resource_view()
        wait_for(lambda: held(4), 300, "the hold at step 4 (after the node loss)", ended)
        events["workers_at_4"] = (run_dir / ".held_at_step_4").read_text()
        wait_for(lambda: committed("step00000004"), 60, "the step-4 checkpoint", ended)
        events["added"] = c.add_node(num_cpus=1)
        refresh_resource_view()
        wait_for(lambda: held(9), 300, "the hold at step 9 (after the node was added)", ended)
        events["workers_at_9"] = (run_dir / ".held_at_step_9").read_text()
        victim = events["added"]  # one worker per one-CPU node: it hosts one of the two
        drain = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "drain-node", "--address", c.address,
             "--node-id", victim.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
             "--reason-message", "spot instance reclaimed", "--deadline-remaining-seconds",
             str(DRAIN_DEADLINE_S)], capture_output=True, text=True, timeout=120)
        events["drain"] = drain.returncode, drain.stdout + drain.stderr
        # the cloud takes the node once the just-in-time checkpoint is committed (or at the deadline)
        wait_for(lambda: committed("_preempted"), DRAIN_DEADLINE_S, "the just-in-time checkpoint", ended)
        c.remove_node(victim)
        refresh_resource_view()
        events["preempted"] = True
    except AssertionError as error:  # reported by the tests, after the run has ended one way or another
        events["error"] = error
    thread.join(timeout=600)
    rows = [json.loads(line) for line in (run_dir / "metrics_history.jsonl").read_text().splitlines()]
    return dict(result=outcome.get("result"), rows=rows, events=events, run_dir=run_dir, error=outcome.get("error"))


def at_step(rows, step):
    return [r for r in rows if r["global_step"] == step]


def test_run_survives_and_every_epoch_and_step_counts_once(spot_run):
    assert spot_run["error"] is None, spot_run["error"]
    assert "error" not in spot_run["events"], spot_run["events"]
    rows = spot_run["rows"]
    epochs = [r["epoch"] for r in rows if "train_time_s" in r]  # epoch-end reports
    assert epochs == [0, 1], epochs
    steps = [r["global_step"] for r in rows]
    assert steps == sorted(set(steps)), f"a step was reported twice or out of order: {steps}"
    # as many optimizer steps as an uninterrupted run: the global batch stayed at 2 batches per step on 1 worker
    assert steps[-1] == 7 + 8, steps
    assert spot_run["result"].error is None


def test_node_removed_mid_epoch_run_continues_on_fewer_workers(spot_run):
    rows, events = spot_run["rows"], spot_run["events"]
    assert events["workers_at_2"] == "2"
    assert at_step(rows, 2)[0]["workers"] == 2 and at_step(rows, 2)[0]["epoch"] == 0
    assert events["workers_at_4"] == "1"  # restarted from the step-2 checkpoint on the one node left
    assert at_step(rows, 4)[0]["workers"] == 1 and at_step(rows, 4)[0]["batch"] == 8  # 4 steps x 2 batches


def test_node_added_run_grows(spot_run):
    rows, events = spot_run["rows"], spot_run["events"]
    assert events["workers_at_9"] == "2"
    assert at_step(rows, 6)[0]["workers"] == 2  # grown back before the end of epoch 0


def test_preempted_node_just_in_time_checkpoint_written_and_used(spot_run):
    rows, events, run_dir = spot_run["rows"], spot_run["events"], spot_run["run_dir"]
    assert events["drain"][0] == 0, events["drain"][1]
    assert events.get("preempted"), events
    jit = [r for r in rows if "preempted_ranks" in r]
    assert len(jit) == 1 and jit[0]["global_step"] == 9 and jit[0]["epoch"] == 1 and jit[0]["batch"] == 4
    assert (run_dir / "checkpoint_epoch0001_step00000009_preempted" / "train_state.pt").is_file()
    later = [r for r in rows if r["global_step"] > 9]
    assert later, "nothing reported after the preemption"
    # counted in the just-in-time checkpoint only: the restart resumed from it, on the one node left
    assert all(r["preemptions"] == 1 and r["workers"] == 1 for r in later), later
