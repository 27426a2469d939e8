"""`atomica-ray train`: train one task with Ray Train.

    atomica-ray train --config configs/ligand.yaml --set lr=1e-4 --num-workers 4 --use-gpu --name ligand-1

Every TrainConfig key is a flag, spelled as ATOMICA's train.py spells it (`--max_n_vertex_per_gpu`) or with
hyphens (`--max-n-vertex-per-gpu`). Precedence: defaults < --config YAML < flags < --set key=value.
ATOMICA scripts port by replacing `torchrun train.py` with `atomica-ray train` and `--gpu 0 1 2 3` with
`--num-workers 4 --use-gpu`; `--save_dir` / `--run_name` name the run (like --storage-path / --name), and
ATOMICA's `--num_workers` (DataLoader processes) sets `loader_workers`.

Everything that can be checked before Ray starts is checked first (config, names, paths, storage, data, labels):
a bad input ends in seconds with one line and exit code 2. A failed run ends with one line and the path of its
log (exit 1); Ctrl-C stops the run, prints the command that resumes it, and exits 130.
"""

from __future__ import annotations

import argparse
import sys
import typing

from atomica_ray.train.config import TrainConfig, bounds_text, load_yaml

# flag spellings that differ from "--key" / "--key-with-hyphens"
SPELLINGS = {
    "num_workers": ["--num-workers"],  # Ray workers; ATOMICA's --num_workers means loader processes
    "loader_workers": ["--loader_workers", "--loader-workers", "--num_workers"],
    "use_gpu": ["--use_gpu", "--use-gpu"],
}
EPILOG = ("Every config key above is also a YAML key of --config and a KEY of --set KEY=VALUE; each flag also "
          "takes its hyphenated spelling (--max-epoch). `--print-config` prints the resolved config with these "
          "descriptions.")


def _flag_names(key: str) -> list[str]:
    """The flag shown in --help first, then its other spellings (accepted, not shown)."""
    if key in SPELLINGS:
        return SPELLINGS[key]
    return [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])


def _scalar_type(type_):
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    return args[0] if args else type_


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def key_help(d: dict, metavar: str) -> str:
    """One line: what the key does, its bounds (unless the metavar lists the choices), its default."""
    bounds = bounds_text(d) if not (d.get("choices") and "|" in metavar) else ""
    return f"{d['help']} [{bounds + '; ' if bounds else ''}default {_yaml_value(d['default'])}]"


def _metavar(key: str, d: dict) -> str:
    if key == "num_workers":
        return "N|MIN:MAX"  # MIN:MAX: elastic
    if d.get("choices"):
        text = "|".join("null" if c is None else str(c) for c in d["choices"])
        return text if len(text) <= 24 else "NAME"
    base = _scalar_type(d["type"])
    if typing.get_origin(base) is list:
        base = typing.get_args(base)[0]
    return base.__name__.upper()


def add_run_arguments(parser: argparse.ArgumentParser, what: str = "run") -> argparse._ArgumentGroup:
    """Options shared by train and tune: where the run goes, which Ray, how much output."""
    run = parser.add_argument_group(what)
    run.add_argument("--storage-path", "--storage_path", "--save_dir", dest="storage_path", default=None,
                     help=f"where {what}s are stored (local dir, NFS, s3://...; default ~/atomica-ray-runs)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to connect to (e.g. ray://head:10001 or auto); default: the job's cluster "
                          "under `ray job submit`, else a new local Ray on 127.0.0.1")
    run.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a new local Ray")
    run.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                     help="start a new local Ray without its dashboard")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="also show Ray's own output and full tracebacks (always in the run's log file)")
    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.usage = ("atomica-ray train [--config FILE] [--set KEY=VALUE ...] [--name NAME] [--storage-path DIR]\n"
                    "                         [--KEY VALUE ...] [--print-config] [--verbose]")
    run = add_run_arguments(parser)
    run.add_argument("--config", help="YAML file of config keys")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key (repeatable); the value is parsed as YAML")
    run.add_argument("--name", "--run_name", "--run-name", dest="name", default=None,
                     help="run name, one path component; relaunching with the same name and storage path resumes "
                          "the run (default: <task>-<date>-<time>)")
    run.add_argument("--gpus", "--gpu", dest="gpus", type=int, nargs="+", default=argparse.SUPPRESS,
                     help="ATOMICA's GPU list: N ids mean --num-workers N --use-gpu; -1 means CPU")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved config (YAML, each key described) and exit")

    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, d in TrainConfig.describe().items():
        if d["hidden"]:
            continue
        if d["section"] not in groups:
            groups[d["section"]] = parser.add_argument_group(f"config keys: {d['section']}")
        group, (shown, *others) = groups[d["section"]], _flag_names(key)
        metavar = _metavar(key, d)
        if _scalar_type(d["type"]) is bool:
            group.add_argument(shown, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=key_help(d, metavar))
            for other in others:
                group.add_argument(other, dest=key, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            many = typing.get_origin(_scalar_type(d["type"])) is list  # ATOMICA's nargs flags (--focal_alpha 0.25 0.75)
            nargs = "+" if many else None
            group.add_argument(shown, dest=key, type=str, default=argparse.SUPPRESS, metavar=metavar, nargs=nargs,
                               help=key_help(d, metavar))
            for other in others:
                group.add_argument(other, dest=key, type=str, default=argparse.SUPPRESS, nargs=nargs,
                                   help=argparse.SUPPRESS)


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


def config_yaml(cfg: TrainConfig) -> str:
    """The config as YAML, grouped by section, every key with its description as a comment."""
    lines, section = [], None
    values = cfg.to_dict()
    described = TrainConfig.describe()
    width = max(len(f"{k}: {_yaml_value(v)}") for k, v in values.items())
    for key, d in described.items():
        if d["section"] != section:
            section = d["section"]
            lines.append(f"{'' if not lines else chr(10)}# --- {section}")
        text = f"{key}: {_yaml_value(values[key])}"
        bounds = bounds_text(d)
        lines.append(f"{text:<{min(width, 48)}}  # {d['help']}" + (f" ({bounds})" if bounds else ""))
    return "\n".join(lines) + "\n"


def usage_error(command: str, error: BaseException) -> int:
    print(f"atomica-ray {command}: error: {error}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args)
    except (ValueError, FileNotFoundError) as error:
        return usage_error("train", error)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    from atomica_ray.train import launch

    return launch.main("train", cfg, args)
