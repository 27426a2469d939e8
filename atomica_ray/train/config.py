"""TrainConfig: every knob of one training run, as flat keys.

Keys keep ATOMICA's `train.py` names (`lr`, `final_lr`, `max_n_vertex_per_gpu`, `k_neighbors`, `tr_weight`, ...),
so a flag, a YAML key and a `--set key=value` override all spell a setting the same way. Keys ATOMICA does not
have are ours (Ray scaling, precision, EMA, warmup, logging). One exception to "ATOMICA's names": ATOMICA's
`num_workers` counts DataLoader processes; here `num_workers` is the number of Ray Train workers (one per GPU,
as `ScalingConfig` spells it) and the loader processes are `loader_workers`.

Sources, lowest precedence first: the defaults below, a YAML file, command-line flags, `--set key=value`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ATOMICA_SEED = 12  # utils/random_seed.py: SEED


@dataclass
class TrainConfig:
    # --- task and data ---------------------------------------------------------------------------------------
    task: str = "binary_classifier"
    train_set: str | None = None
    valid_set: str | None = None
    num_classifier_classes: int | None = None  # multiclass_classifier and multilabel_classifier only
    max_n_vertex_per_gpu: int = 1000  # block budget of one batch, per rank (ATOMICA: per GPU)
    valid_max_n_vertex_per_gpu: int | None = None  # None: same as max_n_vertex_per_gpu
    max_n_vertex_per_item: int | None = None  # larger items are cropped around the interface
    balanced_sampler: bool = False  # label-balanced (downstream) / modality-balanced (pretraining) resampling
    shuffle: bool = True
    fragmentation_method: str | None = None  # None | PS_300 | PS_500
    allow_pickle: bool = False  # reading ATOMICA .pkl files runs pickle: opt in explicitly
    loader_workers: int = 0  # DataLoader processes per Ray worker (ATOMICA's --num_workers)

    # --- classifier options (ATOMICA's flags) -----------------------------------------------------------------
    use_focal_loss: bool = False  # focal loss instead of (B)CE (multiclass_classifier, multilabel_classifier)
    focal_gamma: float = 2.0  # focal loss focusing parameter (0 = cross-entropy)
    focal_alpha: list[float] | None = None  # focal loss weights: one number, or one per class; None: unweighted
    weighted_loss: bool = False  # class weights (multiclass) / pos_weight (multilabel) from the training labels
    multiclass_metric: str | None = None  # auprc | f1_macro: what multiclass / multilabel select by (None: auprc)
    selection_metric: str | None = None  # reported val_* metric ranking checkpoints and early stopping; None: task's
    random_block_sampling: bool = False  # each training item keeps a random subset of its non-global blocks
    block_sampling_p_keep: float = 1.0  # probability of keeping each non-global block when sampling
    block_sampling_p_none: float = 0.0  # probability of leaving an item whole when sampling

    # --- optimisation (ATOMICA's names) ----------------------------------------------------------------------
    lr: float = 1e-3
    final_lr: float | None = None  # None: = lr (constant schedule)
    max_epoch: int = 10
    warmup_epochs: int = 0  # epochs whose validation metric is ignored by early stopping
    patience: int = -1  # epochs without improvement before stopping; -1: never stop early
    grad_clip: float | None = None  # max gradient L2 norm
    save_topk: int = -1  # checkpoints kept by the selection metric; -1: keep all
    cycle_steps: int = 100000  # CosineAnnealingWarmRestarts period (optimizer steps)
    dropout: float = 0.0
    seed: int = ATOMICA_SEED

    # --- optimisation (ours) ---------------------------------------------------------------------------------
    optimizer: str | None = None  # adam | adamw; None: the task's default (ATOMICA's trainers)
    weight_decay: float = 1e-3  # ATOMICA's trainers all use 1e-3
    scheduler: str | None = None  # exp_decay | cosine_restarts | constant; None: the task's default
    lr_warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps (ATOMICA had none)
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA only)
    # CUDA only: replay the encoders' layer stacks from CUDA graphs over bucketed graph sizes
    # (models/kernels/cuda_graphs.py)
    cuda_graphs: bool = False
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights and validate with it
    max_bad_steps: int = 5  # fail after this many optimizer steps in a row with a non-finite loss or gradient
    report_every_steps: int = 0  # > 0: also report (and checkpoint) every N optimizer steps inside an epoch

    # --- model (ATOMICA's names) -----------------------------------------------------------------------------
    atom_hidden_size: int = 128
    block_hidden_size: int = 128
    edge_size: int = 16
    k_neighbors: int = 9
    n_layers: int = 3
    bottom_global_message_passing: bool = False
    global_message_passing: bool = False
    modality_embedding: bool = False
    pred_dropout: float = 0.0
    pred_nonlinearity: str = "relu"
    num_pred_layers: int = 3
    pred_hidden_size: int = 32

    # --- ATOMICA checkpoints (ours; models/config_keys.py) ---------------------------------------------------
    atomica_numerics: bool = False  # build the model with ATOMICA's numerics (no atomica-ray fixes)
    atomica_strict: bool = False  # refuse to write checkpoints whose numerics ATOMICA's code does not have

    # --- pretraining noise and masking (ATOMICA's names) -----------------------------------------------------
    atom_noise: float = 0.0
    translation_noise: float = 0.0
    rotation_noise: float = 0.0
    max_rotation: float = math.pi / 4
    torsion_noise: float = 0.0
    mask_proportion: float = 0.0
    atom_weight: float = 1.0
    tr_weight: float = 1.0
    rot_weight: float = 1.0
    tor_weight: float = 1.0
    mask_weight: float = 1.0

    # --- starting points -------------------------------------------------------------------------------------
    pretrain_config: str | None = None  # ATOMICA config.json to fine-tune from ...
    pretrain_weights: str | None = None  # ... with its weights (.pt state dict)
    partial_finetune: bool = False  # train the task head only
    init_checkpoint: str | None = None  # a checkpoint dir of another run: start from it, this config's hparams win

    # --- Ray -------------------------------------------------------------------------------------------------
    num_workers: int = 1  # Ray Train workers (one per GPU); `--num-workers MIN:MAX` sets it and max_workers
    # elastic: grow to this many workers when the cluster has room, shrink down to num_workers (None: fixed size)
    max_workers: int | None = None
    resize_interval_s: float = 60.0  # elastic: how often Ray looks for room to grow the worker group
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0  # worker-group restarts from the latest checkpoint (FailureConfig)
    max_preemptions: int = -1  # restarts after a node preemption, counted apart from max_failures; -1: no limit
    preemption_check_steps: int = 10  # ask Ray every N optimizer steps whether a node is being preempted

    # --- logging ---------------------------------------------------------------------------------------------
    use_wandb: bool = False
    wandb_mode: str | None = None  # online | offline | disabled; None: online iff WANDB_API_KEY is set
    wandb_project: str = "atomica-ray"
    experiment: str | None = None  # wandb group; None: the task name
    tensorboard: bool = True
    progress_bar: bool = True

    # --- testing hooks ---------------------------------------------------------------------------------------
    # Kill this worker process (SIGKILL, rank 0) right after optimizer step N of the first attempt; the marker
    # file records that the crash happened so the restarted group does not crash again. For fault-tolerance tests.
    crash_at_step: int | None = None
    crash_marker: str | None = None
    # debug: make the loss of optimizer steps in this list non-finite (every rank), to exercise the skip logic
    nonfinite_steps: list[int] = field(default_factory=list)
    # Wait up to 10 minutes after optimizer step N (once per run; asking Ray about preemption every 0.5 s), so that a
    # test can remove, add or drain a node while the run is mid-epoch.
    hold_at_steps: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        types_ = cls.field_types()
        values = split_worker_range(values, source)
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(types_)}")
        kwargs = {k: coerce(v, types_[k], f"{source}: key {k!r}") for k, v in values.items()}
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(load_yaml(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str], source: str = "--set") -> "TrainConfig":
        """Apply `key=value` strings; values are parsed as YAML scalars (`1e-4`, `true`, `null`, `[1, 2]`)."""
        changes = {}
        for text in assignments:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{source}: expected key=value, got {text!r}")
            changes[key.strip()] = yaml.load(value, Loader=ConfigLoader) if value.strip() else None
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source=source)

    def validate(self, source: str = "config") -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"{source}: key {key!r} = {getattr(self, key)!r}: {why}")

        from atomica_ray.tasks import TASKS

        if self.task not in TASKS:
            raise bad("task", f"unknown task; choose one of {sorted(TASKS)}")
        if self.task in ("multiclass_classifier", "multilabel_classifier") and not self.num_classifier_classes:
            raise bad("num_classifier_classes", f"{self.task} needs the number of classes")
        self._validate_classifier_options(bad)
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.final_lr is not None and self.final_lr <= 0:
            raise bad("final_lr", "must be > 0 (the exponential decay takes its logarithm)")
        if self.max_epoch < 1:
            raise bad("max_epoch", "must be >= 1")
        if self.grad_accum < 1:
            raise bad("grad_accum", "must be >= 1")
        if self.num_workers < 1:
            raise bad("num_workers", "must be >= 1")
        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise bad("max_workers", f"must be >= num_workers ({self.num_workers}); elastic: --num-workers MIN:MAX")
        if self.resize_interval_s <= 0:
            raise bad("resize_interval_s", "must be > 0")
        if self.max_preemptions < -1:
            raise bad("max_preemptions", "must be >= 0, or -1 for no limit")
        if self.preemption_check_steps < 1:
            raise bad("preemption_check_steps", "must be >= 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise bad("precision", "choose fp32, bf16 or fp16")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1)")
        if self.optimizer not in (None, "adam", "adamw"):
            raise bad("optimizer", "choose adam or adamw")
        if self.scheduler not in (None, "exp_decay", "cosine_restarts", "constant"):
            raise bad("scheduler", "choose exp_decay, cosine_restarts or constant")
        if self.wandb_mode not in (None, "online", "offline", "disabled"):
            raise bad("wandb_mode", "choose online, offline or disabled")
        if self.pred_nonlinearity not in ("relu", "gelu", "elu"):
            raise bad("pred_nonlinearity", "choose relu, gelu or elu")
        if (self.pretrain_config is None) != (self.pretrain_weights is None):
            raise bad("pretrain_config", "pretrain_config and pretrain_weights go together")
        if self.atom_noise and self.torsion_noise:
            raise bad("atom_noise", "atom and torsion noise cannot be used together (as in ATOMICA)")
        if self.max_bad_steps < 1:
            raise bad("max_bad_steps", "must be >= 1")

    def _validate_classifier_options(self, bad) -> None:
        """The options of issue 17 (ATOMICA's classifier flags), where ATOMICA allows them."""
        from atomica_ray.tasks import get_task, selection

        per_class = ("multiclass_classifier", "multilabel_classifier")
        for key in ("use_focal_loss", "weighted_loss"):
            if getattr(self, key) and self.task not in per_class:
                raise bad(key, f"only for {' and '.join(per_class)} (as in ATOMICA), not {self.task}")
        if self.focal_gamma < 0:
            raise bad("focal_gamma", "must be >= 0")
        if self.focal_alpha is not None and len(self.focal_alpha) not in (1, self.num_classifier_classes or 1):
            raise bad("focal_alpha", f"give one weight or one per class ({self.num_classifier_classes})")
        if self.multiclass_metric not in (None, "auprc", "f1_macro"):
            raise bad("multiclass_metric", "choose auprc or f1_macro")
        for key in ("block_sampling_p_keep", "block_sampling_p_none"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be in [0, 1]")
        task = get_task(self.task)
        if self.random_block_sampling and task.data_kind(self) not in ("labelled", "multiclass", "residue",
                                                                        "multilabel"):
            raise bad("random_block_sampling", f"only for labelled classification/regression tasks, not {self.task}")
        if self.balanced_sampler and task.label_kind != "scalar":
            raise bad("balanced_sampler", f"{self.task} has list-valued labels: there is no class to balance")
        try:
            selection(task, self)
        except ValueError as e:
            raise bad("selection_metric", str(e)) from None

    @property
    def elastic(self) -> bool:
        return self.max_workers is not None and self.max_workers > self.num_workers

    @property
    def micro_batches_per_step(self) -> int:
        """Batches of one optimizer step over all workers: grad_accum x the largest worker count. Held fixed when an
        elastic run changes size (each worker then accumulates more or fewer of them)."""
        return self.grad_accum * (self.max_workers or self.num_workers)

    @property
    def final_lr_value(self) -> float:
        return self.lr if self.final_lr is None else self.final_lr

    @property
    def patience_epochs(self) -> int:
        """ATOMICA's TrainConfig: a non-positive patience means max_epoch."""
        return self.patience if self.patience > 0 else self.max_epoch


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, except that `2:8` stays the string "2:8": YAML 1.1 reads it as a base-60 integer (128),
    never what a config means (`num_workers: 2:8` is an elastic range)."""


def _int_or_range(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    if ":" in node.value:
        return node.value
    return yaml.SafeLoader.construct_yaml_int(loader, node)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", _int_or_range)


def split_worker_range(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`num_workers: "MIN:MAX"` (the --num-workers 2:8 spelling) -> num_workers MIN, max_workers MAX."""
    text = values.get("num_workers")
    if not (isinstance(text, str) and ":" in text):
        return values
    low, _, high = text.partition(":")
    try:
        low_n, high_n = int(low), int(high)
    except ValueError:
        raise ValueError(f"{source}: key 'num_workers': expected N or MIN:MAX (e.g. 2:8), got {text!r}") from None
    return {**values, "num_workers": low_n, "max_workers": high_n}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as f:
        values = yaml.load(f, Loader=ConfigLoader) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a mapping of key: value, got {type(values).__name__}")
    return values


def coerce(value: Any, type_: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type; fail with a message naming the key."""
    origin = typing.get_origin(type_)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], where)
    if origin is list:
        (item_type,) = typing.get_args(type_)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, item_type, where) for v in value]
    if value is None:
        raise ValueError(f"{where}: must not be null")
    try:
        if type_ is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if type_ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(value)
        if type_ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if type_ is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {type_.__name__}, got {value!r}") from None
    return value
