"""Everything the driver checks before Ray starts, so that a bad input fails in seconds, in one line, and leaves
nothing behind: the run name, the storage path, the input paths, the data and its labels against the task, the
checkpoint to start from, and an existing run to resume.

The data checks read what is already on disk in columnar form: a Parquet dataset's dataset.json and its small
index columns (sizes, label, affinity: vectorised numpy passes, milliseconds for 100k items). ATOMICA .pkl /
.jsonl.gz inputs are converted here, once, into the user cache the workers read from: the conversion validates
every item (`data.items.validate_item`: coordinates, types, shapes), so a NaN coordinate or an unreadable file is
reported with its file, item and field before Ray starts. Each raised `InputError` is the whole message.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from atomica_ray.train.config import TrainConfig
from atomica_ray.train.errors import InputError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]{0,199}")
PATH_KEYS = ("train_set", "valid_set", "pretrain_config", "pretrain_weights", "init_checkpoint")


def check_name(name: str, what: str = "--name") -> None:
    """A run name is one path component: it cannot climb out of the storage path or hide."""
    if not NAME.fullmatch(name or ""):
        raise InputError(f"{what} {name!r}: a run name is one path component of letters, digits and . _ - + = @ , "
                         "(starting with a letter or digit, at most 200 characters)")


def check_storage(storage: str, run_name: str | None = None) -> None:
    """The storage path (and the run's directory in it, if it exists) can be written: a file is created and
    removed in the deepest existing directory. Object storage (s3://, gs://) is checked by Ray itself."""
    if "://" in storage:
        return
    target = Path(storage) / run_name if run_name else Path(storage)
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"storage path {storage}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".atomica-ray-write-test-")
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise InputError(f"storage path {storage} is not writable: {e.strerror or e} ({existing})") from None


def check_paths(cfg: TrainConfig) -> None:
    if not cfg.train_set:
        raise InputError("config: key 'train_set' is required (a Parquet dataset dir or an ATOMICA .pkl/.jsonl.gz)")
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if value and "://" not in value and not os.path.exists(value):
            raise InputError(f"config: key {key!r}: {value} does not exist")


# --- data --------------------------------------------------------------------------------------------------------

def check_data(cfg: TrainConfig, key: str, min_items: int = 1) -> int:
    """Open (or convert) the dataset of config key `key`, check it holds items and that its labels fit the task;
    returns its item count."""
    from atomica_ray.data.items import DataError
    from atomica_ray.data.loader import LIST_LABELS_OF_KIND, check_list_labels, item_labels, open_dataset
    from atomica_ray.tasks import get_task

    path = getattr(cfg, key)
    task = get_task(cfg.task)
    kind = task.data_kind(cfg)
    try:
        ds = open_dataset(path, allow_pickle=cfg.allow_pickle, fragmentation_method=cfg.fragmentation_method,
                          list_labels=LIST_LABELS_OF_KIND.get(kind, "auto"))
    except DataError as e:
        raise InputError(str(e)) from None
    shown = os.path.abspath(path)  # the user's file, not its converted copy in the cache

    def where(i: int, field: str) -> str:
        return f"{shown}, item {i} (id {ds[i]['id']!r}), field {field}"

    if len(ds) < min_items:
        raise InputError(f"{shown}: {len(ds)} items; config key {key!r} needs at least {min_items}"
                         + (" (one per Ray worker)" if min_items > 1 else ""))
    try:
        labels = item_labels(ds, kind)
        check_list_labels(ds, kind, cfg.num_classifier_classes)  # block labels / label vectors of the right size
    except DataError as e:
        raise InputError(str(e).replace(ds.path, shown)) from None
    if labels is not None and task.check_labels is not None:
        bad = task.check_labels(labels, cfg)
        if bad is not None:
            i, why = bad
            raise InputError(f"{where(i, 'label')}: {why}; task {cfg.task}")
    return len(ds)


# --- checkpoints ---------------------------------------------------------------------------------------------------

def saved_model_type(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_init_checkpoint(cfg: TrainConfig) -> None:
    """`init_checkpoint` is an intact checkpoint of a model of this task's class."""
    from atomica_ray.tasks import get_task
    from atomica_ray.train.checkpoint import MODEL_DIR, STATE_FILE, verify_checkpoint

    path = Path(cfg.init_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise InputError(f"config: key 'init_checkpoint': {path} is not an atomica-ray checkpoint directory (no "
                         f"{STATE_FILE}); to fine-tune ATOMICA weights use pretrain_config + pretrain_weights")
    why = verify_checkpoint(path)
    if why:
        raise InputError(f"config: key 'init_checkpoint': {path} is damaged: {why}")
    want = get_task(cfg.task).model_class
    have = saved_model_type(path / MODEL_DIR)
    if have != want:
        raise InputError(f"config: key 'init_checkpoint': {path} holds a {have} model, but task {cfg.task} trains a "
                         f"{want}; start from another class's weights with pretrain_config = {path / MODEL_DIR}/"
                         f"config.json and pretrain_weights = its .pt file")


def check_pretrained(cfg: TrainConfig) -> None:
    if not Path(cfg.pretrain_config).is_file():
        raise InputError(f"config: key 'pretrain_config': {cfg.pretrain_config} is not a file")
    try:
        json.loads(Path(cfg.pretrain_config).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"config: key 'pretrain_config': {cfg.pretrain_config} is not an ATOMICA config.json "
                         f"({e})") from None
    if not Path(cfg.pretrain_weights).is_file():
        raise InputError(f"config: key 'pretrain_weights': {cfg.pretrain_weights} is not a file")


def check_existing_run(cfg: TrainConfig, run_dir: Path) -> None:
    """Relaunching a run resumes it: the same task, else another name is needed (nothing of it is touched)."""
    import yaml

    from atomica_ray.train.checkpoint import CONFIG_FILE

    configs = sorted(run_dir.glob(f"checkpoint_*/{CONFIG_FILE}")) if run_dir.is_dir() else []
    for file in reversed(configs):
        try:
            task = (yaml.safe_load(file.read_text()) or {}).get("task")
        except (OSError, yaml.YAMLError):
            continue
        if task and task != cfg.task:
            raise InputError(f"run {run_dir} exists and trains {task}, not {cfg.task}: relaunching a run resumes it; "
                             "choose another --name")
        return


def check_inputs(cfg: TrainConfig) -> None:
    """The checks of a config alone: paths, the checkpoints to start from, the data and its labels."""
    check_paths(cfg)
    if cfg.pretrain_config:
        check_pretrained(cfg)
    if cfg.init_checkpoint and "://" not in cfg.init_checkpoint:
        check_init_checkpoint(cfg)
    for key, min_items in (("train_set", cfg.num_workers), ("valid_set", 1)):
        if getattr(cfg, key) and "://" not in getattr(cfg, key):
            check_data(cfg, key, min_items)


def check_train(cfg: TrainConfig, run_name: str, storage: str) -> None:
    """All checks of `atomica-ray train`: the name, the config's inputs, the run it may resume, the storage."""
    check_name(run_name)
    check_inputs(cfg)
    if "://" not in storage:
        check_existing_run(cfg, Path(storage) / run_name)
    check_storage(storage, run_name)
