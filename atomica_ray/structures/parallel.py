"""Rows processed in parallel on Ray tasks (one CPU each), results handed back in row order.

A task takes a small chunk of rows (1-8, so that a few thousand structures make a few thousand tasks and every
core stays busy to the end). At most two chunks per CPU are in flight, so the driver's memory stays bounded by
what the writer has not consumed yet. The driver connects to Ray as `atomica-ray train` does: `--address`, the
job's cluster under `ray job submit`, else a new local Ray with every core.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from .index import Row
from .rows import Options, RowResult, process_row

MAX_CHUNK = 8


def process_chunk(rows: list[Row], options: Options) -> list[RowResult]:
    """Rows of one task. An unexpected exception fails its row, not the run."""
    out = []
    for row in rows:
        try:
            out.append(process_row(row, options))
        except Exception as e:  # noqa: BLE001 - one odd file must not stop a run over thousands
            out.append(RowResult(row, error=f"unexpected {type(e).__name__}: {' '.join(str(e).split())}"))
    return out


def process_rows(rows: list[Row], options: Options) -> Iterator[RowResult]:
    """The same, in this process (no Ray)."""
    for row in rows:
        yield from process_chunk([row], options)


def chunk_size(n_rows: int, n_cpus: int) -> int:
    return max(1, min(MAX_CHUNK, n_rows // (4 * max(1, n_cpus))))


def process_rows_on_ray(rows: list[Row], options: Options, progress: bool = True) -> Iterator[RowResult]:
    """Results of every row, in row order, computed by Ray tasks on the connected cluster."""
    import ray
    from tqdm import tqdm

    n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = chunk_size(len(rows), n_cpus)
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    remote = ray.remote(num_cpus=1, max_retries=1)(process_chunk)
    options_ref = ray.put(options)
    pending: dict = {}  # ObjectRef -> chunk index
    done: dict[int, list[RowResult]] = {}
    submitted, next_out = 0, 0
    bar = tqdm(total=len(rows), unit="structure", desc="process", file=sys.stderr, disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    failed = 0
    try:
        while next_out < len(chunks):
            while submitted < len(chunks) and len(pending) < 2 * n_cpus:
                pending[remote.remote(chunks[submitted], options_ref)] = submitted
                submitted += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    done[k] = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (killed, out of memory, ...)
                    reason = f"worker failed: {' '.join(str(e).split())[:300]}"
                    done[k] = [RowResult(row, error=reason) for row in chunks[k]]
                failed += sum(r.error is not None for r in done[k])
                bar.update(len(done[k]))
                bar.set_postfix(failed=failed, refresh=False)
            while next_out in done:
                yield from done.pop(next_out)
                next_out += 1
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref, force=True)
