"""A run directory that can always be resumed: the driver repairs it before Ray Train reads it.

Ray Train resumes a run from the checkpoint its snapshot (`checkpoint_manager_snapshot.json`) names as the latest;
a snapshot that names a missing checkpoint stops the run before it starts (CheckpointManagerInitializationError),
and a damaged checkpoint fails every restart. `repair` runs on the driver before every launch and:

- removes leftovers of checkpoints whose writing was interrupted (`.tmp-*`; they were never reported);
- verifies the checkpoints the snapshot names (sizes against their manifests; checksums too for the one the run
  will resume from) and moves damaged ones to `<run>/.damaged/`, out of Ray's way but not deleted;
- adopts complete checkpoints newer than the snapshot's latest that Ray never registered (written and renamed
  into place, then the run was stopped before the report reached Ray's controller: Ctrl-C, a killed driver);
- rewrites the snapshot (atomically, the old one kept as `.bak`) accordingly, its latest being the newest intact
  checkpoint; a snapshot that cannot be read is rebuilt from the intact checkpoints on disk.

It returns what it did, in words, for the console. Local (and NFS) storage only: object storage is left to Ray.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from atomica_ray.train.checkpoint import (
    HISTORY_FILE, TMP_PREFIX, checkpoint_order, read_manifest, verify_checkpoint,
)

SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
DAMAGED_DIR = ".damaged"


def remove_partial_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoints whose writing never finished (a killed worker, a full disk)."""
    removed = []
    for p in Path(run_dir).glob(f"{TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _quarantine(run_dir: Path, name: str) -> None:
    src = run_dir / name
    if src.exists():
        dst = run_dir / DAMAGED_DIR / name
        dst.parent.mkdir(exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst, ignore_errors=True)
        os.rename(src, dst)


def _last_metrics(ckpt: Path) -> dict:
    """The report a checkpoint was written with (the last row of its own metrics history), as Ray keeps it: with
    a finite selection metric (ranked last where the run had none, as the worker reports it)."""
    import sys

    import yaml

    try:
        rows = [json.loads(x) for x in (ckpt / HISTORY_FILE).read_text().splitlines() if x.strip()]
        task = (yaml.safe_load((ckpt / "train_config.yaml").read_text()) or {}).get("task")
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    metrics = {k: v for k, v in (rows[-1] if rows else {}).items() if v is not None}
    try:
        from atomica_ray.tasks import get_task

        spec = get_task(task)
        metrics.setdefault(spec.selection_metric, sys.float_info.max if spec.mode == "min" else -sys.float_info.max)
    except (ValueError, TypeError):
        pass
    return metrics


def _rebuild(run_dir: Path, ray_version: str) -> dict:
    """A snapshot naming every intact checkpoint on disk, oldest first, the newest as latest."""
    intact = sorted((p for p in run_dir.glob("checkpoint_*") if p.is_dir() and verify_checkpoint(p, False) is None),
                    key=checkpoint_order)
    results = [{"version": 0, "checkpoint_dir_name": p.name, "metrics": _last_metrics(p)} for p in intact]
    return {"ray_version": ray_version, "checkpoint_results": results,
            "checkpoint_report_indices": list(range(1, len(results) + 1)),
            "latest_checkpoint_result": results[-1] if results else None, "pending_training_results": [],
            "pending_validation_specs": [], "current_report_index": len(results),
            "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
            "failed_validation_checkpoint_dir_names": []}


def _write_snapshot(run_dir: Path, snapshot: dict) -> None:
    path = run_dir / SNAPSHOT
    if path.exists():
        shutil.copyfile(path, path.with_name(SNAPSHOT + ".bak"))
    tmp = path.with_name(f".{SNAPSHOT}.tmp")
    tmp.write_text(json.dumps(snapshot))
    os.replace(tmp, path)


def repair(run_dir: str | Path) -> list[str]:
    """Make `run_dir` resumable (see the module doc); returns notes for the console."""
    if "://" in str(run_dir):
        return []
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    notes = []
    partial = remove_partial_checkpoints(run_dir)
    if partial:
        notes.append(f"removed {len(partial)} unfinished checkpoint write(s): {', '.join(partial)}")
    path = run_dir / SNAPSHOT
    if not path.exists():
        return notes
    import ray

    try:
        snapshot = json.loads(path.read_text())
        results = snapshot["checkpoint_results"]
        indices = snapshot["checkpoint_report_indices"]
        assert len(results) == len(indices)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        snapshot = _rebuild(run_dir, ray.__version__)
        _write_snapshot(run_dir, snapshot)
        latest = snapshot["latest_checkpoint_result"]
        notes.append(f"the run's checkpoint list ({SNAPSHOT}) was unreadable ({type(e).__name__}); rebuilt it from "
                     f"the intact checkpoints on disk: resuming from "
                     f"{latest['checkpoint_dir_name'] if latest else 'the start (none is intact)'}")
        return notes

    latest = snapshot.get("latest_checkpoint_result")
    latest_name = latest["checkpoint_dir_name"] if latest else None
    named = {r["checkpoint_dir_name"] for r in results} | ({latest_name} if latest_name else set())
    named |= {r["checkpoint_dir_name"] for r in snapshot.get("pending_training_results", [])}
    on_disk = {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()}
    newest_named = max((checkpoint_order(run_dir / n) for n in named), default=(-1, -1))
    # the newest first: the first intact one (checksums verified) is where the run resumes
    broken: dict[str, str] = {}
    adopted: list[str] = []
    resume_from = None
    for name in sorted(named | on_disk, key=lambda n: checkpoint_order(run_dir / n), reverse=True):
        unregistered = name not in named
        if unregistered and checkpoint_order(run_dir / name) <= newest_named:
            continue  # older than what Ray knows: not a resume point (Ray may have dropped it from its top k)
        why = verify_checkpoint(run_dir / name, checksums=resume_from is None)
        if why is not None:
            broken[name] = why
            continue
        if unregistered:
            adopted.append(name)
        if resume_from is None:
            resume_from = name
    if not broken and not adopted:
        return notes

    for name in broken:
        _quarantine(run_dir, name)
    keep = [(r, i) for r, i in zip(results, indices) if r["checkpoint_dir_name"] not in broken]
    index = max([i for _, i in keep] + [snapshot.get("current_report_index", 0)])
    for name in sorted(adopted, key=lambda n: checkpoint_order(run_dir / n)):
        index += 1
        keep.append(({"version": 0, "checkpoint_dir_name": name, "metrics": _last_metrics(run_dir / name)}, index))
    snapshot["checkpoint_results"] = [r for r, _ in keep]
    snapshot["checkpoint_report_indices"] = [i for _, i in keep]
    snapshot["current_report_index"] = index
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []),
                                      snapshot.get("pending_validation_specs", []))
               if r["checkpoint_dir_name"] not in broken]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        snapshot[key] = [n for n in snapshot.get(key, []) if n not in broken]
    snapshot["latest_checkpoint_result"] = next(
        (r for r in snapshot["checkpoint_results"] if r["checkpoint_dir_name"] == resume_from), None)
    _write_snapshot(run_dir, snapshot)
    parts = [f"{n} is damaged ({why})" for n, why in broken.items()]
    if broken:
        parts[-1] += f": moved to {run_dir / DAMAGED_DIR}"
    if adopted:
        parts.append(f"{', '.join(sorted(adopted))} complete but not yet registered when the run stopped: kept")
    target = resume_from or "the start: no intact checkpoint is left"
    if resume_from:
        manifest = read_manifest(run_dir / resume_from) or {}
        if "epoch" in manifest:
            target += f" (epoch {manifest['epoch']}, step {manifest['global_step']})"
    notes.append(f"{'; '.join(parts)}; resuming from {target}")
    return notes
