"""Training checkpoints: what a run needs to continue exactly where it stopped.

Layout of one checkpoint directory (written by rank 0, handed to `ray.train.report`):

    model/                  the model in ATOMICA's format (save_atomica: config.json + weights); with EMA on,
                            these are the averaged weights, the ones that were validated
    train_state.pt          optimizer, GradScaler, EMA, raw weights (EMA only), TrainState, RNG states of
                            every rank; read back with torch.load(weights_only=True)
    metrics_history.jsonl   every report of the run up to this checkpoint
    train_config.yaml       the TrainConfig of the run (for people; resuming uses the current config)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "metrics_history.jsonl"
CONFIG_FILE = "train_config.yaml"


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
                     rng_states: list[dict], history: list[dict], config: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
        "rng": rng_states,
    }
    # weights named as ATOMICA's trainer names them: the epoch being trained (or just validated) and the step
    name = dict(epoch=state.epoch if state.batch else state.epoch - 1, step=state.global_step)
    if ema is not None:
        train_state["ema"] = ema.state_dict()
        train_state["raw_model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with ema.swapped_in(model):
            save_atomica(model, path / MODEL_DIR, **name)
    else:
        save_atomica(model, path / MODEL_DIR, **name)
    torch.save(train_state, path / STATE_FILE)
    with open(path / HISTORY_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    with open(path / CONFIG_FILE, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


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
