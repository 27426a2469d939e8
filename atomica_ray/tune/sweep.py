"""The Tune sweep around the engine: one function trainable per trial runs the engine's TorchTrainer.

Train V2 inside Tune (docs: ray-notes "Train inside Tune"):
- each trial is a function trainable that builds `TorchTrainer` with `build_trainer` and calls `fit()`; its Train
  run is named after the trial id (no timestamp, so a restarted trial resumes its own run from its latest
  checkpoint) and lives under one shared storage path, `<storage>/<sweep>/trials/`;
- `TuneReportCallback` forwards rank 0's per-epoch metrics and the Train `checkpoint_path` to Tune, so one Tune
  iteration is one epoch and ASHA's `max_t` / `grace_period` count epochs;
- concurrency is the cluster's resources divided by one trial's (workers x (CPU per worker [+ 1 GPU]) + a tenth
  of a CPU for the trial driver, which only waits), so no trial driver waits for workers that cannot be placed;
  a local Ray started for a sweep adds the drivers' fractions to the machine's CPUs, so 2 cores run 2 one-worker
  trials at once;
- the trial's gate (`tune.gate`) carries each epoch's report to Tune and Tune's decision back to the workers, who
  wait for it: a trial the scheduler stops trains no further epoch;
- `reuse_actors=False` (GPU memory of stopped trials was not freed with reuse, ray#32725).

PBT: trials report no Tune checkpoint of their own (the Train checkpoint is already in storage), so the scheduler
takes a donor's latest forwarded `checkpoint_path` as the checkpoint to clone. The exploited trial restarts with
the donor's config, mutated; its trial function sees the donor checkpoint in `tune.get_checkpoint()` and starts a
new Train run with `init_checkpoint` = that path, which loads the donor's weights, optimizer and counters and
re-applies this trial's hyperparameters (ray#36660).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atomica_ray.tune.space import SearchSpace, SpaceError, parse_space

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # the settings of a sweep, read back by --resume and `atomica-ray report`
TRAIN_RUNS_DIR = "trials"  # <storage>/<sweep>/trials/<trial id>: the Train runs
SCHEDULERS = ("asha", "pbt", "fifo")
TRIAL_DRIVER_CPU = 0.1  # the trial function starts the Train run and waits on it


@dataclass
class SweepSettings:
    """Everything that defines a sweep; stored as sweep.json so that a restore rebuilds the same Tuner."""

    name: str
    storage_path: str  # absolute local path or URI; the experiment is <storage_path>/<name>
    base_config: dict  # TrainConfig keys shared by every trial (the space's params override them)
    space: dict  # the search-space document (kept whole: a restore must not depend on the file still existing)
    space_path: str
    num_samples: int
    scheduler: str = "asha"
    search: str = "optuna"
    gpus_per_trial: float = 0
    workers_per_trial: int = 1
    max_concurrent: int | None = None  # None: derived from the cluster's resources
    metric: str = ""
    mode: str = "min"
    seed: int = 0
    asha: dict = field(default_factory=dict)  # resolved ASHA settings (max_t, grace_period, reduction_factor)

    @property
    def experiment_dir(self) -> str:
        return join(self.storage_path, self.name)

    @property
    def train_storage(self) -> str:
        return join(self.experiment_dir, TRAIN_RUNS_DIR)

    def search_space(self) -> SearchSpace:
        return parse_space(self.space, self.space_path)

    def save(self) -> None:
        write_text(join(self.experiment_dir, SWEEP_FILE), json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, experiment_dir: str) -> "SweepSettings":
        path = join(experiment_dir, SWEEP_FILE)
        try:
            values = json.loads(read_text(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist: {experiment_dir} is not an atomica-ray sweep") from None
        return cls(**values)


# ---- paths on local disk or a pyarrow filesystem -----------------------------------------------------------------
def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else str(Path(base, *parts))


def read_text(path: str) -> str:
    if "://" in path:
        import pyarrow.fs

        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(p) as f:
            return f.read().decode()
    return Path(path).read_text()


def write_text(path: str, text: str) -> None:
    if "://" in path:
        import pyarrow.fs

        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- resources and concurrency -----------------------------------------------------------------------------------
def trial_resources(workers_per_trial: int, gpus_per_trial: float, cpus_per_worker: float = 1.0) -> dict:
    """What one trial holds: its Train workers plus a fraction of a CPU for the trial driver."""
    need = {"CPU": workers_per_trial * cpus_per_worker + TRIAL_DRIVER_CPU}
    if gpus_per_trial:
        need["GPU"] = float(gpus_per_trial)
    return need


def derive_concurrency(cluster: dict, per_trial: dict) -> int:
    """How many trials fit in the cluster at once; raises if not even one does."""
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items() if v > 0]
    n = min(fits) if fits else 1
    if n < 1:
        have = {k: cluster.get(k, 0.0) for k in per_trial}
        raise ValueError(f"one trial needs {per_trial} (its workers + {TRIAL_DRIVER_CPU} CPU for its driver) but "
                         f"the cluster has {have}")
    return n


def local_cpus(settings: "SweepSettings", cpus: int | None) -> int:
    """Logical CPUs of a local Ray for a sweep: the machine's (or --num-cpus) for the workers, plus the trial
    drivers' fractions for as many trials as those CPUs hold."""
    cpus = cpus or os.cpu_count() or 1
    per_trial = settings.workers_per_trial * settings.base_config.get("cpus_per_worker", 1.0)
    trials = max(1, math.floor(cpus / per_trial + 1e-9))
    return cpus + math.ceil(trials * TRIAL_DRIVER_CPU - 1e-9)


def check_workers(workers_per_trial: int, gpus_per_trial: float) -> None:
    if workers_per_trial < 1:
        raise ValueError(f"--workers-per-trial must be >= 1, got {workers_per_trial}")
    if gpus_per_trial and gpus_per_trial != workers_per_trial:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g} with --workers-per-trial {workers_per_trial}: the "
                         "engine runs one Train worker per GPU, so give as many workers as GPUs per trial")


# ---- the trial ---------------------------------------------------------------------------------------------------
def trial_config(base: dict, params: dict, source: str):
    """The TrainConfig of one trial: the shared config with the sampled params on top."""
    from atomica_ray.train.config import TrainConfig

    return TrainConfig.from_dict({**base, **params}, source=source)


def make_trainable(base_config: dict, train_storage: str):
    """The function trainable of every trial of a sweep (see `tune.gate` for how reports and decisions travel)."""

    def atomica_trial(params: dict) -> None:
        import ray
        from ray import tune

        from atomica_ray.train.console import emit
        from atomica_ray.train.launch import build_trainer, fit
        from atomica_ray.tune.gate import NAMESPACE, GateCallback, TrialGate

        trial_id = tune.get_context().get_trial_id()
        cfg = trial_config(base_config, params, source=f"trial {trial_id}")
        run_name = trial_id
        donor = tune.get_checkpoint()  # set only when PBT made this trial exploit another one
        if donor is not None:
            cfg = cfg.replace(init_checkpoint=donor.path)
            # a new Train run per donor: reusing this trial's run name would resume its own checkpoint instead
            run_name = f"{trial_id}-from-{hashlib.sha1(donor.path.encode()).hexdigest()[:8]}"
        gate_name = f"gate-{trial_id}-{uuid.uuid4().hex[:8]}"
        gate = TrialGate.options(name=gate_name, namespace=NAMESPACE).remote()
        trainer = build_trainer(cfg.replace(trial_gate=gate_name), run_name=run_name, storage_path=train_storage,
                                callbacks=[GateCallback(gate)])
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = fit(trainer)
            except BaseException as error:  # noqa: BLE001 - raised in the trial's thread below
                outcome["error"] = error
            finally:
                gate.put.remote(None)

        emit("trial", run=run_name, status="started", params=params)
        thread = threading.Thread(target=run, name="atomica-ray-train-run", daemon=True)
        thread.start()
        last = None
        try:
            while (report := ray.get(gate.next.remote())) is not None:
                last = report
                tune.report(report)  # returns when Tune wants more; a stopped trial exits here (SystemExit)
                gate.decide.remote(report["epoch"], True)
        except SystemExit:
            emit("trial", run=run_name, status="stopped", epoch=last and last.get("epoch"))
            raise
        finally:
            gate.stop.remote()  # the workers end the run cleanly instead of starting another epoch
            thread.join()
        if "error" in outcome:
            from atomica_ray.train.errors import cause_of

            emit("trial", run=run_name, status="failed", cause=cause_of(outcome["error"]))
            raise outcome["error"]
        emit("trial", run=run_name, status="finished", epoch=last and last.get("epoch"))

    return atomica_trial


def make_pbt(settings: SweepSettings, space: SearchSpace):
    """PopulationBasedTraining whose clone source is a donor's latest Train checkpoint (see the module doc)."""
    from ray.train import Checkpoint
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class TrainCheckpointPBT(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            # The whole population runs at once (checked at start), so nothing waits for a slot: never pause a
            # trial (a pause would ask the function trainable for a Tune checkpoint it does not have).
            return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision

        def _save_trial_state(self, state, time, result, trial):
            score = super()._save_trial_state(state, time, result, trial)
            # the Train checkpoint of this very result: already in storage, nothing to save
            path = result.get("checkpoint_path")
            state.last_checkpoint = Checkpoint(path) if path else None
            return score

        def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
            if trial not in lower_quantile:
                return
            donor = random.choice(upper_quantile)
            if self._trial_state[donor].last_checkpoint is None:
                log.info("PBT: donor %s has no checkpoint yet; %s is not exploited", donor.trial_id, trial.trial_id)
                return
            self._exploit(tune_controller, trial, donor)
            self._trial_state[trial].last_checkpoint = None  # the run it abandoned is no donor

    pbt = dict(space.pbt)
    return TrainCheckpointPBT(
        time_attr="training_iteration",
        perturbation_interval=pbt.get("perturbation_interval", 1),
        burn_in_period=pbt.get("burn_in_period", 0),
        quantile_fraction=pbt.get("quantile_fraction", 0.25),
        resample_probability=pbt.get("resample_probability", 0.25),
        hyperparam_mutations=space.pbt_mutations(),
    )


def make_scheduler(settings: SweepSettings, space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "asha":
        a = settings.asha
        return ASHAScheduler(time_attr="training_iteration", max_t=a["max_t"], grace_period=a["grace_period"],
                             reduction_factor=a["reduction_factor"], brackets=a.get("brackets", 1))
    if settings.scheduler == "pbt":
        return make_pbt(settings, space)
    return FIFOScheduler()


def make_searcher(settings: SweepSettings, concurrency: int):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        import optuna

        # TPE starts from random points (10 by default, i.e. all of a small sweep): use half the budget, at least 2
        startup = max(2, min(10, settings.num_samples // 2))
        sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=settings.seed)
        # TPE learns from finished points; with many trials in flight it degrades to random search
        return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=concurrency)
    # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator passed in: limit it here
    return BasicVariantGenerator(random_state=settings.seed, max_concurrent=concurrency)


def trainable_for(settings: SweepSettings):
    from ray import tune

    return tune.with_resources(make_trainable(settings.base_config, settings.train_storage),
                               {"CPU": TRIAL_DRIVER_CPU})


def keep_credentials_out_of_trial_env() -> None:
    """Ray Tune copies the driver's AWS_* credentials into every trial actor's runtime env, and Ray's runtime-env
    agent writes that env to its log (session logs, runtime_env_agent.log): drop them. A trial, like a Train
    worker, reads credentials from its node (the environment it inherits, an instance role, ~/.aws)."""
    from ray.tune.execution import class_cache

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        class_cache.ENV_VARS_TO_PROPAGATE.discard(name)


def build_tuner(settings: SweepSettings, concurrency: int):
    from ray import tune

    keep_credentials_out_of_trial_env()
    space = settings.search_space()
    tune_config = tune.TuneConfig(
        metric=settings.metric, mode=settings.mode, num_samples=settings.num_samples,
        scheduler=make_scheduler(settings, space), search_alg=make_searcher(settings, concurrency),
        max_concurrent_trials=concurrency, reuse_actors=False,
    )
    # verbose=0: the console shows our lines (train.console); Tune's own tables would only repeat them
    run_config = tune.RunConfig(name=settings.name, storage_path=settings.storage_path, verbose=0)
    return tune.Tuner(trainable_for(settings), param_space=space.tune_config(settings.search),
                      tune_config=tune_config, run_config=run_config)


# ---- settings from the command line ------------------------------------------------------------------------------
def resolve_settings(base_config: dict, space: SearchSpace, *, name: str, storage_path: str, num_samples: int | None,
                     scheduler: str, search: str, gpus_per_trial: float, workers_per_trial: int,
                     max_concurrent: int | None, seed: int) -> SweepSettings:
    """Validate everything that can be checked before Ray starts; returns the settings of a new sweep."""
    from atomica_ray.tasks import task_for
    from atomica_ray.train.config import TrainConfig
    from atomica_ray.train.launch import absolute_paths
    from atomica_ray.train.preflight import check_inputs

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r} (choose from {', '.join(SCHEDULERS)})")
    space.validate_keys(TrainConfig.field_types())
    check_workers(workers_per_trial, gpus_per_trial)
    cfg = TrainConfig.from_dict(base_config, source="run config")
    # one report per epoch: the schedulers count epochs in training iterations; a trial holds a fixed worker group
    # (max_workers None): concurrency is derived from its size
    cfg = cfg.replace(num_workers=workers_per_trial, max_workers=None, use_gpu=bool(gpus_per_trial),
                      report_every_steps=0, progress_bar=False)
    if scheduler == "pbt":
        cfg = cfg.replace(save_topk=-1)  # a donor's checkpoint must outlive later, better ones
    check_inputs(cfg)
    cfg = absolute_paths(cfg)  # trial drivers run in their own directories
    task = task_for(cfg)
    if space.tasks and cfg.task not in space.tasks:
        raise SpaceError(f"{space.path}: task: the space is for {', '.join(space.tasks)}, the run config trains "
                         f"{cfg.task}")
    if not cfg.valid_set and not space.metric:
        raise ValueError("config: key 'valid_set' is required for a sweep: trials are ranked by a validation metric")
    # every trial's config must be valid: try each param's extreme values now rather than in a trial
    for key, p in space.params.items():
        probe = list(p.args[:2]) if not p.enumerable else list(p.args)
        for value in probe:
            value = int(value) if p.kind in ("randint",) else value
            try:
                trial_config(cfg.to_dict(), {key: value}, source=f"{space.path}: params.{key}")
            except ValueError as e:
                raise SpaceError(str(e)) from None
    if search == "grid":
        space.tune_config("grid")  # raises on a non-enumerable param
        num_samples = num_samples or 1
    elif not num_samples:
        raise ValueError(f"--num-samples is required with --search {search}")
    asha = {}
    if scheduler == "asha":
        asha = {"max_t": space.asha.get("max_t", cfg.max_epoch), "grace_period": space.asha.get("grace_period", 1),
                "reduction_factor": space.asha.get("reduction_factor", 2), "brackets": space.asha.get("brackets", 1)}
        if asha["grace_period"] > asha["max_t"]:
            raise SpaceError(f"{space.path}: asha.grace_period: {asha['grace_period']} exceeds max_t {asha['max_t']}")
    if scheduler == "pbt":
        space.pbt_mutations()  # raises without pbt.mutate
    return SweepSettings(
        name=name, storage_path=storage_path, base_config=cfg.to_dict(), space=space_document(space),
        space_path=space.path, num_samples=num_samples, scheduler=scheduler, search=search,
        gpus_per_trial=gpus_per_trial, workers_per_trial=workers_per_trial, max_concurrent=max_concurrent,
        metric=space.metric or task.selection_metric, mode=space.mode or task.mode, seed=seed, asha=asha,
    )


def space_document(space: SearchSpace) -> dict:
    """The space back as a YAML-shaped document (stored in sweep.json)."""
    doc: dict[str, Any] = {"params": {k: {p.kind: list(p.args)} for k, p in space.params.items()}}
    if space.tasks:
        doc["task"] = list(space.tasks)
    for key in ("metric", "mode"):
        if getattr(space, key) is not None:
            doc[key] = getattr(space, key)
    if space.asha:
        doc["asha"] = dict(space.asha)
    if space.pbt:
        doc["pbt"] = dict(space.pbt)
    return doc


def expected_trials(settings: SweepSettings) -> int:
    population = settings.num_samples
    if settings.search == "grid":
        population *= settings.search_space().grid_size()
    return population


def concurrency_for(settings: SweepSettings) -> int:
    import ray

    cpus = settings.base_config.get("cpus_per_worker", 1.0)
    per_trial = trial_resources(settings.workers_per_trial, settings.gpus_per_trial, cpus)
    fits = derive_concurrency(ray.cluster_resources(), per_trial)
    n = settings.max_concurrent or fits
    if n > fits:
        log.warning("--max-concurrent %d exceeds the %d trials the cluster holds now (each needs %s); trials beyond "
                    "that wait for the autoscaler", n, fits, per_trial)
    population = expected_trials(settings)
    if settings.scheduler == "pbt" and population > n:
        raise ValueError(f"PBT needs its whole population running at once: {population} trials > {n} concurrent "
                         "trials; lower --num-samples or add resources")
    return n


def run_sweep(settings: SweepSettings, concurrency: int | None = None):
    """Start a new sweep; returns Tune's ResultGrid."""
    from ray import tune

    if tune.Tuner.can_restore(settings.experiment_dir):
        raise FileExistsError(f"{settings.experiment_dir} already holds a sweep: resume it with --resume "
                              f"{settings.name}, or choose another --name")
    concurrency = concurrency or concurrency_for(settings)
    settings.save()
    log.info("sweep %s: %d trials, %d at a time", settings.name, expected_trials(settings), concurrency)
    return build_tuner(settings, concurrency).fit()


def resume_sweep(experiment_dir: str):
    """Continue an interrupted sweep (`Tuner.restore`): finished trials are kept, unfinished ones resume from
    their latest Train checkpoint, errored ones are retried. The searcher's state is restored; the scheduler's is
    not (Tune does not checkpoint it: ASHA's rungs start empty), and a resumed trial counts Tune iterations from 1
    again while its epochs go on (its Train checkpoint is not a Tune checkpoint)."""
    from ray import tune

    settings = SweepSettings.load(experiment_dir)
    if not tune.Tuner.can_restore(experiment_dir):
        raise FileNotFoundError(f"{experiment_dir}: no Tune experiment state to resume from")
    concurrency_for(settings)  # the cluster must still hold one trial
    keep_credentials_out_of_trial_env()
    tuner = tune.Tuner.restore(experiment_dir, trainable=trainable_for(settings), resume_unfinished=True,
                               resume_errored=True)
    return settings, tuner.fit()
