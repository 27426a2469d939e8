"""fp32 vs bf16 training curves (issue 7, P1 follow-up): do the curves of `precision: bf16` (torch.autocast) match
fp32 within seed-to-seed noise, on the demo task and on a short pretraining run?

    python benchmarks/bench_precision_curves.py --root /tmp/curves [--use-gpu] [--seeds 0 1] [--tasks demo pretrain]
        [--demo-epochs 25] [--pretrain-epochs 6] [--n-items 320] [--n-valid 96] [--pretrain-items 640]
        [--loader-workers 4] [--demo-set KEY=VALUE ...] [--pretrain-set KEY=VALUE ...] [--out curves.json]

Every run is the real engine, `atomica_ray.train.launch.run` (what `atomica-ray train` runs: a Ray Train
TorchTrainer, here 1 worker, on the GPU with `--use-gpu`); Ray is started once for all runs. A run's curves are
the end-of-epoch rows of its `metrics_history.jsonl` (written by rank 0 into the run directory).

Tasks (the training data is fixed; only the training seed - initial weights, shuffling, noise - changes):
- demo: what `atomica-ray demo` trains (`atomica_ray.cli.demo.demo_config`: binary_classifier, 2 layers, hidden
  16, items cropped to 16 blocks, lr 1e-3, 25 epochs) on its data (`write_demo_splits(root/data/demo-320-96, 320, 96,
  seed=0)`, as the demo writes it). One difference: the demo trains on 2 Ray workers of <= 160 blocks each; here 1
  worker gets batches of <= 320 blocks, the same number of blocks per optimizer step. Curves: val_bce, train_loss.
- pretrain: task `pretrain_torsion_masking` (data kind pretrain_masked_torsion: block masking + torsion,
  translation and rotation noise) with the released ATOMICA configuration and noise of
  configs/pretrain_atomica.yaml (hidden 32, 4 layers, batches of <= 1000 blocks, lr 1e-4), on demo items 0..N-1
  (train; N = --pretrain-items, by default a superset of the demo's training items) and the next N/4 (valid),
  for --pretrain-epochs epochs. Curves: val_loss, train_loss. The engine draws the validation noise from the
  run's seed, so the val_loss seed spread includes a different draw of the validation noise.

Verdict, per task and curve, over the last half of the epochs (epochs e >= E // 2; early epochs move fastest and
would make any gap look small or large by accident):
    gap(e)    = | mean over seeds of bf16(e) - mean over seeds of fp32(e) |
    spread(e) = max( max-min over seeds of fp32(e), max-min over seeds of bf16(e) )
    X = max_e gap(e),  Y = max_e spread(e);  within noise iff X <= Y.
Also shown, not part of the verdict: the same-seed gap max |bf16(s, e) - fp32(s, e)| (same initial weights,
batches and noise: the effect of the precision alone). The verdict line "P1-curves <task>: ..." is that of the
task's validation selection metric; a second line gives the same for train_loss. Needs >= 2 seeds (else "n/a").
With 2 seeds Y is a single difference per precision: a loose yardstick, so read the tables too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomica_ray.data.demo import write_demo_splits  # noqa: E402
from atomica_ray.tasks import get_task  # noqa: E402
from atomica_ray.train.checkpoint import HISTORY_FILE  # noqa: E402
from atomica_ray.train.config import TrainConfig  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DEMO_WORKERS = 2  # `atomica-ray demo`'s Ray workers; 1 worker here gets their blocks per step in one batch


def say(text: str = "") -> None:
    print(text, flush=True)


def demo_data(root: Path, n_train: int, n_valid: int) -> dict[str, str]:
    out = root / "data" / f"demo-{n_train}-{n_valid}"
    paths = {"train": str(out / "train"), "valid": str(out / "valid")}
    if not all(os.path.isdir(p) for p in paths.values()):
        say(f"writing demo items 0..{n_train - 1} (train) and {n_train}..{n_train + n_valid - 1} (valid) to {out}")
        paths = write_demo_splits(str(out), n_train, n_valid, seed=0, overwrite=True)
    return paths


def demo_config(data: dict, args) -> TrainConfig:
    from atomica_ray.cli.demo import demo_config as cli_demo_config

    cfg = cli_demo_config(data, Namespace(task="binary_classifier", epochs=args.demo_epochs, num_workers=1, seed=0,
                                          overrides=[]))
    cfg = cfg.replace(max_n_vertex_per_gpu=cfg.max_n_vertex_per_gpu * DEMO_WORKERS)
    return cfg.with_overrides(args.demo_set, "--demo-set") if args.demo_set else cfg


def pretrain_config(data: dict, args) -> TrainConfig:
    cfg = TrainConfig.from_yaml(ROOT / "configs" / "pretrain_atomica.yaml")
    cfg = cfg.replace(train_set=data["train"], valid_set=data["valid"], max_epoch=args.pretrain_epochs,
                      report_every_steps=0, num_workers=1)
    return cfg.with_overrides(args.pretrain_set, "--pretrain-set") if args.pretrain_set else cfg


def epoch_rows(run_dir: Path) -> list[dict]:
    """End-of-epoch reports of a run (mid-epoch reports have batch > 0), in epoch order."""
    rows = [json.loads(line) for line in (run_dir / HISTORY_FILE).read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if r.get("batch", 0) == 0), key=lambda r: r["epoch"])


def value(row: dict | None, key: str) -> float:
    v = None if row is None else row.get(key)
    return float(v) if v is not None else math.nan


def fit_one(cfg: TrainConfig, name: str, storage: Path) -> dict:
    from atomica_ray.train.launch import run

    t0 = time.perf_counter()
    record = {"name": name, "error": None, "rows": []}
    try:
        run(cfg, name=name, storage_path=str(storage))
        record["rows"] = epoch_rows(storage / name)
    except Exception as error:  # keep going: the other runs still say something; the traceback goes to the lead
        record["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        say(f"P1-curves run {name} FAILED: {record['error']}")
    record["wall_s"] = time.perf_counter() - t0
    return record


def json_safe(obj):
    """NaN/inf become null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def fmt(v: float) -> str:
    return f"{v:10.4f}" if math.isfinite(v) else f"{'-':>10}"


def compare(runs: dict, seeds: list[int], key: str, n_epochs: int) -> dict:
    """Per-epoch seed means, gap and spread of one curve, and the verdict over the last half of the epochs."""
    per_epoch = []
    for e in range(n_epochs):
        vals = {p: [value(runs[p, s]["by_epoch"].get(e), key) for s in seeds] for p in PRECISIONS}
        ok = all(math.isfinite(v) for p in PRECISIONS for v in vals[p])
        mean = {p: statistics.fmean(vals[p]) if ok else math.nan for p in PRECISIONS}
        spread = max(max(vals[p]) - min(vals[p]) for p in PRECISIONS) if ok else math.nan
        paired = max(abs(b - f) for f, b in zip(vals["fp32"], vals["bf16"])) if ok else math.nan
        per_epoch.append({"epoch": e, "mean_fp32": mean["fp32"], "mean_bf16": mean["bf16"],
                          "gap": abs(mean["bf16"] - mean["fp32"]), "spread": spread, "paired": paired})
    last = per_epoch[n_epochs // 2:]
    usable = len(seeds) >= 2 and last and all(math.isfinite(r["gap"]) and math.isfinite(r["spread"]) for r in last)
    gap = max(r["gap"] for r in last) if usable else math.nan
    spread = max(r["spread"] for r in last) if usable else math.nan
    paired = max(r["paired"] for r in last) if last else math.nan
    return {"metric": key, "per_epoch": per_epoch, "epochs_compared": [r["epoch"] for r in last],
            "max_gap": gap, "max_spread": spread, "max_paired": paired,
            "within_noise": (gap <= spread) if usable else None}


def print_table(task: str, runs: dict, seeds: list[int], key: str, summary: dict) -> None:
    cols = [(p, s) for p in PRECISIONS for s in seeds]
    head = "".join(f"{p + ' s' + str(s):>10}" for p, s in cols)
    say(f"\nP1-curves {task} {key} per epoch (gap = |mean bf16 - mean fp32|, spread = largest max-min over seeds "
        f"within one precision, paired = largest |bf16 - fp32| of one seed)")
    say(f"{'epoch':>5}{head}{'gap':>10}{'spread':>10}{'paired':>10}")
    for row in summary["per_epoch"]:
        e = row["epoch"]
        vals = "".join(fmt(value(runs[c]["by_epoch"].get(e), key)) for c in cols)
        mark = " *" if e in summary["epochs_compared"] else ""
        say(f"{e:>5}{vals}{fmt(row['gap'])}{fmt(row['spread'])}{fmt(row['paired'])}{mark}")


def verdict(task: str, summary: dict, label: str) -> str:
    within = summary["within_noise"]
    word = "n/a (needs >= 2 seeds and finite curves)" if within is None else ("yes" if within else "no")
    epochs = summary["epochs_compared"]
    span = f"epochs {epochs[0]}-{epochs[-1]}" if epochs else "no epochs"
    return (f"P1-curves {label}: max |bf16-fp32| gap {summary['max_gap']:.4f} vs seed spread "
            f"{summary['max_spread']:.4f} ({summary['metric']}, {span}; same-seed gap {summary['max_paired']:.4f}) "
            f"-> within noise {word}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="directory for the data and the runs")
    parser.add_argument("--use-gpu", action="store_true", help="train on 1 GPU (else 1 CPU worker)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", choices=("demo", "pretrain"), default=["demo", "pretrain"])
    parser.add_argument("--demo-epochs", type=int, default=None, help="default: the demo's (25)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--n-items", type=int, default=320, help="demo training items (the demo's: 320)")
    parser.add_argument("--n-valid", type=int, default=96, help="demo validation items (the demo's: 96)")
    parser.add_argument("--pretrain-items", type=int, default=640, help="pretraining items (valid: a quarter more)")
    parser.add_argument("--loader-workers", type=int, default=4, help="DataLoader processes of the Ray worker")
    parser.add_argument("--demo-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the demo config (e.g. atom_hidden_size=8)")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the pretraining config (e.g. n_layers=1)")
    parser.add_argument("--out", help="also write the curves and verdicts here (JSON)")
    args = parser.parse_args()

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    configs = {}
    if "demo" in args.tasks:
        configs["demo"] = demo_config(demo_data(root, args.n_items, args.n_valid), args)
    if "pretrain" in args.tasks:
        n = args.pretrain_items
        configs["pretrain"] = pretrain_config(demo_data(root, n, max(1, n // 4)), args)
    configs = {t: c.replace(use_gpu=args.use_gpu, loader_workers=args.loader_workers, progress_bar=False,
                            use_wandb=False, save_topk=1) for t, c in configs.items()}

    import torch

    from atomica_ray.train.launch import init_ray, local_cpus_needed

    device = torch.cuda.get_device_name() if args.use_gpu and torch.cuda.is_available() else "cpu"
    say(f"P1-curves setup: device {device}, seeds {args.seeds}, torch {torch.__version__}")
    for task, cfg in configs.items():
        say(f"P1-curves {task}: task {cfg.task}, {cfg.max_epoch} epochs, train {cfg.train_set}, hidden "
            f"{cfg.atom_hidden_size}/{cfg.block_hidden_size}, edge {cfg.edge_size}, {cfg.n_layers} layers, batches "
            f"<= {cfg.max_n_vertex_per_gpu} blocks, items <= {cfg.max_n_vertex_per_item} blocks, lr {cfg.lr}")
    t0 = time.perf_counter()
    init_ray(None, max((local_cpus_needed(c) or 0) for c in configs.values()) or None)
    say(f"P1-curves Ray started in {time.perf_counter() - t0:.1f} s")

    storage = root / "runs" / time.strftime("%Y%m%d-%H%M%S")  # fresh: a reused run name would resume that run
    report = {"setup": {"device": device, "seeds": args.seeds, "torch": torch.__version__,
                        "configs": {t: c.to_dict() for t, c in configs.items()}},
              "runs": [], "summary": {}}
    verdicts = []
    for task, cfg in configs.items():
        selection = get_task(cfg.task).selection_metric
        runs = {}
        for precision in PRECISIONS:
            for seed in args.seeds:
                name = f"{task}-{precision}-seed{seed}"
                record = fit_one(cfg.replace(precision=precision, seed=seed), name, storage)
                record.update(task=task, precision=precision, seed=seed)
                record["by_epoch"] = {r["epoch"]: r for r in record["rows"]}
                last = record["rows"][-1] if record["rows"] else None
                say(f"P1-curves run {name}: {len(record['rows'])} epochs in {record['wall_s']:.1f} s, last "
                    f"{selection} {value(last, selection):.4f}, train_loss {value(last, 'train_loss'):.4f}")
                runs[precision, seed] = record
                report["runs"].append({k: v for k, v in record.items() if k != "by_epoch"})
        failed = [r["name"] for r in runs.values() if r["error"]]
        n_epochs = cfg.max_epoch
        report["summary"][task] = {}
        for key in (selection, "train_loss"):
            summary = compare(runs, args.seeds, key, n_epochs)
            report["summary"][task][key] = summary
            print_table(task, runs, args.seeds, key, summary)
        lines = [verdict(task, report["summary"][task][selection], task),
                 verdict(task, report["summary"][task]["train_loss"], f"{task} (train_loss)")]
        if failed:
            lines.append(f"P1-curves {task}: runs that failed: {', '.join(failed)} (tracebacks above)")
        for line in lines:
            say(line)
        verdicts += lines

    say("\nP1-curves summary (* in the tables: the epochs the verdict compares)")
    for line in verdicts:
        say(line)
    say(f"P1-curves total {time.perf_counter() - t0:.0f} s; runs under {storage}")
    if args.out:
        report["verdicts"] = verdicts
        with open(args.out, "w") as f:
            json.dump(json_safe(report), f, indent=1)
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
