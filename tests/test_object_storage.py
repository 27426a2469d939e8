"""Runs and sweeps stored in object storage: `--storage-path s3://...` against a real S3-compatible server (moto's
server mode, a separate process started here), reached the way a user reaches MinIO or S3: credentials in the
environment, the endpoint in AWS_ENDPOINT_URL.

- a training run uploads its checkpoints and metrics, and only the top-k (+ the latest) checkpoints stay in the
  bucket;
- a sweep whose only trial fails mid-run is resumed from the bucket: Tune's state and sweep.json, and the trial's
  Train run relaunched under its name, which resumes from the checkpoint it reads back (as a resubmitted job does);
- the secret key appears in no object of the bucket, no file of the local run directories, and no Ray log.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atomica_ray.train.config import TrainConfig

pytestmark = pytest.mark.slow
BUCKET = "atomica-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server process, its bucket, and the AWS_* environment pointing at it (restored afterwards)."""
    pytest.importorskip("moto.server", reason="needs moto's server mode: pip install -e '.[test]'")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    secret = "atomica-secret-" + secrets.token_hex(12)
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="atomica-test-key", AWS_SECRET_ACCESS_KEY=secret,
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        client = boto3.client("s3")
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"moto server did not come up: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield dict(client=client, secret=secret, bucket=BUCKET)
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def ray_s3(s3):
    """A local Ray started after the AWS_* variables are set, so that its workers inherit them."""
    import ray

    from atomica_ray.train.launch import init_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(num_cpus=4)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    yield session
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from atomica_ray.data.demo import write_demo_splits

    return write_demo_splits(str(tmp_path_factory.mktemp("s3-data")), n_train=16, n_valid=6, seed=8)


def config(data, **changes) -> TrainConfig:
    values = dict(task="binary_classifier", train_set=data["train"], valid_set=data["valid"], max_epoch=2,
                  atom_hidden_size=8, block_hidden_size=8, edge_size=8, n_layers=1, k_neighbors=4,
                  max_n_vertex_per_gpu=70, fragmentation_method="PS_300", progress_bar=False, tensorboard=False,
                  seed=6, lr=2e-3)
    values.update(changes)
    return TrainConfig.from_dict(values)


def objects(s3, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3["client"].get_object(Bucket=s3["bucket"], Key=obj["Key"])["Body"].read()
    return out


def history(blob: bytes) -> list[dict]:
    return [json.loads(line) for line in blob.decode().splitlines()]


def local_run_dir(name: str) -> Path:
    """Where rank 0 keeps its logs when storage is remote (train/loop.py local_run_dir)."""
    return Path.home() / "atomica-ray-runs" / name


def files_with(secret: str, roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def s3_run(ray_s3, s3, data):
    """A one-epoch run on s3:// with checkpoints every 3 steps and save_topk=1."""
    from atomica_ray.train.launch import build_trainer

    name = f"s3run-{secrets.token_hex(3)}"
    cfg = config(data, max_epoch=1, save_topk=1, report_every_steps=3)
    try:
        result = build_trainer(cfg, run_name=name, storage_path=f"s3://{BUCKET}/runs").fit()
        yield dict(result=result, name=name, objects=objects(s3, f"runs/{name}/"))
    finally:
        shutil.rmtree(local_run_dir(name), ignore_errors=True)


def test_run_uploads_checkpoints_and_metrics(s3_run):
    assert s3_run["result"].error is None
    assert s3_run["result"].path.startswith(f"{BUCKET}/runs/{s3_run['name']}")
    found = s3_run["objects"]
    prefix = f"runs/{s3_run['name']}/"
    rows = history(found[prefix + "metrics_history.jsonl"])  # the history next to the checkpoints
    assert [r["epoch"] for r in rows if "train_time_s" in r] == [0]  # the epoch once
    steps = [r["global_step"] for r in rows]
    assert steps[:3] == [3, 6, 9] and steps == sorted(set(steps)), steps
    last = sorted(k for k in found if k.endswith("/metrics_history.jsonl") and "/checkpoint_" in k)[-1]
    assert history(found[last]) == rows  # the latest checkpoint carries the same history


def test_only_top_k_and_latest_checkpoints_stay_in_the_bucket(s3_run):
    found = s3_run["objects"]
    prefix = f"runs/{s3_run['name']}/"
    rows = history(found[prefix + "metrics_history.jsonl"])
    kept = sorted({k[len(prefix):].split("/")[0] for k in found if k[len(prefix):].startswith("checkpoint_epoch")})
    # save_topk=1: the validated epoch-end checkpoint (the best, also the latest); the mid-epoch ones were deleted
    assert len(rows) >= 4 and kept == [f"checkpoint_epoch0000_step{rows[-1]['global_step']:08d}"], kept
    for ckpt in kept:
        assert f"{prefix}{ckpt}/model/config.json" in found and f"{prefix}{ckpt}/train_state.pt" in found


@pytest.fixture(scope="module")
def s3_sweep(ray_s3, s3, data):
    """A one-trial sweep on s3:// whose trial dies in epoch 1 (no Train retries): the sweep ends with an errored
    trial, then `resume_sweep` continues it from the bucket."""
    from atomica_ray.data import make_loader
    from atomica_ray.tasks import get_task
    from atomica_ray.train.loop import data_spec
    from atomica_ray.tune import sweep
    from atomica_ray.tune.space import parse_space

    base = config(data)
    n0 = make_loader(data_spec(base, get_task(base.task), base.train_set, train=True), seed=base.seed).n_batches
    base = base.replace(crash_at_step=n0 + 1)  # the first step of epoch 1, after the epoch-0 checkpoint
    space = parse_space({"params": {"lr": {"grid": [2e-3]}}}, "inline space")
    name = f"s3sweep-{secrets.token_hex(3)}"
    settings = sweep.resolve_settings(base.to_dict(), space, name=name, storage_path=f"s3://{BUCKET}/sweeps",
                                      num_samples=1, scheduler="fifo", search="grid", gpus_per_trial=0,
                                      workers_per_trial=1, max_concurrent=1, seed=0)
    first = sweep.run_sweep(settings)
    _, resumed = sweep.resume_sweep(settings.experiment_dir)
    trials = [r.metrics["trial_id"] for r in resumed if r.metrics]
    try:
        yield dict(first=first, resumed=resumed, name=name, n0=n0, trials=trials,
                   objects=objects(s3, f"sweeps/{name}/"))
    finally:
        for trial in trials:
            shutil.rmtree(local_run_dir(trial), ignore_errors=True)


def test_sweep_resumed_from_the_bucket(s3_sweep):
    assert s3_sweep["first"].num_errors == 1  # the trial died in epoch 1 and Train did not retry it
    assert s3_sweep["resumed"].num_errors == 0 and s3_sweep["resumed"].num_terminated == 1
    found = s3_sweep["objects"]
    prefix = f"sweeps/{s3_sweep['name']}/"
    assert prefix + "sweep.json" in found
    runs = [k for k in found if k.startswith(prefix + "trials/") and k.endswith("/metrics_history.jsonl")
            and "/checkpoint_" not in k]
    assert len(runs) == 1, runs
    rows = history(found[runs[0]])
    # epoch 0 ran before the failure, and the resumed trial went on with epoch 1 from the bucket's checkpoint
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["global_step"] > s3_sweep["n0"]
    trial_dir = local_run_dir(s3_sweep["trials"][0])
    assert (trial_dir / f".crashed_at_step_{s3_sweep['n0'] + 1}").is_file()  # the trial's worker really died


def test_the_secret_key_is_written_nowhere(s3, ray_s3, s3_run, s3_sweep):
    secret = s3["secret"]
    leaked = [k for k, blob in {**s3_run["objects"], **s3_sweep["objects"]}.items() if secret.encode() in blob]
    assert not leaked, f"the secret is in objects {leaked}"
    roots = [ray_s3, local_run_dir(s3_run["name"])] + [local_run_dir(t) for t in s3_sweep["trials"]]
    assert all(r.is_dir() for r in roots), roots
    assert not files_with(secret, roots)
