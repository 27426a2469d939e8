"""`atomica-ray embed / predict / score` as a streaming Ray Data pipeline over shards of a Parquet dataset.

    shards (i, start, stop) --read: Ray tasks, rows [start, stop) of items.parquet as Arrow-->
    --map_batches on an actor pool: each actor holds the model on its GPU (or CPUs), packs its shard into batches
      by the budgets, runs them and writes part i whole (inference/output.py)--> one summary row per shard
    --> the driver: progress, then the parts joined into the output

Memory stays flat however large the dataset: a shard is the unit in flight (Ray Data's backpressure bounds how
many are read ahead), an actor holds one batch's outputs at a time (a part is written row group by row group),
the driver holds the list of shards. A stopped run resumes: finished parts are kept and skipped. It runs on a new
local Ray, on `--address`, and inside `ray job submit` (the driver joins the job's cluster); on a cluster every
node must see the dataset and the output path (a shared file system).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from atomica_ray.inference.output import part_path, write_part
from atomica_ray.inference.runner import Job

SHARD, EXPECTED = "__shard", "__rows"  # columns the read stage adds to a shard's rows


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int


def plan_shards(n_items: int, shard_items: int) -> list[Shard]:
    if shard_items < 1:
        raise ValueError(f"--shard_items must be positive, got {shard_items}")
    return [Shard(i, s, min(s + shard_items, n_items)) for i, s in enumerate(range(0, n_items, shard_items))]


# --- the stages (run in Ray workers) ---------------------------------------------------------------------------

_RANGES: dict[str, object] = {}


def read_shard(batch: pa.Table, dataset: str, fields: tuple) -> pa.Table:
    """Read stage: one shard descriptor in, the shard's rows out (tagged with its index and size)."""
    from atomica_ray.data.parquet import RowRanges

    if dataset not in _RANGES:
        _RANGES[dataset] = RowRanges(dataset)
    index, start, stop = (batch[c][0].as_py() for c in ("shard", "start", "stop"))
    rows = _RANGES[dataset].read(start, stop, fields)
    n = rows.num_rows
    return rows.append_column(SHARD, pa.array([index] * n, pa.int64())).append_column(
        EXPECTED, pa.array([stop - start] * n, pa.int64()))


class ShardWorker:
    """Actor: the model, loaded once; each call computes one whole shard and writes its part."""

    def __init__(self, job: Job):
        import ray
        import torch

        from atomica_ray.data.parquet import RowRanges
        from atomica_ray.inference.runner import make_runner

        torch.set_num_threads(max(1, job.threads))
        gpu = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if gpu else "cpu")
        self.job = job
        self.runner = make_runner(job, self.device)
        self.ranges = RowRanges(job.dataset)

    def __call__(self, table: pa.Table) -> pa.Table:
        shards = pc.unique(table[SHARD]).to_pylist()
        if len(shards) != 1 or table.num_rows != table[EXPECTED][0].as_py():
            raise RuntimeError(f"a worker got {table.num_rows} rows of shards {shards}, not one whole shard")
        shard = shards[0]
        start = time.perf_counter()
        done, skipped = self.runner.done, len(self.runner.skipped)
        records = self.ranges.records(table.drop_columns([SHARD, EXPECTED]))
        rows = write_part(part_path(self.job.parts, shard, self.job.suffix), self.runner.schema,
                          self.runner.tables(records))
        return pa.table({
            "shard": [shard], "items": [len(records)], "rows": [rows], "done": [self.runner.done - done],
            "skipped": [json.dumps(self.runner.skipped[skipped:])], "seconds": [time.perf_counter() - start],
            "device": [str(self.device)],
        })


# --- the driver ------------------------------------------------------------------------------------------------

def run_pipeline(job: Job, shards: list[Shard], *, workers: int, gpus_per_worker: float, cpus_per_worker: float,
                 on_shard: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `shards` of `job` on the connected Ray cluster; one summary dict per shard, in completion order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our progress line, not Ray Data's bars
    ctx.target_max_block_size = None  # a shard's rows stay one block: one worker call sees the whole shard
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    descriptors = [{"shard": s.index, "start": s.start, "stop": s.stop} for s in shards]
    ds = ray.data.from_items(descriptors, override_num_blocks=len(descriptors))
    ds = ds.map_batches(read_shard, fn_kwargs={"dataset": job.dataset, "fields": tuple(job.options.get("fields", ()))},
                        batch_size=1, batch_format="pyarrow", num_cpus=0.25, concurrency=2 * max(1, workers))
    ds = ds.map_batches(ShardWorker, fn_constructor_args=(job,), batch_size=None, batch_format="pyarrow",
                        concurrency=(1, max(1, workers)), num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
    summaries = []
    for row in ds.iter_rows():
        summaries.append(row)
        if on_shard is not None:
            on_shard(row)
    return summaries


NO_MODEL = ("give --checkpoint DIR (a checkpoint, a model directory or a run directory), or --model_config "
            "config.json and --model_weights weights.pt")


def usage_error(args) -> str | None:
    """What a command line misses before anything is loaded (checked without importing torch)."""
    if not (args.checkpoint or (args.model_config and args.model_weights)):
        return NO_MODEL
    return None


def run_command(command: str, args, body, check_usage: bool = True) -> int:
    """`atomica-ray <command>` (embed, predict, score): a missing model (found before torch is imported) and bad
    input raised by body() (ValueError, KeyError, a missing or existing file, DataError) are one line on stderr and
    exit 2; otherwise body()'s exit status."""
    why = usage_error(args) if check_usage else None
    if why:
        print(f"atomica-ray {command}: error: {why}", file=sys.stderr)
        return 2
    from atomica_ray.data.items import DataError

    try:
        return body()
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, DataError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"atomica-ray {command}: error: {message}", file=sys.stderr)
        return 2


def add_arguments(parser, output_help: str) -> None:
    """The flags embed, predict and score share."""
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="a checkpoint dir, a model dir (config.json + weights) or a run dir")
    model.add_argument("--which", choices=("best", "latest"), default="best",
                       help="with a run dir: its best checkpoint by the task's selection metric, or the latest")
    model.add_argument("--model_config", "--model-config", dest="model_config", help="ATOMICA config.json")
    model.add_argument("--model_weights", "--model-weights", dest="model_weights", help="ATOMICA weights .pt")
    io = parser.add_argument_group("data and output")
    io.add_argument("--data_path", "--data-path", "--data", dest="data_path",
                    help="Parquet dataset dir, or an ATOMICA .pkl / .jsonl.gz / .parquet (converted once into the user "
                         "cache)")
    io.add_argument("--output_path", "--output-path", "--out", dest="output_path", help=output_help)
    io.add_argument("--overwrite", action="store_true", help="replace a complete output / start afresh")
    io.add_argument("--allow_pickle", "--allow-pickle", dest="allow_pickle", action="store_true",
                    help="read ATOMICA .pkl files (runs pickle: only for files you trust)")
    io.add_argument("--shard_items", "--shard-items", dest="shard_items", type=int, default=1000,
                    help="items per shard: the unit of work, of output part files and of resuming (default 1000)")
    run = parser.add_argument_group("batches and workers")
    run.add_argument("--max_n_vertex_per_gpu", "--batch-blocks", dest="block_budget", type=int, default=1000,
                     help="blocks per batch (default 1000); a larger item is a batch of its own, never cropped")
    run.add_argument("--atom_budget", "--atom-budget", dest="atom_budget", type=int, default=None,
                     help="atoms per batch (default: no limit besides the block budget)")
    run.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="bf16: autocast on the workers (GPU); fp32 gives the reference numerics")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="worker device: auto = one GPU per worker when the cluster has GPUs, else CPUs")
    run.add_argument("--workers", type=int, default=None,
                     help="actors (default: one per GPU of the cluster; 1 on CPUs)")
    run.add_argument("--cpus_per_worker", "--cpus-per-worker", dest="cpus_per_worker", type=int, default=None,
                     help="CPUs (torch threads) per worker (default: 1 with GPUs; on CPUs the cluster's, up to 8)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to connect to; default: the job's cluster under `ray job submit`, else a "
                          "new local Ray")


def require(args, *flags: str) -> None:
    missing = [f"--{f}" for f in flags if not getattr(args, f)]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")


def worker_resources(args) -> tuple[int, float, float, int]:
    """(workers, GPUs per worker, CPUs reserved per worker, torch threads per worker) on the connected cluster;
    refuses a GPU request it cannot meet. Half a CPU stays free for the read stage (else it could never run)."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if args.device == "cuda" and gpus == 0:
        raise ValueError(f"--device cuda: the Ray cluster has no GPU ({cpus:g} CPUs); use --device cpu")
    use_gpu = args.device == "cuda" or (args.device == "auto" and gpus > 0)
    workers = args.workers or (gpus if use_gpu else 1)
    threads = args.cpus_per_worker or (1 if use_gpu else max(1, min(8, int(cpus - 1) // workers)))
    reserved = max(0.25, min(float(threads), (cpus - 0.5) / workers))
    return workers, (1.0 if use_gpu else 0.0), reserved, threads


def execute(args, command: str, options: dict, fields: tuple = (), check=None, verb: str = "processed") -> int:
    """Driver of one command: check everything (seconds, before Ray), then run the missing shards and write the
    output. `check(dataset, model_config)` validates command-specific inputs."""
    from atomica_ray.data import open_dataset
    from atomica_ray.inference import checkpoints
    from atomica_ray.inference.output import Output

    started = time.perf_counter()
    require(args, "data_path", "output_path")
    files = checkpoints.resolve(args.checkpoint, args.model_config, args.model_weights, args.which)
    if files.chosen:
        print(f"model: {files.chosen}")
    model_config = checkpoints.read_config(files)
    for flag in ("block_budget", "atom_budget", "workers", "cpus_per_worker"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag}: must be positive, got {value}")
    dataset = open_dataset(args.data_path, allow_pickle=args.allow_pickle,
                           fragmentation_method=checkpoints.fragmentation_of(model_config))
    if check is not None:
        check(dataset, model_config)
    shards = plan_shards(len(dataset), args.shard_items)
    manifest = {"command": command, "dataset": dataset.path, "n_items": len(dataset), "shard_items": args.shard_items,
                "model": checkpoints.fingerprint(files), "precision": args.precision,
                "options": json.loads(json.dumps(options))}
    output = Output(args.output_path, manifest, overwrite=args.overwrite)
    done = output.prepare(len(shards))
    todo = [s for s in shards if s.index not in done]
    n_todo = sum(s.stop - s.start for s in todo)
    resuming = f"; {len(done)} done, resuming" if done else ""
    print(f"{command}: {len(dataset)} items in {len(shards)} shards of {args.shard_items}{resuming}")
    skipped: list[str] = []
    if todo:
        from atomica_ray.train.launch import init_ray

        init_ray(args.address)
        workers, gpus, reserved, threads = worker_resources(args)
        job = Job(command=command, dataset=dataset.path, config=str(files.config.resolve()),
                  weights=str(files.weights.resolve()), parts=str(output.parts), suffix=output.suffix,
                  precision=args.precision, block_budget=args.block_budget, atom_budget=args.atom_budget,
                  threads=threads, options={**options, "fields": list(fields)})
        where = f"{workers} GPU worker(s)" if gpus else f"{workers} CPU worker(s) x {threads} threads"
        print(f"{command}: {n_todo} items on {where}")
        progress = Progress(command, n_todo, len(todo))
        try:
            summaries = run_pipeline(job, todo, workers=workers, gpus_per_worker=gpus, cpus_per_worker=reserved,
                                     on_shard=progress.update)
        except KeyboardInterrupt:
            progress.close()
            print(f"{command}: stopped after {progress.done_shards} of {len(todo)} shards; finished parts are kept in "
                  f"{output.parts}: run the same command again to resume", file=sys.stderr)
            return 130
        progress.close()
        for s in summaries:
            skipped += json.loads(s["skipped"])
    output.finish(len(shards))
    seconds = time.perf_counter() - started
    if skipped:
        print(f"{command}: {len(skipped)} items skipped, e.g. " + "; ".join(skipped[:3]))
    print(f"{command}: {verb} {n_todo - len(skipped)} items in {seconds:.1f} s -> {output.path}")
    return 0


class Progress:
    """A redrawn line on a terminal; elsewhere (logs, `ray job logs`) a line every 10 s and at the end."""

    def __init__(self, command: str, items: int, shards: int):
        self.command, self.items, self.shards = command, items, shards
        self.done_items = self.done_shards = 0
        self.start = self.printed = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, summary: dict) -> None:
        self.done_items += summary["items"]
        self.done_shards += 1
        now = time.perf_counter()
        if not self.tty and now - self.printed < 10 and self.done_shards < self.shards:
            return
        self.printed = now
        elapsed = now - self.start
        rate = self.done_items / elapsed if elapsed > 0 else math.nan
        left = (self.items - self.done_items) / rate if rate > 0 else math.nan
        line = (f"{self.command}: {self.done_items}/{self.items} items, {self.done_shards}/{self.shards} shards, "
                f"{rate:.1f} items/s, {left:.0f} s left")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.done_shards:
            print(file=sys.stderr)

