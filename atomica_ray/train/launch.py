"""The driver: the TorchTrainer around the loop, a local Ray that starts and stays quiet, and `main` for the command
line.

`build_trainer` is what Tune's trial function calls too. `main` runs one `atomica-ray train`:

1. driver-side checks (`preflight`): a bad input ends here, in one line, exit 2, nothing written;
2. the console and the run's log file (`console.Console`), and the repair of an existing run directory (`rundir`);
3. Ray: the job's cluster under `ray job submit`, `--address`, or a new local Ray bound to 127.0.0.1 (retried once,
   without its dashboard, if it fails to start); then the resources the run asks for, checked before waiting;
4. `fit`, whose every failure ends as one line (the cause, and where the full log is); Ctrl-C aborts the run
   cleanly and prints the command that resumes it (exit 130).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from atomica_ray.tasks import task_for
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.errors import InputError, Interrupted, RunFailed, cause_of

DEFAULT_STORAGE = "~/atomica-ray-runs"
_LOCAL_RAY: dict = {}  # the GCS address of the local Ray `start_local_ray` started in this process
RESOURCE_WAIT_S = 300.0  # how long to wait for an autoscaling cluster to provide what a run asks for


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


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers may run in another directory (a job's working_dir, another node): make local paths absolute."""
    changes = {}
    for key in ("train_set", "valid_set", "pretrain_config", "pretrain_weights", "init_checkpoint"):
        value = getattr(cfg, key)
        if value and "://" not in value:
            changes[key] = str(Path(value).expanduser().resolve())
    return cfg.replace(**changes) if changes else cfg


def worker_resources(cfg: TrainConfig) -> dict:
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return resources


def build_trainer(cfg: TrainConfig, run_name: str, storage_path: str | None = None, callbacks=()):
    """A `ray.train.torch.TorchTrainer` running `train_loop_per_worker` for this config.

    Checkpoints keep the top `save_topk` by the task's selection metric (Ray also always keeps the latest, which
    is what a restart resumes from). Relaunching with the same `run_name` and `storage_path` resumes the run.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from atomica_ray.tasks import get_task
    from atomica_ray.train.loop import train_loop_per_worker

    class Trainer(TorchTrainer):
        """Ctrl-C is the driver's: Ray Train's own handler would end the process with exit code 0."""

        controller = None

        def _register_sigint_handler(self, controller):
            self.controller = controller

    cfg = absolute_paths(cfg)
    task = task_for(cfg)
    score = task.selection_metric if cfg.valid_set else None
    # Elastic (--num-workers MIN:MAX): Ray starts with as many workers as the cluster has room for, restarts the
    # group smaller when a node goes and larger when room appears (checked every resize_interval_s); each restart
    # resumes from the latest checkpoint, and the loop keeps the global batch (train/loop.py).
    workers = (cfg.num_workers, cfg.max_workers) if cfg.elastic else cfg.num_workers
    return Trainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=worker_resources(cfg),
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


def fit(trainer):
    """`trainer.fit()`; on Ctrl-C the run is aborted (its workers stopped) before KeyboardInterrupt goes on."""
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        import ray

        if getattr(trainer, "controller", None) is not None:
            try:
                ray.get(trainer.controller.abort.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - the controller exits while answering; nothing else to do
                pass
        raise


# --- a local Ray -----------------------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_packages() -> str | None:
    """None if Ray can start its dashboard here, else why not (ray[default]'s extra packages are missing)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_local_ray(num_cpus: int | None = None, dashboard: bool = True, say=warn,
                    dashboard_port: int | None = None) -> str:
    """A new Ray on this machine only; returns a line describing it.

    Loopback everywhere: Ray binds its gRPC servers (GCS, raylet, workers), agents and metrics exporters to its
    node address, and to every interface unless that address is loopback; `ray.init` turns a 127.0.0.1 node address
    into the machine's, but Ray's single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS
    and Windows) keeps it 127.0.0.1 (ray._private.services.get_node_ip_address). The dashboard, the GCS port and the
    state API address are pinned in the environment the Ray processes inherit: Ray Train's placement-group cleaner
    looks its cluster up by address, and with other Ray instances on the machine it would find the wrong one.

    A start that fails (on a busy machine: the dashboard, or the node, timing out) is retried once without the
    dashboard, saying so. A watcher (`reaper`) removes Ray's processes if this driver is killed.
    """
    import ray
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported Ray before
    missing = _dashboard_packages() if dashboard else None
    if missing:
        say(f"starting a local Ray without its dashboard (import ray.dashboard.optional_deps failed: {missing}); "
            "lost: the dashboard and the state API (ray list/summary, job submission), so Ray Train's "
            "placement-group cleaner has no state API to ask (its complaints go to the log). "
            "pip install 'ray[default]' to keep them")
    attempts = [dashboard and not missing, False] if dashboard and not missing else [False]
    for attempt, with_dashboard in enumerate(attempts):
        port = (dashboard_port if dashboard_port and with_dashboard else None) or free_port()
        gcs_port = free_port()
        # Without a dashboard the state API address points at a closed port: the cleaner's queries then fail fast
        # (in the log) instead of reaching another cluster's dashboard.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
        try:
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=with_dashboard,
                               dashboard_host="127.0.0.1", dashboard_port=port)
        except Exception as error:  # noqa: BLE001 - any failure to start is retried once, then reported
            ray.shutdown()
            forget_local_ray()
            reason = " ".join(str(error).split())[:300]
            if attempt + 1 == len(attempts):
                raise RunFailed(f"could not start a local Ray: {type(error).__name__}: {reason}") from error
            say(f"local Ray did not start ({type(error).__name__}: {reason}); retrying without its dashboard")
            continue
        _LOCAL_RAY["gcs"] = ray.get_runtime_context().gcs_address
        from atomica_ray.train import reaper

        reaper.start()  # Ray's agents outlive a driver killed with SIGKILL: they go with it
        cpus = ray.cluster_resources().get("CPU", 0)
        url = str(context.dashboard_url or "").removeprefix("http://")
        where = f"dashboard http://{url}" if with_dashboard and url else "no dashboard"
        return f"local Ray on 127.0.0.1: {cpus:g} CPUs, {where}"
    raise AssertionError("unreachable")


def started_locally() -> bool:
    """Whether this process's Ray is a local one `start_local_ray` started (it cannot grow: no autoscaler)."""
    import ray

    return ray.is_initialized() and _LOCAL_RAY.get("gcs") == ray.get_runtime_context().gcs_address


def forget_local_ray() -> None:
    """Drop the addresses `start_local_ray` exported, so that a later Ray in this process is not pointed at it."""
    _LOCAL_RAY.clear()
    for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_API_SERVER_ADDRESS"):
        os.environ.pop(key, None)


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True,
             say=warn) -> str | None:
    """Connect to `address`, or to the cluster this process already belongs to (a `ray job submit` driver has
    RAY_ADDRESS set), or start a local Ray. Returns a line describing a new local Ray (None otherwise)."""
    import ray

    if ray.is_initialized():
        return None
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return None
    return start_local_ray(num_cpus, dashboard, say)


def check_resources(per_worker: dict, count: int, local: bool, wait_s: float = RESOURCE_WAIT_S, say=warn) -> None:
    """Fail, rather than wait forever, when the cluster cannot place `count` workers of `per_worker` resources:
    at once on a local Ray (nothing will join it), within `wait_s` on a cluster (its autoscaler may add nodes)."""
    import ray

    def placeable() -> int:
        n = 0
        for node in ray.nodes():
            if node.get("Alive"):
                have = node.get("Resources", {})
                n += min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0)
        return n

    if placeable() >= count:
        return
    deadline = time.monotonic() + (0 if local else wait_s)
    if not local:
        say(f"waiting up to {wait_s:.0f} s for the cluster to provide {count} x {per_worker} (an autoscaler may "
            "add nodes)")
    while time.monotonic() < deadline:
        time.sleep(5)
        if placeable() >= count:
            return
    present = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU") or k in per_worker}
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    hint = "; without --use-gpu it trains on CPUs" if per_worker.get("GPU") and not present.get("GPU") else ""
    raise InputError(f"the cluster cannot run {count} worker(s) of {per_worker}: it has {present} on {nodes} "
                     f"node(s){'' if local else f' after {wait_s:.0f} s'}{hint}")


def local_cpus_needed(cfg: TrainConfig) -> int | None:
    """A local Ray needs a CPU slot per worker; on a laptop with fewer cores, declare enough logical CPUs."""
    need = int(cfg.num_workers * cfg.cpus_per_worker + 0.999)
    have = os.cpu_count() or 1
    return need if need > have else None


def run(cfg: TrainConfig, name: str | None = None, storage_path: str | None = None, address: str | None = None,
        num_cpus: int | None = None, dashboard: bool = True):
    """Check, connect and fit one run; returns its `ray.train.Result` (the Python API of `atomica-ray train`)."""
    from atomica_ray.train import preflight, rundir

    name = name if name is not None else default_run_name(cfg)
    storage = resolve_storage_path(storage_path)
    preflight.check_train(cfg, name, storage)
    cfg = absolute_paths(cfg)
    rundir.repair(join(storage, name))
    init_ray(address, num_cpus if num_cpus is not None else local_cpus_needed(cfg), dashboard)
    check_resources(worker_resources(cfg), cfg.num_workers, started_locally())
    return fit(build_trainer(cfg, name, storage))


# --- `atomica-ray train` -------------------------------------------------------------------------------------------

def join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else str(Path(storage) / name)


def log_path_for(storage: str, name: str) -> Path:
    """The run's log file: in its run directory, or in ~/atomica-ray-runs/<name>/ when storage is remote."""
    from atomica_ray.train.console import LOG_NAME

    base = Path(join(storage, name)) if "://" not in storage else Path.home() / "atomica-ray-runs" / name
    return base / LOG_NAME


def resume_command(command: str, argv: list[str], name: str, storage: str) -> str:
    """The command line that continues this run: the same arguments, with its name and storage made explicit."""
    args = list(argv)
    flags = {a.split("=", 1)[0] for a in args}
    if not flags & {"--name", "--run_name", "--run-name"}:
        args += ["--name", name]
    if not flags & {"--storage-path", "--storage_path", "--save_dir"}:
        args += ["--storage-path", storage]
    return shlex.join(["atomica-ray", command, *args])


def report_failure(console, command: str, error: BaseException, verbose: bool) -> int:
    """The one error path: the cause on one line, the traceback in the log (and on the console with --verbose)."""
    text = "".join(traceback.format_exception(error))
    console.note(text)
    if verbose:
        console.line(text.rstrip(), err=True)
    if isinstance(error, InputError):
        console.line(f"atomica-ray {command}: error: {error}", err=True)
        return 2
    cause = error.cause if isinstance(error, RunFailed) else cause_of(error)
    where = f"log, cut short: {console.log_path}" if console.log_failed else f"full log: {console.log_path}"
    console.line(f"atomica-ray {command}: error: {cause} ({where})", err=True)
    return 1


def summary(console, result, cfg: TrainConfig, seconds: float) -> None:
    from atomica_ray.tasks import get_task
    from atomica_ray.train.checkpoint import HISTORY_FILE

    task = get_task(cfg.task)
    epochs = [e for e in console.events if e.get("kind") == "epoch"]
    start = console.last("start") or {}
    rows = [("run directory", str(result.path))]
    best = None
    if cfg.valid_set and result.best_checkpoints:
        best = result.get_best_checkpoint(task.selection_metric, task.mode)
    if best is not None:
        metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), {})
        value = metrics.get(task.selection_metric)
        rows.append(("best checkpoint", f"{best.path} ({task.selection_metric} {value:.4g}, epoch "
                                        f"{metrics.get('epoch')})" if isinstance(value, float) else best.path))
    if result.checkpoint is not None:
        rows.append(("latest checkpoint", str(result.checkpoint.path)))
    run_dir = start.get("run_dir") or str(result.path)
    rows.append(("metrics", str(Path(run_dir) / HISTORY_FILE)))
    rows.append(("TensorBoard", f"tensorboard --logdir {start['tensorboard']}" if start.get("tensorboard")
                 else "off (tensorboard: false)"))
    rows.append(("wandb", start.get("wandb") or "off (use_wandb: false)"))
    rows.append(("log", str(console.log_path)))
    last = epochs[-1] if epochs else {}
    console.line(f"finished in {seconds:.0f} s: {len(epochs)} epoch(s) this launch"
                 + (f", last epoch {last['epoch']}" if last else "")
                 + (" (stopped early)" if last.get("stopped_early") else ""))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        console.line(f"  {key:<{width}}  {value}")
    if result.metrics:
        shown = {k: v for k, v in result.metrics.items() if k.startswith("val_") or k in ("epoch", "train_loss")}
        console.note(f"final metrics: {shown}")


def main(command: str, cfg: TrainConfig, args) -> int:
    """`atomica-ray train` after its config is resolved; returns the exit code."""
    code, _ = execute(command, cfg, name=args.name, storage_path=args.storage_path, address=args.address,
                      num_cpus=args.num_cpus, dashboard=args.dashboard, verbose=args.verbose,
                      argv=getattr(args, "argv", []))
    return code


def execute(command: str, cfg: TrainConfig, name: str | None = None, storage_path: str | None = None,
            address: str | None = None, num_cpus: int | None = None, dashboard: bool = True, verbose: bool = False,
            argv=(), summarize: bool = True):
    """One training run as the commands run it (see the module doc); returns (exit code, Result or None)."""
    from atomica_ray.train import preflight, rundir
    from atomica_ray.train.console import Console

    name = name if name is not None else default_run_name(cfg)
    try:
        storage = resolve_storage_path(storage_path)
        preflight.check_train(cfg, name, storage)
        note = checkpoint_numerics_note(cfg)
    except (InputError, ValueError) as error:
        print(f"atomica-ray {command}: error: {error}", file=sys.stderr)
        return 2, None
    cfg = absolute_paths(cfg)
    started = time.monotonic()
    resume = resume_command(command, list(argv), name, storage)
    run_dir = join(storage, name)
    local_dir = Path(run_dir) if "://" not in storage else None
    we_started_ray = False
    with Console(command, log_path_for(storage, name), verbose, cfg.progress_bar) as console:
        try:
            console.line(f"run {name}: {run_dir}")
            if note:
                console.line(f"note: {note}")
            for note in rundir.repair(run_dir):
                console.line(note)
            cpus = num_cpus if num_cpus is not None else local_cpus_needed(cfg)
            described = init_ray(address, cpus, dashboard, say=console.line)
            we_started_ray = described is not None
            if described:
                console.line(described)
            console.attach_ray()
            check_resources(worker_resources(cfg), cfg.num_workers, started_locally(), say=console.line)
            console.line(f"{cfg.task}: {cfg.num_workers} worker(s) ({'GPU' if cfg.use_gpu else 'CPU'}), "
                         f"max_epoch {cfg.max_epoch}; log: {console.log_path}")
            result = fit(build_trainer(cfg, name, storage))
        except KeyboardInterrupt:
            console.note(traceback.format_exc())
            if local_dir is not None:
                rundir.remove_partial_checkpoints(local_dir)
            done = console.last("epoch")
            after = f" after epoch {done['epoch']}" if done else ""
            console.line(f"interrupted{after}: the run keeps its checkpoints; resume it with", err=True)
            console.line(f"  {resume}", err=True)
            return Interrupted.exit_code, None
        except BaseException as error:  # noqa: BLE001 - the one error path
            if local_dir is not None:
                rundir.remove_partial_checkpoints(local_dir)
            return report_failure(console, command, error, verbose), None
        finally:
            if we_started_ray:
                shutdown_ray()
        if summarize:
            summary(console, result, cfg, time.monotonic() - started)
    return 0, result


def checkpoint_numerics_note(cfg: TrainConfig) -> str | None:
    """The warning this run's checkpoints will carry (models trained with atomica-ray's fixes), or ValueError under
    atomica_strict."""
    from atomica_ray.train.numerics import atomica_numerics_warning

    warning = atomica_numerics_warning(cfg)
    if warning and cfg.atomica_strict:
        raise ValueError("--atomica-strict: this run would write checkpoints that ATOMICA's code does not run "
                         "identically. " + warning)
    return warning


def shutdown_ray() -> None:
    import ray

    ray.shutdown()
    forget_local_ray()
