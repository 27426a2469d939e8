"""Search spaces: the `tune_spaces/*.yaml` format, its validation, and its Ray Tune form.

A space file names config keys (the flat `TrainConfig` keys: lr, final_lr, grad_clip, dropout, k_neighbors, ...)
and one distribution for each:

    task: [PDBBind, regression]   # optional: the task(s) this space was written for (checked against the run config)
    metric: val_rmse              # optional: defaults to the task's selection metric
    mode: min                     # optional: min | max (needed when metric is given)
    params:
      lr:               {loguniform: [1.0e-5, 1.0e-2]}   # log-uniform in [low, high]
      dropout:          {uniform: [0.0, 0.3]}            # uniform in [low, high]
      atom_hidden_size: {quniform: [16, 64, 16]}         # multiples of q in [low, high]; all-int arguments give ints
      k_neighbors:      {randint: [6, 12]}               # integer in [low, high], both ends included
      grad_clip:        {choice: [0.5, 1.0, 5.0]}        # one of the values (always sampled)
      final_lr:         {grid: [1.0e-6, 1.0e-5]}         # every value under --search grid, else sampled as a choice
    asha: {grace_period: 1, reduction_factor: 2}         # optional ASHA defaults (max_t defaults to max_epoch)
    pbt: {perturbation_interval: 1, mutate: [lr, grad_clip]}   # params PBT may change mid-run

`--search grid` enumerates `grid` and `choice` params (the full factorial grid); continuous distributions cannot be
enumerated and are refused. `--search optuna` and `--search random` sample every param, `grid` as a choice, so the
grid and the sampled sweeps search the same set of points.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

DISTRIBUTIONS = {  # name -> number of arguments (None: a non-empty list of values)
    "loguniform": 2,
    "uniform": 2,
    "quniform": 3,
    "randint": 2,
    "choice": None,
    "grid": None,
}
TOP_LEVEL_KEYS = {"task", "metric", "mode", "params", "asha", "pbt", "description"}
ASHA_KEYS = {"grace_period", "reduction_factor", "max_t", "brackets"}
PBT_KEYS = {"perturbation_interval", "mutate", "quantile_fraction", "resample_probability", "burn_in_period"}
SEARCH_ALGS = ("optuna", "random", "grid")


class SpaceError(ValueError):
    """A malformed search space; the message names the file and the offending key."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # one of DISTRIBUTIONS
    args: tuple

    @property
    def enumerable(self) -> bool:
        return self.kind in ("grid", "choice")

    def values(self) -> list:
        """The values a grid search walks through."""
        if not self.enumerable:
            raise ValueError(f"{self.key}: a {self.kind} distribution has no finite list of values")
        return list(self.args)

    def domain(self, search: str):
        """This param as a Ray Tune domain (or grid_search dict) for the given search algorithm."""
        from ray import tune

        a = self.args
        if self.kind == "loguniform":
            return tune.loguniform(a[0], a[1])
        if self.kind == "uniform":
            return tune.uniform(a[0], a[1])
        if self.kind == "quniform":
            if all(isinstance(x, int) for x in a):
                return tune.qrandint(a[0], a[1], a[2])  # inclusive upper bound, ints (hidden sizes, k)
            return tune.quniform(a[0], a[1], a[2])
        if self.kind == "randint":
            return tune.randint(a[0], a[1] + 1)  # Tune's upper bound is exclusive; ours is inclusive
        if search == "grid":
            return tune.grid_search(list(a))
        return tune.choice(list(a))


@dataclass
class SearchSpace:
    path: str
    params: dict[str, Param]
    tasks: tuple[str, ...] = ()  # empty: any task
    metric: str | None = None
    mode: str | None = None
    asha: dict = field(default_factory=dict)
    pbt: dict = field(default_factory=dict)

    # ---- derived forms -------------------------------------------------------------------------------------
    def tune_config(self, search: str) -> dict[str, Any]:
        """`param_space` for the Tuner: key -> Tune domain."""
        if search not in SEARCH_ALGS:
            raise SpaceError(f"{self.path}: unknown search algorithm {search!r} (choose from {', '.join(SEARCH_ALGS)})")
        if search == "grid":
            for p in self.params.values():
                if not p.enumerable:
                    raise SpaceError(
                        f"{self.path}: params.{p.key}: a {p.kind} distribution cannot be enumerated by --search grid; "
                        f"give its values as grid: [...]"
                    )
        return {k: p.domain(search) for k, p in self.params.items()}

    def grid_size(self) -> int:
        """Number of points of the full grid (every param must be enumerable)."""
        return math.prod(len(p.values()) for p in self.params.values())

    def pbt_mutations(self) -> dict[str, Any]:
        """`hyperparam_mutations` for PopulationBasedTraining: the params listed in pbt.mutate."""
        keys = self.pbt.get("mutate")
        if not keys:
            raise SpaceError(f"{self.path}: pbt.mutate: PBT needs the list of params it may change mid-run")
        out = {}
        for k in keys:
            p = self.params[k]
            if p.kind == "randint" or p.kind == "quniform" and all(isinstance(x, int) for x in p.args):
                # PBT perturbs numbers by x0.8 / x1.2: an integer key would get a fraction
                raise SpaceError(f"{self.path}: pbt.mutate: {k}: PBT cannot perturb an integer {p.kind}; give its "
                                 "values as choice: [...] (PBT then steps to a neighbouring value)")
            out[k] = list(p.args) if p.enumerable else p.domain("random")
        return out

    def validate_keys(self, known: Iterable[str]) -> None:
        """Every param must be a config key; `known` is the set of TrainConfig field names."""
        known = set(known)
        for k in self.params:
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise SpaceError(f"{self.path}: params.{k}: not a training config key{hint}")


# ---- parsing ------------------------------------------------------------------------------------------------
def _number(path: str, where: str, x: Any) -> float | int:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SpaceError(f"{path}: {where}: expected a finite number, got {x!r}")
    return x


def _parse_param(path: str, key: str, spec: Any) -> Param:
    where = f"params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(
            f"{path}: {where}: expected one distribution such as {{loguniform: [1.0e-5, 1.0e-2]}}, got {spec!r}"
        )
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{path}: {where}: unknown distribution {kind!r} (choose from {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list):
        raise SpaceError(f"{path}: {where}.{kind}: expected a list, got {args!r}")
    n = DISTRIBUTIONS[kind]
    if n is None:  # choice / grid: any values, at least one, no duplicates
        if not args:
            raise SpaceError(f"{path}: {where}.{kind}: needs at least one value")
        if len({repr(v) for v in args}) != len(args):
            raise SpaceError(f"{path}: {where}.{kind}: repeated values in {args!r}")
        return Param(key, kind, tuple(args))
    if len(args) != n:
        form = "[low, high, q]" if n == 3 else "[low, high]"
        raise SpaceError(f"{path}: {where}.{kind}: expected {form}, got {args!r}")
    args = tuple(_number(path, f"{where}.{kind}", x) for x in args)
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(f"{path}: {where}.{kind}: low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{path}: {where}.loguniform: low ({low}) must be positive")
    if kind == "randint" and not all(isinstance(x, int) for x in args):
        raise SpaceError(f"{path}: {where}.randint: bounds must be integers, got {list(args)!r}")
    if kind == "quniform" and args[2] <= 0:
        raise SpaceError(f"{path}: {where}.quniform: q ({args[2]}) must be positive")
    return Param(key, kind, args)


def _check_section(path: str, name: str, section: Any, allowed: set[str]) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise SpaceError(f"{path}: {name}: expected a mapping, got {section!r}")
    for k in section:
        if k not in allowed:
            raise SpaceError(f"{path}: {name}.{k}: unknown setting (allowed: {', '.join(sorted(allowed))})")
    return dict(section)


def parse_space(doc: Any, path: str = "<space>") -> SearchSpace:
    """Build a SearchSpace from a parsed YAML document; raises SpaceError naming the bad key."""
    if not isinstance(doc, dict):
        raise SpaceError(f"{path}: expected a mapping with a 'params' section, got {type(doc).__name__}")
    for k in doc:
        if k not in TOP_LEVEL_KEYS:
            raise SpaceError(f"{path}: {k}: unknown top-level key (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{path}: params: expected a non-empty mapping of config key -> distribution")
    parsed = {}
    for key, spec in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SpaceError(f"{path}: params.{key}: not a valid config key name")
        parsed[key] = _parse_param(path, key, spec)

    mode = doc.get("mode")
    if mode is not None and mode not in ("min", "max"):
        raise SpaceError(f"{path}: mode: expected min or max, got {mode!r}")
    metric = doc.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise SpaceError(f"{path}: metric: expected a metric name, got {metric!r}")
    if (metric is None) != (mode is None):
        raise SpaceError(f"{path}: {'mode' if mode is None else 'metric'}: metric and mode go together")

    asha = _check_section(path, "asha", doc.get("asha"), ASHA_KEYS)
    for k, v in asha.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpaceError(f"{path}: asha.{k}: expected a positive integer, got {v!r}")
    pbt = _check_section(path, "pbt", doc.get("pbt"), PBT_KEYS)
    mutate = pbt.get("mutate", [])
    if not isinstance(mutate, list) or not all(isinstance(k, str) for k in mutate):
        raise SpaceError(f"{path}: pbt.mutate: expected a list of param names, got {mutate!r}")
    for k in mutate:
        if k not in parsed:
            raise SpaceError(f"{path}: pbt.mutate: {k}: not one of this space's params")
    task = doc.get("task")
    tasks = [task] if isinstance(task, str) else task if task is not None else []
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise SpaceError(f"{path}: task: expected a task name or a list of them, got {task!r}")
    return SearchSpace(path=path, params=parsed, tasks=tuple(tasks), metric=metric, mode=mode, asha=asha, pbt=pbt)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate one tune_spaces/*.yaml file."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read the space file: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML: {e}") from None
    return parse_space(doc, path)
