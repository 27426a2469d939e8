"""The TorchTrainer around the loop, and `run(cfg)` for the command line.

`build_trainer` is what Tune's function trainable calls (with a TuneReportCallback); `run` connects to Ray (an
existing cluster with `address`, the job's cluster inside `ray job submit`, else a new local one) and fits.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from atomica_ray.tasks import task_for
from atomica_ray.train.config import TrainConfig

DEFAULT_STORAGE = "~/atomica-ray-runs"


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_storage_path(path: str | None) -> str:
    """URIs (s3://, gs://, ...) pass through (refused if they hold credentials: train/storage.py); local paths become
    absolute (Ray requires it)."""
    from atomica_ray.train.storage import check_storage_uri

    path = path or DEFAULT_STORAGE
    if "://" in path:
        check_storage_uri(path)
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
    check_list_labels(cfg)


def check_list_labels(cfg: TrainConfig) -> None:
    """Tasks with list-valued labels: every item of the local train / valid sets has its labels, of the width the
    config says (a DataError naming file, item and field, before any worker starts)."""
    from atomica_ray.tasks import get_task

    task = get_task(cfg.task)
    if task.label_kind == "scalar":
        return
    from atomica_ray.data.loader import LIST_LABELS_OF_KIND, check_list_labels as check, open_dataset

    kind = task.data_kind(cfg)
    for key in ("train_set", "valid_set"):
        path = getattr(cfg, key)
        if path and "://" not in path:
            ds = open_dataset(path, cfg.allow_pickle, cfg.fragmentation_method, LIST_LABELS_OF_KIND[kind])
            check(ds, kind, cfg.num_classifier_classes)


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
    task = task_for(cfg)
    score = task.selection_metric if cfg.valid_set else None
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    # Elastic (--num-workers MIN:MAX): Ray starts with as many workers as the cluster has room for, restarts the
    # group smaller when a node goes and larger when room appears (checked every resize_interval_s); each restart
    # resumes from the latest checkpoint, and the loop keeps the global batch (train/loop.py).
    workers = (cfg.num_workers, cfg.max_workers) if cfg.elastic else cfg.num_workers
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources,
                                               elastic_resize_monitor_interval_s=cfg.resize_interval_s),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=resolve_storage_path(storage_path),
            # A preempted node (a drain with reason PREEMPTION: spot reclaim, autoscaler) costs a restart counted
            # against max_preemptions, not max_failures. The loop writes a just-in-time checkpoint when Ray reports
            # the drain. Collectives are not relaxed: the loop's own all-reduces need every rank anyway.
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures,
                                                   max_preemption_failures=cfg.max_preemptions),
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
