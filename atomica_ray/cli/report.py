"""`atomica-ray report RUN`: PNG plots of a sweep and an HTML page (<sweep>/report/index.html).

RUN is a sweep name under --storage-path or the sweep's directory. Works on finished and interrupted sweeps, and on
`atomica-ray probe` runs (a probe section; also added to a sweep's page when the probe was written with --sweep).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="sweep name (under --storage-path) or sweep directory")
    parser.add_argument("--storage-path", "--storage_path", dest="storage_path", default=None,
                        help="where sweeps are stored (default ~/atomica-ray-runs)")


def run(args: argparse.Namespace) -> int:
    from atomica_ray.cli.tune import experiment_path

    path = experiment_path(args.run, args.storage_path)
    if os.path.isfile(os.path.join(args.run, "probe_results.json")):  # a probe run's directory
        path = os.path.abspath(args.run)
    if "://" in path:
        print("atomica-ray report: reports are written for local sweep directories; copy the sweep here first",
              file=sys.stderr)
        return 2
    from atomica_ray.tune.report import write_report

    try:
        drawn = write_report(path)
    except FileNotFoundError as error:
        print(f"atomica-ray report: {error}", file=sys.stderr)
        return 2
    print(f"report: {drawn['html']} ({len(drawn['trials'])} trials)")
    return 0
