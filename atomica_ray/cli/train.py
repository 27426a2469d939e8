"""`atomica-ray train`: train one task with Ray Train.

    atomica-ray train --config configs/ligand.yaml --set lr=1e-4 --num-workers 4 --use-gpu --name ligand-1

Every TrainConfig key is a flag, spelled as ATOMICA's train.py spells it (`--max_n_vertex_per_gpu`) or with
hyphens (`--max-n-vertex-per-gpu`). Precedence: defaults < --config YAML < flags < --set key=value.
ATOMICA scripts port by replacing `torchrun train.py` with `atomica-ray train` and `--gpu 0 1 2 3` with
`--num-workers 4 --use-gpu`; `--save_dir` / `--run_name` name the run (like --storage-path / --name), and
ATOMICA's `--num_workers` (DataLoader processes) sets `loader_workers`.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing

from atomica_ray.train.config import TrainConfig, load_yaml

# config keys the command line does not expose as flags (reachable with --set)
HIDDEN = {"crash_at_step", "nonfinite_steps", "hold_at_steps"}
# flag spellings that differ from "--key" / "--key-with-hyphens"
SPELLINGS = {
    "num_workers": ["--num-workers"],  # Ray workers; ATOMICA's --num_workers means loader processes
    "loader_workers": ["--loader-workers", "--loader_workers", "--num_workers"],
    "use_gpu": ["--use-gpu", "--use_gpu"],
}


def _flag_names(key: str) -> list[str]:
    if key in SPELLINGS:
        return SPELLINGS[key]
    names = [f"--{key}"]
    if "_" in key:
        names.append(f"--{key.replace('_', '-')}")
    return names


def _scalar_type(type_):
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    return args[0] if args else type_


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--config", help="YAML file of TrainConfig keys")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key (repeatable); the value is parsed as YAML")
    run.add_argument("--name", "--run_name", "--run-name", dest="name", default=None,
                     help="run name; relaunching with the same name and storage path resumes the run")
    run.add_argument("--storage-path", "--storage_path", "--save_dir", dest="storage_path", default=None,
                     help="where runs are stored (local dir, NFS, s3://...; default ~/atomica-ray-runs)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to connect to (e.g. ray://head:10001 or auto); default: the job's cluster "
                          "under `ray job submit`, else a new local Ray")
    run.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a new local Ray")
    run.add_argument("--gpus", "--gpu", dest="gpus", type=int, nargs="+", default=argparse.SUPPRESS,
                     help="ATOMICA's GPU list: N ids mean --num-workers N --use-gpu; -1 means CPU")
    run.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")

    keys = parser.add_argument_group("config keys (TrainConfig)")
    for key, type_ in TrainConfig.field_types().items():
        if key in HIDDEN:
            continue
        default = getattr(TrainConfig(), key)
        help_ = f"(default: {default})"
        base = _scalar_type(type_)
        if base is bool:
            keys.add_argument(*_flag_names(key), dest=key, action=argparse.BooleanOptionalAction,
                              default=argparse.SUPPRESS, help=help_)
        else:
            metavar = "N|MIN:MAX" if key == "num_workers" else base.__name__.upper()  # MIN:MAX: elastic
            many = typing.get_origin(base) is list  # ATOMICA's nargs flags (--focal_alpha 0.25 0.75)
            keys.add_argument(*_flag_names(key), dest=key, type=str, default=argparse.SUPPRESS,
                              nargs="+" if many else None, metavar=metavar, help=help_)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    values: dict = load_yaml(args.config) if args.config else {}
    source = args.config or "defaults"
    cfg = TrainConfig.from_dict(values, source=source) if values else TrainConfig()
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.field_types()}
    if hasattr(args, "gpus"):
        gpus = list(args.gpus)
        if gpus != [-1]:
            flags.setdefault("num_workers", len(gpus))
            flags.setdefault("use_gpu", True)
    if flags:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **flags}, source="command line")
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    return cfg


def run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"atomica-ray train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0

    from atomica_ray.train import launch

    try:
        launch.check_inputs(cfg)
        launch.resolve_storage_path(args.storage_path)
        note = checkpoint_numerics_note(cfg)
    except (ValueError, FileNotFoundError) as error:
        print(f"atomica-ray train: {error}", file=sys.stderr)
        return 2
    if note:
        print(f"atomica-ray train: note: {note}")
    import ray.train

    try:
        result = launch.run(cfg, name=args.name, storage_path=args.storage_path, address=args.address,
                            num_cpus=args.num_cpus)
    except ray.train.TrainingFailedError as error:
        print(f"atomica-ray train: training failed: {error}", file=sys.stderr)
        return 1
    print_summary(result, cfg)
    return 0


def checkpoint_numerics_note(cfg: TrainConfig) -> str | None:
    """The warning this run's checkpoints will carry, or ValueError under atomica_strict."""
    from atomica_ray.train.numerics import atomica_numerics_warning

    warning = atomica_numerics_warning(cfg)
    if warning and cfg.atomica_strict:
        raise ValueError("--atomica-strict: this run would write checkpoints that ATOMICA's code does not run "
                         "identically. " + warning)
    return warning


def print_summary(result, cfg: TrainConfig) -> None:
    from atomica_ray.tasks import task_for

    task = task_for(cfg)
    print(f"run directory: {result.path}")
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}")
    best = None
    if cfg.valid_set and result.best_checkpoints:
        best = result.get_best_checkpoint(task.selection_metric, task.mode)
    if best is not None:
        print(f"best checkpoint ({task.selection_metric}, {task.mode}): {best.path}")
    if result.metrics:
        shown = {k: v for k, v in result.metrics.items() if k.startswith("val_") or k in ("epoch", "train_loss")}
        print("final metrics: " + json.dumps(shown, default=str))
