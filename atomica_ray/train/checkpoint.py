"""Training checkpoints: what a run needs to continue exactly where it stopped.

Layout of one checkpoint directory (written by rank 0, handed to `ray.train.report`):

    model/config.json       the model in ATOMICA's format (save_atomica); with EMA on, these are the averaged
    model/model.pt          weights, the ones that were validated. The weights' name is the same in every
                            checkpoint (manifest.json says which epoch and step they are)
    train_state.pt          optimizer, GradScaler, EMA, raw weights (EMA only), TrainState, RNG states of
                            every rank; read back with torch.load(weights_only=True)
    metrics_history.jsonl   every report of the run up to this checkpoint
    train_config.yaml       the TrainConfig of the run (for people; resuming uses the current config)
    manifest.json           written last: epoch, step, and the size and SHA-256 of every other file

A checkpoint cannot be half-written: it is written under a temporary name (in the run directory when storage is
local) and renamed to its final name only once complete, and `verify_checkpoint` checks a checkpoint against
its manifest (a disk that filled up mid-write leaves a short file under a complete-looking name elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "metrics_history.jsonl"
CONFIG_FILE = "train_config.yaml"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "atomica-ray-checkpoint"
TMP_PREFIX = ".tmp-"  # a checkpoint being written: <run dir>/.tmp-<name>-<random>


@dataclass
class TrainState:
    """Counters of a run. `batch` is the position in epoch `epoch`'s batch sequence (batches all ranks have trained
    on; 0 at an epoch boundary), the same whatever the world size."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0  # optimizer steps taken (the lr schedule's position)
    total_steps: int = 0  # optimizer steps of the whole run (exp_decay horizon), fixed at the first epoch
    best_metric: float | None = None  # best selection metric after warmup_epochs
    patience_left: int = 0
    stopped_early: bool = False
    bad_steps_in_row: int = 0
    skipped_oom: int = 0
    skipped_nonfinite: int = 0
    preemptions: int = 0  # just-in-time checkpoints written because Ray reported a node being preempted
    wandb_id: str | None = None
    # the lr schedule restarts its decay here when a relaunch changes the run's length (schedule.lr_at)
    schedule_from_step: int = 0
    schedule_from_lr: float | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def rng_state() -> dict:
    """This process's random states in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(path: Path, *, model, save_atomica, optimizer, scaler, ema, state: TrainState,
                     rng_states: list[dict], history: list[dict], config: dict, manifest: bool = True) -> None:
    """Write every file of a checkpoint into `path` (a fresh directory), the manifest last (or leave the
    manifest to the caller: `write_manifest`)."""
    path.mkdir(parents=True, exist_ok=True)
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
        "rng": rng_states,
    }
    if ema is not None:
        train_state["ema"] = ema.state_dict()
        train_state["raw_model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with ema.swapped_in(model):
            save_atomica(model, path / MODEL_DIR)
    else:
        save_atomica(model, path / MODEL_DIR)
    torch.save(train_state, path / STATE_FILE)
    with open(path / HISTORY_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    with open(path / CONFIG_FILE, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    if manifest:  # the epoch being trained (or just validated) and the step, as ATOMICA's trainer names weights
        write_manifest(path, epoch=state.epoch if state.batch else state.epoch - 1, global_step=state.global_step)


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, **info) -> None:
    """manifest.json: `info` and every file's size and SHA-256; the files are flushed to disk first, so a
    manifest never describes data still in the page cache."""
    path = Path(path)
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        _fsync(file)
        files[file.relative_to(path).as_posix()] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    tmp = path / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "version": 1, **info, "files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, path / MANIFEST_FILE)
    for d in {path} | {(path / f).parent for f in files}:
        _fsync(d)


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def verify_checkpoint(path: Path, checksums: bool = True) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None if it is intact. Checkpoints written before
    manifests existed are checked for a complete zip structure of their .pt files."""
    path = Path(path)
    if not path.is_dir():
        return "missing"
    manifest = read_manifest(path)
    if manifest is None:
        if (path / MANIFEST_FILE).exists():
            return f"{MANIFEST_FILE} is unreadable"
        pts = [path / STATE_FILE, *sorted((path / MODEL_DIR).glob("*.pt"))]
        for file in pts:
            if not file.is_file():
                return f"{file.relative_to(path)} is missing"
            try:
                with zipfile.ZipFile(file) as z:
                    if z.testzip() is not None:
                        raise zipfile.BadZipFile("a member fails its CRC")
            except (zipfile.BadZipFile, OSError) as e:
                return f"{file.relative_to(path)} is truncated or corrupt ({e})"
        return None
    for name, expect in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expect["size"]:
            return f"{name} has {size} bytes, its manifest says {expect['size']}"
        if checksums and _sha256(file) != expect["sha256"]:
            return f"{name} does not match its checksum"
    return None


_NAME = re.compile(r"checkpoint_epoch(\d+)_step(\d+)")


def checkpoint_order(path: Path) -> tuple[int, int]:
    """(global step, epoch) of a checkpoint, from its manifest or else its name: newer sorts later."""
    manifest = read_manifest(path) or {}
    match = _NAME.search(Path(path).name)
    step = manifest.get("global_step", int(match.group(2)) if match else -1)
    epoch = manifest.get("epoch", int(match.group(1)) if match else -1)
    return step, epoch


def newest_intact(run_dir: Path, skip: set[str] = frozenset()) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest intact checkpoint of a run directory, and the (name, why) of the broken newer ones."""
    broken = []
    candidates = [p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir() and p.name not in skip]
    for p in sorted(candidates, key=checkpoint_order, reverse=True):
        why = verify_checkpoint(p)
        if why is None:
            return p, broken
        broken.append((p.name, why))
    return None, broken


def publish_checkpoint(tmp: Path, final: Path) -> None:
    """Rename a completely written checkpoint to its final name. A checkpoint already there (written by an
    attempt whose report Ray never registered) is moved aside first and removed afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_train_state(path: Path) -> dict:
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not an atomica-ray checkpoint: {STATE_FILE} is missing")
    return torch.load(file, map_location="cpu", weights_only=True)


def read_history(path: Path) -> list[dict]:
    file = Path(path) / HISTORY_FILE
    if not file.is_file():
        return []
    with open(file) as f:
        return [json.loads(line) for line in f if line.strip()]


def model_files(path: Path) -> tuple[Path, Path]:
    """(config.json, weights) of the ATOMICA-format model inside a checkpoint directory (or a model dir)."""
    path = Path(path)
    model_dir = path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path
    config = model_dir / "config.json"
    weights = sorted(p for p in model_dir.glob("*") if p.suffix in (".pt", ".pth", ".bin"))
    if not config.is_file() or not weights:
        raise FileNotFoundError(f"{model_dir}: expected an ATOMICA-format model (config.json + a .pt weights file)")
    return config, weights[0]
