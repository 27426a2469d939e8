"""`atomica-ray tune`: a Ray Tune sweep of the engine over a search space.

    atomica-ray tune --config run.yaml --space tune_spaces/binary_classifier.yaml --num-samples 20
    atomica-ray tune --config run.yaml --space tune_spaces/lr_grad_clip.yaml --search grid --scheduler fifo
    atomica-ray tune --resume NAME [--storage-path P]          # continue an interrupted sweep

The run config (`--config`, `--set`) is shared by every trial; the space's params override it per trial, and
--workers-per-trial / --gpus-per-trial replace its num_workers / use_gpu. Trials report once per epoch
(report_every_steps is turned off), so ASHA's max_t and grace_period count epochs. Results go to
<storage>/<name>/: trials.csv / trials.md, best.json, best_config.yaml, best_model/ (ATOMICA format); the Train runs
of the trials are under <storage>/<name>/trials/<trial id>, the sweep's log is <storage>/<name>/atomica-ray.log.
Bad input ends before Ray starts (exit 2); Ctrl-C stops the sweep, prints the command that resumes it (exit 130).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from atomica_ray.cli.train import add_run_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run = add_run_arguments(parser, "sweep")
    run.add_argument("--config", help="YAML file of TrainConfig keys shared by every trial")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key of the shared config (repeatable)")
    run.add_argument("--name", default=None, help="sweep name, one path component (default: tune-<task>-<time>)")
    run.add_argument("--resume", metavar="RUN", default=None,
                     help="continue the interrupted sweep RUN (a name under --storage-path, or its path)")
    search = parser.add_argument_group("search")
    search.add_argument("--space", help="search space YAML (tune_spaces/<task>.yaml)")
    search.add_argument("--num-samples", type=int, default=None,
                        help="trials to run (with --search grid: repetitions of the full grid, default 1)")
    search.add_argument("--scheduler", choices=("asha", "pbt", "fifo"), default="asha")
    search.add_argument("--search", choices=("optuna", "random", "grid"), default="optuna")
    search.add_argument("--gpus-per-trial", type=float, default=0,
                        help="GPUs of one trial (one Train worker each); 0: CPU")
    search.add_argument("--workers-per-trial", type=int, default=None,
                        help="Ray Train workers of one trial (default: --gpus-per-trial, or 1)")
    search.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: cluster resources / one trial's resources)")
    search.add_argument("--seed", type=int, default=0, help="seed of the search algorithm")


def fail(message: str, code: int = 2) -> int:
    print(f"atomica-ray tune: error: {message}", file=sys.stderr)
    return code


def experiment_path(run: str, storage_path: str | None) -> str:
    """A sweep given by name (under the storage path) or by its directory."""
    from atomica_ray.train.launch import resolve_storage_path

    if "://" in run or os.path.isdir(run) and os.path.isfile(os.path.join(run, "sweep.json")):
        return run if "://" in run else os.path.abspath(run)
    return os.path.join(resolve_storage_path(storage_path), run)


def run(args: argparse.Namespace) -> int:
    from atomica_ray.train.errors import InputError
    from atomica_ray.tune import sweep
    from atomica_ray.tune.space import SpaceError, load_space

    if args.resume:
        path = experiment_path(args.resume, args.storage_path)
        if "://" not in path and not os.path.isfile(os.path.join(path, sweep.SWEEP_FILE)):
            return fail(f"{path}: no sweep to resume (no {sweep.SWEEP_FILE}); give a sweep name under "
                        "--storage-path, or its directory")
        try:
            settings = sweep.SweepSettings.load(path)
        except (OSError, ValueError, TypeError) as error:
            return fail(f"{path}: unreadable {sweep.SWEEP_FILE} ({error})")
        return drive(args, settings, resume=True)
    if not args.config or not args.space:
        return fail("--config and --space are required (or --resume RUN)")
    try:
        from atomica_ray.train import preflight
        from atomica_ray.train.config import TrainConfig, load_yaml
        from atomica_ray.train.launch import resolve_storage_path

        space = load_space(args.space)
        cfg = TrainConfig.from_dict(load_yaml(args.config), source=args.config)
        if args.overrides:
            cfg = cfg.with_overrides(args.overrides)
        workers = args.workers_per_trial or max(1, int(args.gpus_per_trial))
        name = args.name if args.name is not None else f"tune-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        preflight.check_name(name)
        storage = resolve_storage_path(args.storage_path)
        settings = sweep.resolve_settings(
            cfg.to_dict(), space, name=name, storage_path=storage, num_samples=args.num_samples,
            scheduler=args.scheduler, search=args.search, gpus_per_trial=args.gpus_per_trial,
            workers_per_trial=workers, max_concurrent=args.max_concurrent, seed=args.seed,
        )
        if "://" not in storage and os.path.exists(os.path.join(settings.experiment_dir, sweep.SWEEP_FILE)):
            raise InputError(f"{settings.experiment_dir} already holds a sweep: resume it with --resume {name}, "
                             "or choose another --name")
        preflight.check_storage(storage, name)
    except (SpaceError, ValueError, FileNotFoundError) as error:
        return fail(str(error))
    return drive(args, settings, resume=False)


def drive(args: argparse.Namespace, settings, resume: bool) -> int:
    """Everything after the driver-side checks: console, Ray, the sweep, its summary."""
    from atomica_ray.train import launch
    from atomica_ray.train.console import LOG_NAME, Console
    from atomica_ray.train.errors import InputError
    from atomica_ray.tune import sweep

    experiment = settings.experiment_dir
    log = os.path.join(experiment, LOG_NAME) if "://" not in experiment else \
        os.path.join(os.path.expanduser("~/atomica-ray-runs"), settings.name, LOG_NAME)
    resume_cmd = f"atomica-ray tune --resume {settings.name} --storage-path {settings.storage_path}"
    we_started_ray = False
    with Console("tune", log, args.verbose) as console:
        try:
            console.line(f"sweep {settings.name}: {experiment}" + (" (resumed)" if resume else ""))
            cpus = sweep.local_cpus(settings, args.num_cpus)
            described = launch.init_ray(args.address, cpus, args.dashboard, say=console.line)
            we_started_ray = described is not None
            if described:
                console.line(described + f" ({sweep.TRIAL_DRIVER_CPU:g} CPU per trial driver)")
            console.attach_ray()
            try:
                concurrency = sweep.concurrency_for(settings)
            except ValueError as error:  # the cluster cannot run one trial: a bad request, before anything waits
                raise InputError(str(error)) from None
            console.line(f"{sweep.expected_trials(settings)} trials, {concurrency} at a time "
                         f"({settings.search} search, {settings.scheduler} scheduler, {settings.metric} "
                         f"{settings.mode}); log: {console.log_path}")
            if resume:
                _, results = sweep.resume_sweep(experiment)
            else:
                results = sweep.run_sweep(settings, concurrency)
            if unfinished(experiment, settings):  # Tune caught Ctrl-C itself and stopped the sweep
                return interrupted(console, experiment, settings, resume_cmd)
            return finish(console, experiment, results)
        except KeyboardInterrupt:
            console.note(traceback.format_exc())
            return interrupted(console, experiment, settings, resume_cmd)
        except BaseException as error:  # noqa: BLE001 - the one error path
            return launch.report_failure(console, "tune", error, args.verbose)
        finally:
            if we_started_ray:
                launch.shutdown_ray()


def unfinished(experiment: str, settings) -> list[str]:
    """Trials not run to their end (or never created): what a Ctrl-C leaves."""
    if "://" in experiment:
        return []
    from atomica_ray.tune.results import trial_statuses
    from atomica_ray.tune.sweep import expected_trials

    from pathlib import Path

    try:
        statuses = trial_statuses(Path(experiment))
    except (OSError, ValueError):
        return []
    pending = [t for t, (status, _) in statuses.items() if status not in ("TERMINATED", "ERROR")]
    missing = max(0, expected_trials(settings) - len(statuses))
    return pending + ["(not started)"] * missing


def interrupted(console, experiment: str, settings, resume_cmd: str) -> int:
    from atomica_ray.train.errors import Interrupted

    left = unfinished(experiment, settings)
    console.line(f"interrupted: {len(left)} trial(s) unfinished; the sweep keeps its finished trials and "
                 "checkpoints; resume it with", err=True)
    console.line(f"  {resume_cmd}", err=True)
    return Interrupted.exit_code


def finish(console, experiment_dir: str, results) -> int:
    from atomica_ray.tune.results import summarize

    console.line(f"sweep directory: {experiment_dir}")
    if "://" not in experiment_dir:
        best = summarize(experiment_dir)
        console.line(f"trials table: {experiment_dir}/trials.md")
        if best:
            console.line(f"best trial: {best['trial_id']} {best['metric']}={best['value']:.6g} (epoch {best['epoch']})")
            console.line(f"best params: {best['params']}")
            console.line(f"best checkpoint: {best['checkpoint_path']}")
            console.line(f"ATOMICA-format export: {best['export_dir']}")
    console.line(f"log: {console.log_path}")
    errors = results.errors
    if errors:
        console.line(f"atomica-ray tune: error: {len(errors)} trial(s) failed; their errors are in the log "
                     f"({console.log_path}) and in {experiment_dir}", err=True)
        return 1
    return 0
