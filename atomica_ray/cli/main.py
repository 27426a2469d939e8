"""`atomica-ray` entry point.

Each sub-command lives in its own module under `atomica_ray.cli` and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
command runs, and import neither torch nor Ray at module level, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import difflib
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


def version_text() -> str:
    """atomica-ray's version and those of the libraries it runs on (from package metadata: nothing imported)."""
    from importlib import metadata

    from atomica_ray import __version__

    parts = []
    for dist in ("ray", "torch"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"atomica-ray {__version__} ({', '.join(parts)}, Python {sys.version.split()[0]})"


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomica-ray", description="Train, tune and apply ATOMICA interface models on Ray.",
        epilog="`atomica-ray COMMAND --help` describes a command and its options.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = top_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        if argv[0] == "--version":
            print(version_text())
            return 0
        guess = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        parser.print_usage(sys.stderr)
        what = "option" if argv[0].startswith("-") else "command"
        print(f"atomica-ray: error: unknown {what} '{argv[0]}' (commands: {', '.join(COMMANDS)}){hint}",
              file=sys.stderr)
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd = argparse.ArgumentParser(prog=f"atomica-ray {name}", description=COMMANDS[name][1],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    args.argv = list(argv[1:])  # as typed: the command that resumes a run repeats it
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
