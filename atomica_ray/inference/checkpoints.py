"""Which model to run: ATOMICA files, a model directory, one checkpoint, or a whole run directory.

A run directory (what `atomica-ray train` writes under `--storage-path/NAME`) holds several checkpoints; `best`
picks the one whose own last report has the best value of the task's selection metric (ties: the later one),
`latest` the last one trained. Mid-epoch checkpoints carry no validation metric and are never `best`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from atomica_ray.train.checkpoint import CONFIG_FILE, MODEL_DIR, model_files, read_history

# ATOMICA model class -> the task whose forward gives per-item predictions (atomica-ray predict)
PREDICTING_TASKS = {
    "AffinityPredictor": "PDBBind",
    "RegressionPredictor": "regression",
    "ClassifierModel": "binary_classifier",
    "MultiClassClassifierModel": "multiclass_classifier",
    "ResidueClassifierModel": "residue_binary_classifier",  # one probability per non-global block
    "MultiLabelClassifierModel": "multilabel_classifier",  # one probability per class
}
WHICH = ("best", "latest")


@dataclass(frozen=True)
class ModelFiles:
    config: Path  # ATOMICA config.json
    weights: Path  # its weights (.pt)
    chosen: str = ""  # how a run directory's checkpoint was picked (empty otherwise)


def is_model_dir(path: Path) -> bool:
    """A checkpoint (model/config.json inside) or a model directory (config.json inside)."""
    return (path / MODEL_DIR / "config.json").is_file() or (path / "config.json").is_file()


def run_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / MODEL_DIR / "config.json").is_file())


def _selection_of(checkpoint: Path) -> tuple[str, str] | None:
    """(metric, mode) the run ranked its checkpoints by: its train_config.yaml's task and selection keys (or the
    task of its model class); None when neither says."""
    from atomica_ray.tasks import get_task, selection
    from atomica_ray.train.config import TrainConfig

    values = {}
    config = checkpoint / CONFIG_FILE
    if config.is_file():
        values = yaml.safe_load(config.read_text()) or {}
    task = values.get("task") or PREDICTING_TASKS.get(
        json.loads((checkpoint / MODEL_DIR / "config.json").read_text()).get("model_type"))
    if task is None:
        return None
    known = TrainConfig().to_dict()  # defaults for keys an older run did not write
    cfg = SimpleNamespace(**{**known, **{k: v for k, v in values.items() if k in known}, "task": task})
    return selection(get_task(task), cfg)


def pick_checkpoint(run_dir: Path, which: str = "best") -> tuple[Path, str]:
    """(checkpoint, a sentence saying why) of a run directory."""
    if which not in WHICH:
        raise ValueError(f"--which {which!r}: choose {' or '.join(WHICH)}")
    found = run_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint (a checkpoint_* directory with model/config.json) in it")
    last = {c: (read_history(c) or [{}])[-1] for c in found}

    def trained(c: Path) -> tuple:
        return int(last[c].get("global_step", -1)), int(last[c].get("epoch", -1)), c.name

    if which == "latest":
        chosen = max(found, key=trained)
        return chosen, f"the latest of {len(found)} checkpoints of run {run_dir.name}"
    chosen_by = _selection_of(found[-1])
    if chosen_by is None:
        raise ValueError(f"{run_dir}: cannot tell which task trained it (no task in {CONFIG_FILE}); "
                         "pass --which latest or a checkpoint directory")
    metric, mode = chosen_by
    sign = 1.0 if mode == "min" else -1.0
    scored = [c for c in found if isinstance(last[c].get(metric), (int, float))
              and math.isfinite(last[c][metric]) and abs(last[c][metric]) < 1e300]
    if not scored:
        raise ValueError(f"{run_dir}: none of its {len(found)} checkpoints has a validation {metric} (trained "
                         "without a valid_set?); pass --which latest")

    def rank(c: Path) -> tuple:  # best value first; among equal values the later checkpoint
        step, epoch, _ = trained(c)
        return sign * last[c][metric], -step, -epoch

    chosen = min(scored, key=rank)
    return chosen, (f"the best of {len(scored)} validated checkpoints of run {run_dir.name} by {metric} "
                    f"({mode}): {last[chosen][metric]:.6g}")


def resolve(checkpoint: str | None, model_config: str | None, model_weights: str | None,
            which: str = "best") -> ModelFiles:
    """The model files named on the command line (`--checkpoint` or `--model_config` + `--model_weights`)."""
    if checkpoint:
        if model_config or model_weights:
            raise ValueError("give either --checkpoint or --model_config/--model_weights, not both")
        path = Path(checkpoint).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
        if is_model_dir(path):
            return ModelFiles(*model_files(path))
        chosen, why = pick_checkpoint(path, which)
        return ModelFiles(*model_files(chosen), chosen=f"{chosen} ({why})")
    if not (model_config and model_weights):
        from atomica_ray.inference.pipeline import NO_MODEL

        raise ValueError(NO_MODEL)
    for flag, value in (("--model_config", model_config), ("--model_weights", model_weights)):
        if not Path(value).is_file():
            raise FileNotFoundError(f"{flag} {value}: no such file")
    return ModelFiles(Path(model_config), Path(model_weights))


def read_config(files: ModelFiles) -> dict:
    try:
        return json.loads(files.config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{files.config}: not JSON ({error})") from error


def fragmentation_of(model_config: dict) -> str | None:
    inner = model_config.get("prot_model", model_config)  # ProteinInterfaceModel nests its encoder's config
    return inner.get("fragmentation_method")


def fingerprint(files: ModelFiles) -> str:
    """sha256 of config and weights: what a resumed run must still be running."""
    digest = hashlib.sha256()
    for path in (files.config, files.weights):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_model(files: ModelFiles, device: torch.device) -> torch.nn.Module:
    """The model in eval mode on `device` (weights read with weights_only=True)."""
    from atomica_ray.models import load_atomica

    return load_atomica(files.config, files.weights).to(device).eval()


def pick_device(name: str | None) -> torch.device:
    if name and name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine's torch sees no CUDA device")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
