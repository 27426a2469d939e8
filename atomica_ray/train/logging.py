"""Run logging from rank 0: metrics history (JSONL), TensorBoard scalars, wandb. (What people see on the console
travels as events: `train.console`.)

Ray keeps no history of metrics reported without a checkpoint, so every report is appended to
`<run dir>/metrics_history.jsonl` (and a copy travels inside each checkpoint; a resumed run rewrites the file from
its checkpoint's copy so reports of a crashed attempt are not counted twice).

wandb is imported only when used. Mode: `wandb_mode` if given, else online when WANDB_API_KEY is set, else
offline. The run id is stored in the run directory (and the checkpoint), so restarts and relaunches continue the
same wandb run; runs are grouped by `experiment` (default: the task name).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

from atomica_ray.train.checkpoint import HISTORY_FILE
from atomica_ray.train.config import TrainConfig

WANDB_ID_FILE = "wandb_run_id"


def wandb_mode(cfg: TrainConfig) -> str | None:
    """The wandb mode of a run, or None when wandb is not used."""
    if cfg.wandb_mode == "disabled" or not (cfg.use_wandb or cfg.wandb_mode):
        return None
    if cfg.wandb_mode:
        return cfg.wandb_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def clean(metrics: dict) -> dict:
    """JSON-safe numbers (NaN/inf become null)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


class RunLogger:
    """Everything rank 0 writes besides checkpoints. On other ranks every method does nothing."""

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, run_name: str, enabled: bool,
                 history: list[dict], wandb_id: str | None):
        self.cfg, self.enabled, self.run_dir = cfg, enabled, run_dir
        self.history = list(history)
        self.tb = None
        self.wandb = None
        self.wandb_id = wandb_id
        if not enabled:
            return
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._rewrite_history()
            if cfg.tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        mode = wandb_mode(cfg)
        if mode is not None:
            self.wandb_id = self.wandb_id or self._stored_wandb_id() or uuid.uuid4().hex[:12]
            self._store_wandb_id()
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project, group=cfg.experiment or cfg.task, name=run_name, id=self.wandb_id,
                resume="allow", mode=mode, dir=str(run_dir) if run_dir else None, config=cfg.to_dict(),
            )

    def _stored_wandb_id(self) -> str | None:
        file = self.run_dir / WANDB_ID_FILE if self.run_dir else None
        return file.read_text().strip() if file and file.is_file() else None

    def _store_wandb_id(self) -> None:
        if self.run_dir is not None:
            (self.run_dir / WANDB_ID_FILE).write_text(self.wandb_id)

    def _rewrite_history(self) -> None:
        tmp = self.run_dir / (HISTORY_FILE + ".tmp")
        with open(tmp, "w") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.run_dir / HISTORY_FILE)

    def log_step(self, step: int, scalars: dict) -> None:
        """Per-optimizer-step scalars (train loss, lr, grad norm)."""
        if not self.enabled or (self.tb is None and self.wandb is None):
            return
        scalars = {k: float(v) for k, v in scalars.items()}  # device tensors: read (a host sync) only when logged
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def log_report(self, metrics: dict) -> None:
        """One `ray.train.report`: appended to the history, and to TensorBoard/wandb."""
        if not self.enabled:
            return
        row = clean(metrics)
        self.history.append(row)
        if self.run_dir is not None:
            with open(self.run_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
        step = int(metrics["global_step"])
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in numbers.items():
                if v is not None:
                    self.tb.add_scalar(f"report/{k}", v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({f"report/{k}": v for k, v in numbers.items()}, step=step)

    @property
    def tensorboard_dir(self) -> str | None:
        return str(self.run_dir / "tensorboard") if self.tb is not None else None

    @property
    def wandb_where(self) -> str | None:
        """The wandb run's page (online) or local directory (offline)."""
        if self.wandb is None:
            return None
        url = getattr(self.wandb, "url", None)
        return url or f"offline run {self.wandb_id} in {getattr(self.wandb, 'dir', self.run_dir)} (wandb sync)"

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
