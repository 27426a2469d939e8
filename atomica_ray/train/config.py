"""TrainConfig: every knob of one training run, as flat keys.

Keys keep ATOMICA's `train.py` names (`lr`, `final_lr`, `max_n_vertex_per_gpu`, `k_neighbors`, `tr_weight`, ...),
so a flag, a YAML key and a `--set key=value` override all spell a setting the same way. Keys ATOMICA does not
have are ours (Ray scaling, precision, EMA, warmup, logging). One exception to "ATOMICA's names": ATOMICA's
`num_workers` counts DataLoader processes; here `num_workers` is the number of Ray Train workers (one per GPU,
as `ScalingConfig` spells it) and the loader processes are `loader_workers`.

Sources, lowest precedence first: the defaults below, a YAML file, command-line flags, `--set key=value`.

Every key is declared once, with `key(default, description, bounds...)`: `atomica-ray train --help`,
`--print-config` and `validate()` all read that one declaration, so a new key needs one line here (and a
cross-key rule in `validate`, if it has one). The bounds are checked here rather than by pydantic: values keep
the command line's coercion (`--grad_clip none`, YAML `1e-4`), and an error is one line naming the source and key.
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

from atomica_ray.tasks import TASKS  # names only: the task modules (and torch) are imported on demand

ATOMICA_SEED = 12  # utils/random_seed.py: SEED


def key(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, choices: tuple | None = None, hidden: bool = False):
    """A config key: its default, the one-line description `--help` and `--print-config` show, and the bounds
    `validate` enforces (numbers must also be finite). `hidden` keys are test hooks: reachable with --set only."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "hidden": hidden}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# the section a key belongs to starts at the key named here and runs to the next section's first key
SECTIONS = {
    "task": "task and data",
    "use_focal_loss": "classifier options",
    "lr": "optimisation",
    "atom_hidden_size": "model",
    "atomica_numerics": "ATOMICA checkpoints",
    "atom_noise": "pretraining noise and masking",
    "pretrain_config": "starting points",
    "num_workers": "Ray",
    "use_wandb": "logging",
    "crash_at_step": "test hooks",
}


@dataclass
class TrainConfig:
    # --- task and data ---------------------------------------------------------------------------------------
    task: str = key("binary_classifier", "what to train: head, loss, metrics and defaults (ATOMICA's --task)",
                    choices=tuple(TASKS))
    train_set: str | None = key(None, "training data: a Parquet dataset dir or an ATOMICA .pkl / .jsonl.gz file")
    valid_set: str | None = key(None, "validation data (same forms); its metrics rank checkpoints")
    num_classifier_classes: int | None = key(None, "number of classes (multiclass and multilabel classifiers)",
                                             ge=2)
    max_n_vertex_per_gpu: int = key(1000, "block budget of one training batch, per worker", ge=1)
    valid_max_n_vertex_per_gpu: int | None = key(None, "block budget of a validation batch (null: as training)",
                                                 ge=1)
    max_n_vertex_per_item: int | None = key(None, "crop larger items around the interface (null: no crop)", ge=3)
    balanced_sampler: bool = key(False, "resample by label (downstream) or modality (pretraining)")
    shuffle: bool = key(True, "shuffle the training items every epoch")
    fragmentation_method: str | None = key(None, "block vocabulary of the data: PS_300, PS_500 or null",
                                           choices=(None, "PS_300", "PS_500"))
    allow_pickle: bool = key(False, "allow reading ATOMICA .pkl files (unpickling runs code: trusted files only)")
    loader_workers: int = key(0, "DataLoader processes per Ray worker (ATOMICA's --num_workers)", ge=0)

    # --- classifier options (ATOMICA's flags) -----------------------------------------------------------------
    use_focal_loss: bool = key(False, "focal loss instead of (B)CE (multiclass_classifier, multilabel_classifier)")
    focal_gamma: float = key(2.0, "focal loss focusing parameter (0: cross-entropy)", ge=0)
    focal_alpha: list[float] | None = key(None, "focal loss weights: one number, or one per class (null: none)")
    weighted_loss: bool = key(False, "class weights (multiclass) or pos_weight (multilabel) from the training labels")
    multiclass_metric: str | None = key(None, "what multiclass / multilabel runs select by (null: auprc)",
                                        choices=(None, "auprc", "f1_macro"))
    selection_metric: str | None = key(None, "reported val_* metric that ranks checkpoints (null: the task's)")
    random_block_sampling: bool = key(False, "each training item keeps a random subset of its non-global blocks")
    block_sampling_p_keep: float = key(1.0, "probability of keeping each non-global block when sampling",
                                       ge=0, le=1)
    block_sampling_p_none: float = key(0.0, "probability of leaving an item whole when sampling", ge=0, le=1)

    # --- optimisation (ATOMICA's names) ----------------------------------------------------------------------
    lr: float = key(1e-3, "peak learning rate", gt=0)
    final_lr: float | None = key(None, "learning rate at the last step (null: constant lr)", gt=0)
    max_epoch: int = key(10, "epochs to train", ge=1)
    warmup_epochs: int = key(0, "first epochs whose validation metric early stopping ignores", ge=0)
    patience: int = key(-1, "epochs without improvement before stopping early (-1: never)", ge=-1)
    grad_clip: float | None = key(None, "clip the gradient's L2 norm to this (null: no clipping)", gt=0)
    save_topk: int = key(-1, "checkpoints kept by the selection metric (-1: all)", ge=-1)
    cycle_steps: int = key(100000, "cosine_restarts period, in optimizer steps", ge=1)
    dropout: float = key(0.0, "dropout probability of the encoder", ge=0, lt=1)
    seed: int = key(ATOMICA_SEED, "random seed (weights, data order, noise)", ge=0)

    # --- optimisation (ours) ---------------------------------------------------------------------------------
    optimizer: str | None = key(None, "adam or adamw (null: the task's, as ATOMICA's trainers)",
                                choices=(None, "adam", "adamw"))
    weight_decay: float = key(1e-3, "weight decay (ATOMICA's trainers: 1e-3)", ge=0)
    scheduler: str | None = key(None, "lr decay: exp_decay, cosine_restarts or constant (null: the task's)",
                                choices=(None, "exp_decay", "cosine_restarts", "constant"))
    lr_warmup_steps: int = key(0, "linear lr warmup from 0 over this many optimizer steps", ge=0)
    grad_accum: int = key(1, "micro-batches per optimizer step", ge=1)
    precision: str = key("fp32", "fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)",
                         choices=("fp32", "bf16", "fp16"))
    # replay the encoders' layer stacks from CUDA graphs over bucketed graph sizes (models/kernels/cuda_graphs.py)
    cuda_graphs: bool = key(False, "CUDA only: replay the encoder layers from CUDA graphs")
    ema_decay: float = key(0.0, "> 0: validate and save an exponential moving average of the weights", ge=0, lt=1)
    max_bad_steps: int = key(5, "fail after this many optimizer steps in a row with a non-finite loss or gradient",
                             ge=1)
    report_every_steps: int = key(0, "> 0: also report and checkpoint every N optimizer steps", ge=0)

    # --- model (ATOMICA's names) -----------------------------------------------------------------------------
    atom_hidden_size: int = key(128, "hidden size of the atom-level encoder", ge=1)
    block_hidden_size: int = key(128, "hidden size of the block-level encoder", ge=1)
    edge_size: int = key(16, "edge feature size", ge=1)
    k_neighbors: int = key(9, "neighbours of each node in the k-NN graphs", ge=1)
    n_layers: int = key(3, "message-passing layers per level", ge=1)
    bottom_global_message_passing: bool = key(False, "message passing through the global atoms")
    global_message_passing: bool = key(False, "message passing through the global blocks")
    modality_embedding: bool = key(False, "embed the item's modality")
    pred_dropout: float = key(0.0, "dropout probability of the prediction head", ge=0, lt=1)
    pred_nonlinearity: str = key("relu", "activation of the prediction head: relu, gelu or elu",
                                 choices=("relu", "gelu", "elu"))
    num_pred_layers: int = key(3, "layers of the prediction head", ge=1)
    pred_hidden_size: int = key(32, "hidden size of the prediction head", ge=1)

    # --- ATOMICA checkpoints (ours; models/config_keys.py) ---------------------------------------------------
    atomica_numerics: bool = key(False, "build the model with ATOMICA's numerics (no atomica-ray fixes)")
    atomica_strict: bool = key(False, "refuse to write checkpoints whose numerics ATOMICA's code does not have")

    # --- pretraining noise and masking (ATOMICA's names) -----------------------------------------------------
    atom_noise: float = key(0.0, "Gaussian noise on atom coordinates (Angstrom; 0: off)", ge=0)
    translation_noise: float = key(0.0, "noise of the partner's translation (0: off)", ge=0)
    rotation_noise: float = key(0.0, "noise of the partner's rotation (0: off)", ge=0)
    max_rotation: float = key(math.pi / 4, "largest rotation angle (radians)", gt=0, le=math.pi)
    torsion_noise: float = key(0.0, "noise of torsion angles (0: off)", ge=0)
    mask_proportion: float = key(0.0, "fraction of blocks masked (0: off)", ge=0, le=1)
    atom_weight: float = key(1.0, "loss weight of atom-coordinate denoising", ge=0)
    tr_weight: float = key(1.0, "loss weight of translation denoising", ge=0)
    rot_weight: float = key(1.0, "loss weight of rotation denoising", ge=0)
    tor_weight: float = key(1.0, "loss weight of torsion denoising", ge=0)
    mask_weight: float = key(1.0, "loss weight of masked-block prediction", ge=0)

    # --- starting points -------------------------------------------------------------------------------------
    pretrain_config: str | None = key(None, "ATOMICA config.json to fine-tune from (with pretrain_weights)")
    pretrain_weights: str | None = key(None, "the weights (.pt state dict) of pretrain_config")
    partial_finetune: bool = key(False, "train the task head only")
    init_checkpoint: str | None = key(None, "start from another run's checkpoint dir (this config's hparams win)")

    # --- Ray -------------------------------------------------------------------------------------------------
    num_workers: int = key(1, "Ray Train workers (one per GPU); --num-workers MIN:MAX: elastic, sets max_workers",
                           ge=1)
    max_workers: int | None = key(None, "elastic: grow to this many workers when the cluster has room, shrink down "
                                        "to num_workers (null: a fixed size)", ge=1)
    resize_interval_s: float = key(60.0, "elastic: how often Ray looks for room to grow the worker group (s)", gt=0)
    use_gpu: bool = key(False, "one GPU per worker")
    cpus_per_worker: float = key(1.0, "CPUs each worker reserves", gt=0)
    max_failures: int = key(0, "worker-group restarts from the latest checkpoint (-1: unlimited)", ge=-1)
    max_preemptions: int = key(-1, "restarts after a node preemption, apart from max_failures (-1: no limit)",
                               ge=-1)
    preemption_check_steps: int = key(10, "ask Ray every N optimizer steps whether a node is being preempted",
                                      ge=1)

    # --- logging ---------------------------------------------------------------------------------------------
    use_wandb: bool = key(False, "log to Weights & Biases")
    wandb_mode: str | None = key(None, "online, offline or disabled (null: online iff WANDB_API_KEY is set)",
                                 choices=(None, "online", "offline", "disabled"))
    wandb_project: str = key("atomica-ray", "wandb project")
    experiment: str | None = key(None, "wandb group (null: the task name)")
    tensorboard: bool = key(True, "write TensorBoard scalars to <run dir>/tensorboard")
    progress_bar: bool = key(True, "show a progress bar per epoch")

    # --- testing hooks ---------------------------------------------------------------------------------------
    # Kill this worker process (SIGKILL, rank 0) right after optimizer step N of the first attempt; the marker
    # file records that the crash happened so the restarted group does not crash again. For fault-tolerance tests.
    crash_at_step: int | None = key(None, "test hook: SIGKILL rank 0 after this optimizer step, once", ge=0,
                                    hidden=True)
    crash_marker: str | None = key(None, "test hook: unused (kept for old configs)", hidden=True)
    # debug: make the loss of optimizer steps in this list non-finite (every rank), to exercise the skip logic
    nonfinite_steps: list[int] = key([], "test hook: optimizer steps whose loss is made non-finite", hidden=True)
    # Wait up to 10 minutes after optimizer step N (once per run; asking Ray about preemption every 0.5 s), so that a
    # test can remove, add or drain a node while the run is mid-epoch.
    hold_at_steps: list[int] = key([], "test hook: wait after these optimizer steps (nodes change meanwhile)",
                                   hidden=True)
    # a sweep's trial: the named actor through which the trial passes Tune's decisions to the workers
    trial_gate: str | None = key(None, "set by `atomica-ray tune`: the trial's gate actor", hidden=True)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def describe(cls) -> dict[str, dict]:
        """Every key's declaration: {name: {help, ge, gt, le, lt, choices, hidden, type, default, section}}."""
        types_, out, section = cls.field_types(), {}, ""
        defaults = cls()
        for f in dataclasses.fields(cls):
            section = SECTIONS.get(f.name, section)
            out[f.name] = {**f.metadata, "type": types_[f.name], "default": getattr(defaults, f.name),
                           "section": section}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
        types_ = cls.field_types()
        values = split_worker_range(values, source)
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; `atomica-ray train --help` lists the keys")
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
            key_, sep, value = text.partition("=")
            if not sep or not key_.strip():
                raise ValueError(f"{source}: expected key=value, got {text!r}")
            try:
                changes[key_.strip()] = yaml.load(value, Loader=ConfigLoader) if value.strip() else None
            except yaml.YAMLError as e:
                raise ValueError(f"{source}: {text!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source=source)

    def validate(self, source: str = "config") -> None:
        """Every key against its declared bounds and choices, then the rules that tie keys together."""
        def bad(key_: str, why: str) -> ValueError:
            return ValueError(f"{source}: key {key_!r} = {getattr(self, key_)!r}: {why}")

        for name, d in self.describe().items():
            value = getattr(self, name)
            why = check_value(value, d)
            if why:
                raise bad(name, why)
        if self.task in ("multiclass_classifier", "multilabel_classifier") and not self.num_classifier_classes:
            raise bad("num_classifier_classes", f"{self.task} needs the number of classes")
        self._validate_classifier_options(bad)
        if self.final_lr is not None and self.final_lr > self.lr:
            raise bad("final_lr", f"must not exceed lr ({self.lr:g}): the schedule decays from lr to final_lr")
        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise bad("max_workers", f"must be >= num_workers ({self.num_workers}); elastic: --num-workers MIN:MAX")
        if (self.pretrain_config is None) != (self.pretrain_weights is None):
            raise bad("pretrain_config", "pretrain_config and pretrain_weights go together")
        if self.atom_noise and self.torsion_noise:
            raise bad("atom_noise", "atom and torsion noise cannot be used together (as in ATOMICA)")
        for key_ in ("train_set", "valid_set", "pretrain_config", "pretrain_weights", "init_checkpoint"):
            if getattr(self, key_) == "":
                raise bad(key_, "an empty path; use null for none")

    def _validate_classifier_options(self, bad) -> None:
        """The options of issue 17 (ATOMICA's classifier flags), where ATOMICA allows them (their ranges are
        declared with the keys)."""
        from atomica_ray.tasks import get_task, selection

        per_class = ("multiclass_classifier", "multilabel_classifier")
        for key in ("use_focal_loss", "weighted_loss"):
            if getattr(self, key) and self.task not in per_class:
                raise bad(key, f"only for {' and '.join(per_class)} (as in ATOMICA), not {self.task}")
        if self.focal_alpha is not None and len(self.focal_alpha) not in (1, self.num_classifier_classes or 1):
            raise bad("focal_alpha", f"give one weight or one per class ({self.num_classifier_classes})")
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


def bounds_text(d: dict) -> str:
    """'> 0', 'in [0, 1)', 'one of adam, adamw', ... ('' when the key has no bounds)."""
    if d.get("choices"):
        return "one of " + ", ".join("null" if c is None else str(c) for c in d["choices"])
    low = (f"[{d['ge']:g}" if d.get("ge") is not None else f"({d['gt']:g}" if d.get("gt") is not None else None)
    high = (f"{d['le']:g}]" if d.get("le") is not None else f"{d['lt']:g})" if d.get("lt") is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return ""


def check_value(value: Any, d: dict) -> str | None:
    """Why `value` breaks the declaration `d`, or None."""
    if value is None:
        return None  # the type check (coerce) already refused null for keys that cannot be null
    if d.get("choices") and value not in d["choices"]:
        return "must be " + bounds_text(d)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    ok = ((d.get("ge") is None or value >= d["ge"]) and (d.get("gt") is None or value > d["gt"])
          and (d.get("le") is None or value <= d["le"]) and (d.get("lt") is None or value < d["lt"]))
    if ok:
        return None
    optional = type(None) in typing.get_args(d.get("type"))
    return f"must be {bounds_text(d)}" + (" (or null)" if optional else "")


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


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
    try:
        with open(path) as f:
            values = yaml.load(f, Loader=ConfigLoader) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
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
            try:
                value = yaml.safe_load(value) if value.strip() else []
            except yaml.YAMLError:
                raise ValueError(f"{where}: expected a list, got {value!r}") from None
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
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: expected {type_.__name__}, got {value!r}") from None
    return value
