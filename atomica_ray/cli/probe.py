"""`atomica-ray probe`: probes on frozen embeddings (ATOMICA's `probe/` protocol), each setting and seed a Ray Tune
trial, summarised with seed-averaged metrics and confidence intervals.

    atomica-ray embed --checkpoint CKPT --data_path data/train --output_path emb/train.parquet   # (valid, test too)
    atomica-ray probe --train emb/train.parquet --valid emb/valid.parquet --test emb/test.parquet \\
        --labels data/train --labels data/valid --labels data/test --representation h_graph \\
        --head linear,mlp --lr 1e-3,3e-3 --seeds 5 --name ligand-probe
    atomica-ray report ligand-probe          # the table as an HTML page (also <sweep>/report with --sweep)

The representation is a column of `embed`'s output (`h_graph` = `graph_embedding`, `h_block` = `block_embedding`;
either spelling). A block-level one probes one row per non-global block with the datasets' per-block labels, and
its intervals resample structures. Features are standardized with the training split's mean and deviation; the
probe trains with Adam, early stopping on the validation metric. Without --test the validation split is scored
(it also chose the epochs: optimistic, and the output says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="embeddings of the training split (Parquet from embed)")
    parser.add_argument("--valid", required=True, help="embeddings of the validation split (early stopping, choice)")
    parser.add_argument("--test", default=None, help="embeddings of the test split (default: score --valid)")
    parser.add_argument("--labels", action="append", required=True, metavar="SOURCE",
                        help="labels by item id: a dataset directory or an id,label Parquet file (repeatable)")
    parser.add_argument("--representation", default="h_graph",
                        help="embedding column: h_graph | h_block | ... or embed's graph_embedding | "
                             "block_embedding (default h_graph)")
    parser.add_argument("--task-type", "--task_type", dest="task_type", default="auto",
                        choices=("auto", "binary", "multiclass", "multilabel"), help="default: from the labels")
    parser.add_argument("--metric", default=None, help="metric choosing epochs and settings (default: AUPRC, "
                        "macro AUPRC for multiclass / multilabel)")
    parser.add_argument("--head", default="mlp", help="comma list of linear | mlp")
    parser.add_argument("--hidden-dim", default="64", help="comma list of MLP widths")
    parser.add_argument("--dropout", default="0.1", help="comma list")
    parser.add_argument("--lr", default="1e-3", help="comma list")
    parser.add_argument("--weight-decay", default="0", help="comma list")
    parser.add_argument("--epochs", type=int, default=100, help="epoch budget of one probe")
    parser.add_argument("--patience", type=int, default=10, help="epochs without improvement before stopping")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting (0, 1, ... N-1)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of each interval")
    parser.add_argument("--name", default=None, help="run name (default probe-<time>)")
    parser.add_argument("--storage-path", "--storage_path", dest="storage_path", default=None,
                        help="where runs are stored (default ~/atomica-ray-runs)")
    parser.add_argument("--sweep", default=None, help="write into this sweep's directory (<sweep>/probe), so "
                        "`atomica-ray report <sweep>` shows the probe next to the sweep")
    parser.add_argument("--address", default=None, help="Ray cluster to connect to (default: a new local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a new local Ray")


def fail(message: str) -> int:
    print(f"atomica-ray probe: {message}", file=sys.stderr)
    return 2


def prepare(args) -> dict:
    """Everything the trials need, checked on the driver before Ray starts."""
    import numpy as np

    from atomica_ray.probe import features as F
    from atomica_ray.probe import stats

    paths = {"train": args.train, "valid": args.valid, "test": args.test or args.valid}
    for split, path in paths.items():
        if not os.path.isfile(path):
            raise F.ProbeInputError(f"--{split}: {path} does not exist")
    _, values, _, _ = F.read_embeddings(args.train, args.representation)
    block_level = bool(values) and isinstance(values[0], list) and bool(values[0]) and isinstance(values[0][0], list)
    labels = F.read_labels(args.labels, block_level)
    splits = {s: F.load_split(p, args.representation, labels, s)[0] for s, p in paths.items()}
    task_type = F.infer_task_type(splits["train"].y) if args.task_type == "auto" else args.task_type
    metric = args.metric or stats.PRIMARY[task_type]
    if metric not in stats.METRICS[task_type]:
        raise F.ProbeInputError(f"--metric {metric}: a {task_type} probe reports {list(stats.METRICS[task_type])}")
    mu, sd = F.fit_standardizer(splits["train"].X)
    data = {"task_type": task_type, "metric": metric, "representation": args.representation,
            "block_level": block_level, "test_split": "test" if args.test else "valid (no --test)",
            "n_rows": {s: len(sp.y) for s, sp in splits.items()}}
    for s, sp in splits.items():
        data[f"X_{s}"], data[f"y_{s}"], data[f"groups_{s}"] = F.standardize(sp.X, mu, sd), sp.y, sp.groups
    data["standardizer"] = {"mean": mu.reshape(-1), "std": sd.reshape(-1)}
    if task_type == "binary" and len(np.unique(data["y_train"])) < 2:
        raise F.ProbeInputError(f"{args.train}: the training labels have one class only")
    return data


def settings_from(args):
    from itertools import product

    from atomica_ray.probe.head import HEADS
    from atomica_ray.probe.training import ProbeSettings

    heads = [h.strip() for h in args.head.split(",") if h.strip()]
    bad = [h for h in heads if h not in HEADS]
    if bad:
        raise ValueError(f"--head {','.join(bad)}: choose from {', '.join(HEADS)}")
    out = []
    for head, hidden, dropout, lr, wd in product(heads, ints(args.hidden_dim), floats(args.dropout),
                                                 floats(args.lr), floats(args.weight_decay)):
        s = ProbeSettings(head=head, hidden_dim=hidden if head == "mlp" else 0, dropout=dropout if head == "mlp"
                          else 0.0, lr=lr, weight_decay=wd, epochs=args.epochs, patience=args.patience,
                          batch_size=args.batch_size)
        if s not in out:  # a linear head ignores the MLP's width and dropout
            out.append(s)
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from atomica_ray.probe import features as F
    from atomica_ray.probe.sweep import INPUTS_FILE, markdown, run_trials, summarize, write_results
    from atomica_ray.train.launch import resolve_storage_path

    start = time.perf_counter()
    if args.seeds < 1:
        return fail("--seeds must be >= 1")
    try:
        settings = settings_from(args)
        data = prepare(args)
    except (F.ProbeInputError, ValueError) as error:
        return fail(str(error))
    if args.sweep:
        from atomica_ray.cli.tune import experiment_path

        storage, name = experiment_path(args.sweep, args.storage_path), "probe"
        if not os.path.isdir(storage):
            return fail(f"--sweep {args.sweep}: {storage} is not a sweep directory")
    else:
        storage, name = resolve_storage_path(args.storage_path), args.name or f"probe-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = os.path.join(storage, name)
    if os.path.exists(os.path.join(experiment, "probe_results.json")):
        return fail(f"{experiment} already holds probe results; choose another --name")
    os.makedirs(experiment, exist_ok=True)
    with open(os.path.join(experiment, INPUTS_FILE), "w") as f:
        json.dump({"args": vars(args), "settings": [s.to_dict() for s in settings]}, f, indent=1)

    from atomica_ray.tune.sweep import start_ray

    start_ray(args.address, args.num_cpus)
    print(f"probe: {len(settings)} setting(s) x {args.seeds} seed(s) as Tune trials; {data['task_type']} "
          f"{'block' if data['block_level'] else 'item'}-level, rows {data['n_rows']}")
    results = run_trials(data, settings, list(range(args.seeds)), storage, name)
    errors = [r.error for r in results if r.error is not None]
    if errors:
        print(f"atomica-ray probe: {len(errors)} trial(s) failed: {errors[0]}", file=sys.stderr)
    summary = summarize(results, data, n_boot=args.n_boot)
    path = write_results(summary, experiment)
    print(markdown(summary))
    if not args.test:
        print("note: no --test: the validation split was scored, and it also chose the epochs and the best setting "
              "(optimistic)")
    print(f"probe results: {path} ({time.perf_counter() - start:.1f} s)")
    return 1 if errors else 0
