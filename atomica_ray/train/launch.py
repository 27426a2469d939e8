"""The TorchTrainer around the loop, and `run(cfg)` for the command line.

`build_trainer` is what Tune's function trainable calls (with a TuneReportCallback); `run` connects to Ray (an
existing cluster with `address`, the job's cluster inside `ray job submit`, else a new local one) and fits.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from atomica_ray.tasks import get_task
from atomica_ray.train.config import TrainConfig

DEFAULT_STORAGE = "~/atomica-ray-runs"


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_storage_path(path: str | None) -> str:
    """URIs (s3://, gs://, ...) pass through; local paths become absolute (Ray requires it)."""
    path = path or DEFAULT_STORAGE
    if "://" in path:
        return path
    return str(Path(os.path.expanduser(path)).resolve())


def check_inputs(cfg: TrainConfig) -> None:
    """Fail on the driver, before any worker starts, when a path the run needs is missing."""
    if not cfg.train_set:
        raise ValueError("config: key 'train_set' is required (a Parquet dataset dir or an ATOMICA .pkl/.jsonl.gz)")
    for key in ("train_set", "valid_set", "pretrain_config", "pretrain_weights", "init_checkpoint"):
        value = getattr(cfg, key)
        if value and "://" not in value and not os.path.exists(value):
            raise FileNotFoundError(f"config: key {key!r}: {value} does not exist")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers may run in another directory (a job's working_dir, another node): make local paths absolute."""
    changes = {}
    for key in ("train_set", "valid_set", "pretrain_config", "pretrain_weights", "init_checkpoint"):
        value = getattr(cfg, key)
        if value and "://" not in value:
            changes[key] = str(Path(value).expanduser().resolve())
    return cfg.replace(**changes) if changes else cfg


def build_trainer(cfg: TrainConfig, run_name: str, storage_path: str | None = None, callbacks=()):
    """A `ray.train.torch.TorchTrainer` running `train_loop_per_worker` for this config.

    Checkpoints keep the top `save_topk` by the task's selection metric (Ray also always keeps the latest, which
    is what a restart resumes from). Relaunching with the same `run_name` and `storage_path` resumes the run.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from atomica_ray.train.loop import train_loop_per_worker

    cfg = absolute_paths(cfg)
    task = get_task(cfg.task)
    score = task.selection_metric if cfg.valid_set else None
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=resolve_storage_path(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.save_topk if cfg.save_topk > 0 else None,
                checkpoint_score_attribute=score,
                checkpoint_score_order=task.mode,
            ),
            callbacks=list(callbacks),
        ),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`, or to the cluster this process already belongs to (a `ray job submit` driver has
    RAY_ADDRESS set), or start a local Ray (with its dashboard when Ray's dashboard packages are installed)."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    try:  # what Ray itself imports to decide whether it can start a dashboard (ray[default]'s extra packages)
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as error:
        # A minimal install (ray[train,tune] without "default") trains fine; ray.init(include_dashboard=True)
        # would raise "Cannot include dashboard with missing packages".
        logging.getLogger(__name__).warning(
            "atomica-ray: starting a local Ray without its dashboard (import ray.dashboard.optional_deps failed: "
            "%s); lost: the dashboard and the state API (ray list/summary, job submission), so Ray Train's "
            "placement-group cleaner has no state API to ask (it logs 'Failed to query Ray Train Controller actor "
            "state' about once a second: harmless). pip install 'ray[default]' to keep them.", error)
        # Pinned to a closed port: left to auto-detection, the cleaner could ask another local cluster's dashboard,
        # miss this run's controller there and remove its placement group.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{free_port()}"
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        return
    # A new local Ray. Ray Train's placement-group cleaner finds "its" cluster's state API by auto-detection, which
    # picks another cluster when several run on one machine, misses the controller there and removes this run's
    # placement group. Pin it: a known dashboard port, exported before the workers are spawned.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # address="local": a new Ray, not one some `ray start --head` left on this machine (ray.init() without an
    # address joins the cluster named in /tmp/ray/ray_current_cluster)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port)


def run(cfg: TrainConfig, name: str | None = None, storage_path: str | None = None, address: str | None = None,
        num_cpus: int | None = None):
    """Fit one run and return its `ray.train.Result` (raises `ray.train.TrainingFailedError` on failure)."""
    check_inputs(cfg)
    cfg = absolute_paths(cfg)
    init_ray(address, num_cpus if num_cpus is not None else local_cpus_needed(cfg))
    trainer = build_trainer(cfg, name or default_run_name(cfg), storage_path)
    return trainer.fit()


def local_cpus_needed(cfg: TrainConfig) -> int | None:
    """A local Ray needs a CPU slot per worker; on a laptop with fewer cores, declare enough logical CPUs."""
    need = int(cfg.num_workers * cfg.cpus_per_worker + 0.999)
    have = os.cpu_count() or 1
    return need if need > have else None
