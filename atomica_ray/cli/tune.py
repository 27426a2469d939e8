"""`atomica-ray tune`: a Ray Tune sweep of the engine over a search space.

    atomica-ray tune --config run.yaml --space tune_spaces/binary_classifier.yaml --num-samples 20
    atomica-ray tune --config run.yaml --space tune_spaces/lr_grad_clip.yaml --search grid --scheduler fifo
    atomica-ray tune --resume NAME [--storage-path P]          # continue an interrupted sweep

The run config (`--config`, `--set`) is shared by every trial; the space's params override it per trial, and
--workers-per-trial / --gpus-per-trial replace its num_workers / use_gpu. Trials report once per epoch
(report_every_steps is turned off), so ASHA's max_t and grace_period count epochs. Results go to
<storage>/<name>/: trials.csv / trials.md, best.json, best_config.yaml, best_model/ (ATOMICA format); the Train runs
of the trials are under <storage>/<name>/trials/<trial id>.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of TrainConfig keys shared by every trial")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key of the shared config (repeatable)")
    parser.add_argument("--space", help="search space YAML (tune_spaces/<task>.yaml)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="trials to run (with --search grid: repetitions of the full grid, default 1)")
    parser.add_argument("--scheduler", choices=("asha", "pbt", "fifo"), default="asha")
    parser.add_argument("--search", choices=("optuna", "random", "grid"), default="optuna")
    parser.add_argument("--gpus-per-trial", type=float, default=0,
                        help="GPUs of one trial (one Train worker each); 0: CPU")
    parser.add_argument("--workers-per-trial", type=int, default=None,
                        help="Ray Train workers of one trial (default: --gpus-per-trial, or 1)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: cluster resources / one trial's resources)")
    parser.add_argument("--storage-path", "--storage_path", dest="storage_path", default=None,
                        help="where sweeps are stored (local dir, NFS, s3://...; default ~/atomica-ray-runs)")
    parser.add_argument("--name", default=None, help="sweep name (default: tune-<task>-<time>)")
    parser.add_argument("--address", default=None, help="Ray cluster to connect to (default: a new local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a new local Ray")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search algorithm")
    parser.add_argument("--resume", metavar="RUN", default=None,
                        help="continue the interrupted sweep RUN (a name under --storage-path, or its path)")


def fail(message: str, code: int = 2) -> int:
    print(f"atomica-ray tune: {message}", file=sys.stderr)
    return code


def experiment_path(run: str, storage_path: str | None) -> str:
    """A sweep given by name (under the storage path) or by its directory."""
    import os

    from atomica_ray.train.launch import resolve_storage_path

    if "://" in run or os.path.isdir(run) and os.path.isfile(os.path.join(run, "sweep.json")):
        return run if "://" in run else os.path.abspath(run)
    return os.path.join(resolve_storage_path(storage_path), run)


def run(args: argparse.Namespace) -> int:
    from atomica_ray.tune import sweep
    from atomica_ray.tune.space import SpaceError, load_space

    if args.resume:
        return resume(args)
    if not args.config or not args.space:
        return fail("--config and --space are required (or --resume RUN)")
    try:
        from atomica_ray.train.config import TrainConfig, load_yaml
        from atomica_ray.train.launch import resolve_storage_path

        space = load_space(args.space)
        cfg = TrainConfig.from_dict(load_yaml(args.config), source=args.config)
        if args.overrides:
            cfg = cfg.with_overrides(args.overrides)
        workers = args.workers_per_trial or max(1, int(args.gpus_per_trial))
        name = args.name or f"tune-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        settings = sweep.resolve_settings(
            cfg.to_dict(), space, name=name, storage_path=resolve_storage_path(args.storage_path),
            num_samples=args.num_samples, scheduler=args.scheduler, search=args.search,
            gpus_per_trial=args.gpus_per_trial, workers_per_trial=workers, max_concurrent=args.max_concurrent,
            seed=args.seed,
        )
    except (SpaceError, ValueError, FileNotFoundError) as error:
        return fail(str(error))

    sweep.start_ray(args.address, args.num_cpus)
    try:
        results = sweep.run_sweep(settings)
    except (ValueError, FileExistsError) as error:
        return fail(str(error))
    return finish(settings.experiment_dir, results)


def resume(args: argparse.Namespace) -> int:
    from atomica_ray.tune import sweep

    path = experiment_path(args.resume, args.storage_path)
    sweep.start_ray(args.address, args.num_cpus)
    try:
        _, results = sweep.resume_sweep(path)
    except (ValueError, FileNotFoundError) as error:
        return fail(str(error))
    return finish(path, results)


def finish(experiment_dir: str, results) -> int:
    from atomica_ray.tune.results import summarize

    print(f"sweep directory: {experiment_dir}")
    if "://" not in experiment_dir:
        best = summarize(experiment_dir)
        print(f"trials table: {experiment_dir}/trials.md")
        if best:
            print(f"best trial: {best['trial_id']} {best['metric']}={best['value']:.6g} (epoch {best['epoch']})")
            print(f"best params: {best['params']}")
            print(f"best checkpoint: {best['checkpoint_path']}")
            print(f"ATOMICA-format export: {best['export_dir']}")
    errors = results.errors
    if errors:
        print(f"atomica-ray tune: {len(errors)} trial(s) failed; see the error files in {experiment_dir}",
              file=sys.stderr)
        return 1
    return 0
