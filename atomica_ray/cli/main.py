"""`atomica-ray` entry point.

Each sub-command lives in its own module under `atomica_ray.cli` and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
command runs, so `atomica-ray inspect` never pays for importing Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("atomica_ray.cli.demo", "make the built-in demo data and train on it with a local Ray"),
    "demo-data": ("atomica_ray.cli.demo_data", "write the built-in demo dataset (Parquet)"),
    "convert": ("atomica_ray.cli.convert", "convert ATOMICA .pkl / .jsonl.gz / .parquet files to a Parquet dataset"),
    "process": ("atomica_ray.cli.process", "PDB / mmCIF structure files -> a Parquet dataset of ATOMICA items"),
    "export": ("atomica_ray.cli.export", "write a dataset as ATOMICA's .jsonl.gz, .parquet or .pkl items"),
    "inspect": ("atomica_ray.cli.inspect", "print item count, size statistics and labels of a dataset"),
    "train": ("atomica_ray.cli.train", "train one task with Ray Train"),
    "embed": ("atomica_ray.cli.embed", "write named representations (h/z, atom to interface level) to Parquet"),
    "predict": ("atomica_ray.cli.predict", "write a trained model's predictions to Parquet"),
    "score": ("atomica_ray.cli.score", "ATOMICAScore: rank each residue's importance for its partner"),
    "tune": ("atomica_ray.cli.tune", "run a Ray Tune sweep"),
    "report": ("atomica_ray.cli.report", "plot a finished sweep (PNG + HTML)"),
    "spot-watch": ("atomica_ray.cli.spot_watch", "drain this Ray node when the cloud announces a spot reclaim"),
    "probe": ("atomica_ray.cli.probe", "probe frozen embeddings over seeds and settings (Tune), with intervals"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="atomica-ray")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd = argparse.ArgumentParser(prog=f"atomica-ray {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
