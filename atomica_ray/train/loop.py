"""The one training loop: `train_loop_per_worker(config)`, run by every Ray Train worker for every task.

Per epoch: train on this rank's share of each optimizer step's batches (autocast, one all-reduce per optimizer step
that also agrees on skipped steps), validate on the whole validation set (records gathered from all ranks, so every
rank computes the same metrics and takes the same early-stopping decision), then every rank calls
`ray.train.report` with the metrics and rank 0's checkpoint. With `report_every_steps`, reports (and
checkpoints, with the batch position) also happen inside an epoch.

Resuming: `ray.train.get_checkpoint()` (a worker-group restart under FailureConfig, or a relaunch with the same
storage path and name) restores everything, so the run continues at the next batch as if nothing happened. The
checkpoint is verified against its manifest first; a damaged one gives way to the newest intact one, and the
console says so. `init_checkpoint` starts a new run from another run's checkpoint, with this config's
hyperparameters.

Rank 0 writes each checkpoint under a temporary name and renames it when complete (`_checkpoint`); people see the
run through events sent to the driver's console (`console.emit`), not through prints. In a sweep, workers wait
after each epoch for Tune's decision (`_tune_decision`), so a trial the scheduler stops trains no further epoch.

Elastic runs and preemption: an optimizer step is always `micro_batches_per_step` consecutive batches of the
epoch's one batch sequence (data/batching.py), dealt to however many workers there are now; each worker scales its
losses by 1/(batches in the step) and the all-reduce sums, so the step's gradient is the mean over the same
batches whatever the world size (fewer workers accumulate more). The position saved in a checkpoint is a batch
index of that sequence, so a group restarted smaller or larger goes on with the next unseen batch. When Ray reports
that a node of the run is being drained (spot reclaim; `get_preemption_info`), the workers write a just-in-time
checkpoint at once and train on until the node goes; Ray restarts the group from it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from atomica_ray.data.collate import to_device
from atomica_ray.models.kernels.cuda_graphs import capture_stats, enable_cuda_graphs
from atomica_ray.tasks import task_for
from atomica_ray.tasks.spec import Task, encoder_kwargs
from atomica_ray.train import dist
from atomica_ray.train.checkpoint import (
    HISTORY_FILE, TMP_PREFIX, TrainState, model_files, newest_intact, publish_checkpoint, read_history,
    read_train_state, rng_state, set_rng_state, verify_checkpoint, write_checkpoint, write_manifest,
)
from atomica_ray.train.config import ATOMICA_SEED, TrainConfig
from atomica_ray.train.console import Progress, emit
from atomica_ray.train.ema import EMA
from atomica_ray.train.logging import RunLogger
from atomica_ray.train.schedule import apply_hparams, build_optimizer, lr_at, stretch
from atomica_ray.train.storage import RunStorage

PRETRAIN_TASKS = ("pretrain_torsion", "pretrain_gaussian", "pretrain_torsion_masking", "masking")


# --- building blocks ---------------------------------------------------------------------------------------------

def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, task: Task) -> torch.nn.Module:
    """A fresh model, or ATOMICA pretrained weights moved into the task's model class (fine-tuning)."""
    from atomica_ray.models import ATOMICA_BEHAVIOUR, create_model, load_atomica

    numerics = ATOMICA_BEHAVIOUR if cfg.atomica_numerics else {}
    if cfg.pretrain_config:
        return load_atomica(cfg.pretrain_config, cfg.pretrain_weights, model_type=task.model_class,
                            partial_finetune=cfg.partial_finetune, **finetune_overrides(cfg, task), **numerics)
    return create_model(task.name, **encoder_kwargs(cfg), **task.model_kwargs(cfg), **numerics)


def finetune_overrides(cfg: TrainConfig, task: Task) -> dict:
    """What ATOMICA's create_model passes on top of a pretrained config: the head, and the graph settings the
    fine-tuning run may change (k_neighbors, dropout, global message passing)."""
    return dict(
        k_neighbors=cfg.k_neighbors, dropout=cfg.dropout,
        bottom_global_message_passing=cfg.bottom_global_message_passing,
        global_message_passing=cfg.global_message_passing,
        **task.model_kwargs(cfg),
    )


def data_spec(cfg: TrainConfig, task: Task, path: str, train: bool):
    from atomica_ray.data import DataSpec

    budget = cfg.max_n_vertex_per_gpu if train else (cfg.valid_max_n_vertex_per_gpu or cfg.max_n_vertex_per_gpu)
    balance = None
    if train and cfg.balanced_sampler:
        balance = "modality" if task.name in PRETRAIN_TASKS else "label"
    return DataSpec(
        path=path, kind=task.data_kind(cfg), max_n_vertex_per_gpu=budget,
        max_n_vertex_per_item=cfg.max_n_vertex_per_item, balance=balance,
        fragmentation_method=cfg.fragmentation_method, allow_pickle=cfg.allow_pickle,
        atom_noise=cfg.atom_noise or None, translation_noise=cfg.translation_noise or None,
        rotation_noise=cfg.rotation_noise or None, max_rotation=cfg.max_rotation,
        torsion_noise=cfg.torsion_noise or None, mask_proportion=cfg.mask_proportion or None,
        num_classes=cfg.num_classifier_classes, random_block_sampling=train and cfg.random_block_sampling,
        block_sampling_p_keep=cfg.block_sampling_p_keep, block_sampling_p_none=cfg.block_sampling_p_none,
    )


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if cfg.precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def storage_is_local() -> bool:
    import pyarrow.fs
    import ray.train

    return isinstance(ray.train.get_context().get_storage().storage_filesystem, pyarrow.fs.LocalFileSystem)


def local_run_dir(name: str) -> Path:
    """Where rank 0 writes the metrics history and logs: the Ray run directory when storage is local, else
    ~/atomica-ray-runs/<name> on rank 0's node."""
    import ray.train

    if storage_is_local():
        return Path(ray.train.get_context().get_storage().experiment_fs_path)
    return Path.home() / "atomica-ray-runs" / name


class BadStepsError(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):
    pass


def remove_stale_copies() -> None:
    """Local copies of checkpoints bound for object storage whose worker was killed mid-upload (named after the
    worker's pid: atomica-ckpt-<pid>-*): removed by the next worker on the node."""
    for path in Path(tempfile.gettempdir()).glob("atomica-ckpt-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def write_failure(error: Exception, where: Path) -> str:
    """Why a write failed, in words: torch's zip writer reports a full disk as "unexpected pos ..."."""
    free = None
    for path in (where, *where.parents):
        try:
            free = shutil.disk_usage(path).free
            break
        except OSError:
            continue
    if getattr(error, "errno", None) == 28 or (free is not None and free < 1 << 20):
        return f"no space left on device ({free} bytes free)" if free is not None else "no space left on device"
    return f"{type(error).__name__}: {error.strerror if isinstance(error, OSError) and error.strerror else error}"


# --- the run of one worker ------------------------------------------------------------------------------------

class WorkerRun:
    """Model, optimizer, data and counters of one worker; `fit()` runs the epochs."""

    def __init__(self, cfg: TrainConfig):
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.name = ctx.get_experiment_name()
        self.device = ray.train.torch.get_device()
        self.task = task_for(cfg)  # with the selection metric this config asks for
        self.run_dir = local_run_dir(self.name)
        self.storage = RunStorage()

        resume = ray.train.get_checkpoint()
        donor = None if resume is not None else cfg.init_checkpoint

        seed_all(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg, self.task).to(self.device)
        if cfg.cuda_graphs and self.device.type == "cuda":
            enable_cuda_graphs(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg, self.task.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16" and
                                           self.device.type == "cuda")
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.state = TrainState(patience_left=cfg.patience_epochs)
        self.pending = None  # the last optimizer step's device flags and log values, settled one step later
        self.preemption_saved = False  # a just-in-time checkpoint was written by this worker group
        self.window, self.last_loss = [0.0, 0.0], float("nan")
        history: list[dict] = []

        self.resumed_from = None
        if resume is not None:
            with resume.as_directory() as path:
                path = self._intact(Path(path))
                self.resumed_from = path.name
                history = self._restore(path, same_run=True)
        elif donor:
            self._restore(Path(donor), same_run=False)
            seed_all(cfg.seed + 1000 * self.rank)
        else:
            seed_all(cfg.seed + 1000 * self.rank)  # each rank its own dropout stream
        dist.broadcast_state(self.model)
        if self.ema is not None and resume is None and donor is None:
            self.ema = EMA(self.model, cfg.ema_decay)

        self.train_spec = data_spec(cfg, self.task, cfg.train_set, train=True)
        self.valid_spec = data_spec(cfg, self.task, cfg.valid_set, train=False) if cfg.valid_set else None
        from atomica_ray.data.loader import prepare_tables

        for spec in (self.train_spec, self.valid_spec):  # before epoch 0, not inside its first batch
            if spec is not None:
                prepare_tables(spec)
        if self.task.prepare is not None:  # state from the training labels (e.g. weighted_loss), every start
            from atomica_ray.data.loader import LIST_LABELS_OF_KIND, open_dataset

            train = open_dataset(cfg.train_set, cfg.allow_pickle, cfg.fragmentation_method,
                                 LIST_LABELS_OF_KIND.get(self.train_spec.kind, "auto"))
            self.task.prepare(self.model, cfg, train)
        n0 = self._train_loader(epoch=0, start_batch=0).n_batches  # of the whole epoch, whatever the world size
        total_steps = cfg.max_epoch * math.ceil(n0 / cfg.micro_batches_per_step)
        stretched = None
        if self.state.total_steps == 0:
            self.state.total_steps = total_steps
        else:  # resumed, or started from a donor, with another max_epoch than the checkpoint's run
            stretched = stretch(cfg, cfg.scheduler or self.task.scheduler, self.state, total_steps)
        # test hook: the holds not yet done by an earlier attempt (decided now, alike on every rank)
        self.holds = {s for s in cfg.hold_at_steps if not (self.run_dir / f".held_at_step_{s}").exists()}
        self.logger = RunLogger(cfg, self.run_dir, self.name, enabled=self.rank == 0, history=history,
                                wandb_id=self.state.wandb_id)
        self.state.wandb_id = self.logger.wandb_id
        if self.rank == 0 and not self.storage.is_local:
            remove_stale_copies()
        self.stop_requested = False  # a sweep's scheduler stopped this trial
        self.last_checkpoint = None  # the name of the last checkpoint reported
        if self.rank == 0:
            emit("start", run=self.name, epoch=self.state.epoch, batch=self.state.batch, max_epoch=cfg.max_epoch,
                 steps_per_epoch=n0, resumed_from=self.resumed_from, init_checkpoint=donor,
                 run_dir=str(self.run_dir), tensorboard=self.logger.tensorboard_dir, wandb=self.logger.wandb_where)
            if stretched:
                emit("note", run=self.name, text=f"max_epoch is {cfg.max_epoch}: {stretched}")

    # -- checkpoints --

    def _intact(self, path: Path) -> Path:
        """`path` if its files match its manifest, else the newest intact checkpoint of the run (local storage)."""
        why = verify_checkpoint(path)
        if why is None:
            return path
        if not storage_is_local():
            raise RuntimeError(f"checkpoint {path.name} is damaged ({why}); relaunch the run with the same name: "
                               "the driver repairs the run directory")
        alternative, broken = newest_intact(path.parent, skip={path.name})
        if alternative is None:
            raise RuntimeError(f"checkpoint {path.name} is damaged ({why}) and no intact checkpoint is left in "
                               f"{path.parent}")
        if self.rank == 0:
            emit("note", run=self.name, text=f"checkpoint {path.name} is damaged ({why}); resuming from "
                                             f"{alternative.name} instead")
        return alternative

    def _restore(self, path: Path, same_run: bool) -> list[dict]:
        """Load a checkpoint. `same_run`: this run's own (counters, RNG, history); else a donor's (PBT): weights,
        optimizer moments, EMA and counters, with this config's hyperparameters put back on top."""
        from atomica_ray.models import load_atomica

        saved = read_train_state(path)
        config, weights = model_files(path)
        # through ATOMICA's format (e3nn buffer names reconciled), then into this run's model
        self.model.load_state_dict(load_atomica(config, weights, model_type=self.task.model_class).state_dict())
        if "raw_model" in saved:  # the model dir holds EMA weights; training continues from the raw ones
            self.model.load_state_dict(saved["raw_model"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(saved["optimizer"])
        apply_hparams(self.optimizer, self.cfg, self.cfg.lr)
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            if "ema" in saved:
                self.ema.load_state_dict(saved["ema"])
            else:
                self.ema = EMA(self.model, self.cfg.ema_decay)
        self.state = TrainState.from_dict(saved["state"])
        if not same_run:
            self.state.wandb_id = None
            self.state.patience_left = self.cfg.patience_epochs
            self.state.stopped_early = False
            self.state.bad_steps_in_row = 0
            return []
        rngs = saved["rng"]
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        else:  # more workers than when saved
            seed_all(self.cfg.seed + 1000 * self.rank + self.state.global_step)
        return read_history(path)

    def _report(self, metrics: dict, checkpoint_name: str, wait_for_upload: bool = False) -> None:
        """Every rank calls this with the same cadence: `ray.train.report` is a barrier. `wait_for_upload`: return
        only once the checkpoint is in storage (a just-in-time checkpoint must be there before the node goes)."""
        import ray.train

        rngs = dist.gather_objects(rng_state())  # collective: every rank's RNG goes into rank 0's checkpoint
        self.logger.log_report(metrics)
        if self.rank == 0 and not self.storage.is_local:  # object storage: the history next to the checkpoints too
            self.storage.write_text(HISTORY_FILE, "".join(json.dumps(row) + "\n" for row in self.logger.history))
        key = self.task.selection_metric
        value = metrics.get(key)
        if self.valid_spec is not None and not (isinstance(value, float) and math.isfinite(value)):
            # A mid-epoch checkpoint is not validated (or validation gave no number): rank it below every
            # validated one. Ray needs a finite number (its checkpoint index stores NaN/inf as null, then fails).
            metrics = {**metrics, key: sys.float_info.max if self.task.mode == "min" else -sys.float_info.max}
        checkpoint, publish = (self._checkpoint(rngs, checkpoint_name) if self.rank == 0 else (None, None))
        self.last_checkpoint = checkpoint_name
        # Ray hands the checkpoint to `publish` (manifest, rename into place) in a background thread while training
        # goes on, then registers it; the run's end waits for the last one. A just-in-time checkpoint waits.
        mode = ray.train.CheckpointUploadMode.SYNC if wait_for_upload else ray.train.CheckpointUploadMode.ASYNC
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name,
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=False,
                         checkpoint_upload_fn=publish)

    def _checkpoint(self, rngs: list, name: str):
        """Rank 0: the checkpoint's files written now (the state must not move on while they are), under a
        temporary name; and the function that completes it (manifest, then rename to `name`, or upload to object
        storage) which Ray calls in the background. The temporary copy is removed on every path."""
        import pyarrow.fs
        import ray.train

        from atomica_ray.models import save_atomica

        storage = ray.train.get_context().get_storage()
        local = storage_is_local()
        if local:
            run_dir = Path(storage.experiment_fs_path)
            tmp = run_dir / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            where = run_dir
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f"atomica-ckpt-{os.getpid()}-"))
            where = f"{storage.experiment_fs_path} (via {tmp})"
        try:
            save = functools.partial(save_atomica, strict=self.cfg.atomica_strict)
            write_checkpoint(tmp, model=self.model, save_atomica=save, optimizer=self.optimizer,
                             scaler=self.scaler, ema=self.ema, state=self.state, rng_states=rngs,
                             history=self.logger.history, config=self.cfg.to_dict(), manifest=False)
        except Exception as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(f"could not write checkpoint {name} in {where}: {write_failure(error, tmp)}; "
                                       "the earlier checkpoints are intact") from error
        state = self.state
        info = dict(epoch=state.epoch if state.batch else state.epoch - 1, global_step=state.global_step)

        def publish(checkpoint, dir_name):
            try:
                write_manifest(tmp, **info)
                if local:
                    final = run_dir / dir_name
                    publish_checkpoint(tmp, final)
                    return ray.train.Checkpoint(str(final))
                dest = storage.build_checkpoint_path_from_name(dir_name)
                fs = storage.storage_filesystem
                fs.create_dir(dest, recursive=True)
                files = sorted(p for p in tmp.rglob("*") if p.is_file())
                for file in sorted(files, key=lambda p: p.name == "manifest.json"):  # the manifest last
                    rel = file.relative_to(tmp).as_posix()
                    pyarrow.fs.copy_files(str(file), f"{dest}/{rel}", destination_filesystem=fs)
                return ray.train.Checkpoint(dest, filesystem=fs)
            except Exception as error:
                raise CheckpointWriteError(f"could not write checkpoint {dir_name} in {where}: "
                                           f"{write_failure(error, tmp)}; the earlier checkpoints are intact") from error
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        return ray.train.Checkpoint.from_directory(str(tmp)), publish

    def _tune_decision(self, epoch: int) -> None:
        """In a sweep: wait until Tune has decided whether this trial goes on after `epoch` (the trial passes the
        decision through its gate actor), so a stopped trial starts no other epoch."""
        import ray

        from atomica_ray.tune.gate import gate_handle

        try:
            go_on = ray.get(gate_handle(self.cfg.trial_gate).decision.remote(epoch))
        except ray.exceptions.RayActorError:  # the trial is being torn down
            go_on = False
        self.stop_requested = not go_on

    # -- data --

    def _train_loader(self, epoch: int, start_batch: int):
        from atomica_ray.data import make_loader

        return make_loader(self.train_spec, seed=self.cfg.seed, epoch=epoch, rank=self.rank, world_size=self.world,
                           start_batch=start_batch, per_step=self.cfg.micro_batches_per_step,
                           shuffle=self.cfg.shuffle, num_workers=self.cfg.loader_workers,
                           pin_memory=self.device.type == "cuda")

    # -- training --

    def fit(self) -> None:
        try:
            while self.state.epoch < self.cfg.max_epoch and not (self.state.stopped_early or self.stop_requested):
                self.train_epoch()
        finally:
            self.logger.close()

    def train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        self.epoch_start = time.perf_counter()
        loader = self._train_loader(st.epoch, st.batch)  # this rank's share of the epoch, from batch st.batch on
        n = loader.n_batches  # of the whole epoch, over all ranks
        bar = Progress(self.name, st.epoch, n, st.batch) if self.rank == 0 and cfg.progress_bar else None
        group = defaultdict(float)  # oom / nonfinite / loss_sum / loss_count of the current optimizer step
        self.window = [0.0, 0.0]  # loss sum and count of the settled steps since the last report
        self.model.train()
        # `size` batches over all ranks make the step (the global batch, whatever the world size): each loss is
        # scaled by 1/size and the all-reduce sums, so the step's gradient is the mean over those batches
        for size, batches in loader.steps():
            for batch in batches:
                if not group["oom"]:  # a doomed step needs no more compute
                    self._micro_step(batch, 1.0 / size, group)
            self._optimizer_step(group)
            group.clear()
            st.batch += size
            if bar is not None:  # the loss shown is the previous step's (settled without waiting)
                bar.update(st.batch, self.last_loss, self.lr)
            if cfg.report_every_steps and st.global_step % cfg.report_every_steps == 0 and st.batch < n:
                self._report(self._train_metrics(),
                             f"checkpoint_epoch{st.epoch:04d}_step{st.global_step:08d}")
                self.window = [0.0, 0.0]
            if st.global_step % cfg.preemption_check_steps == 0:
                self._check_preemption()
            self._maybe_crash()
            self._maybe_hold()
        self.end_of_epoch()

    def _micro_step(self, batch, scale: float, group: dict) -> None:
        batch = to_device(batch, self.device)
        try:
            with autocast(self.cfg, self.device):
                loss, _ = self.task.forward(self.model, batch)
            if self.state.global_step in self.cfg.nonfinite_steps and self.rank == self.world - 1:
                loss = loss * float("nan")  # test hook: a non-finite loss on one rank only
            # Flags and sums stay on the device; the host reads them one step later, without waiting (`_settle`).
            # A non-finite loss still runs backward; its step is then skipped on every rank.
            value = loss.detach().float()
            finite = torch.isfinite(value)
            self.scaler.scale(loss.float() * scale).backward()
            group["nonfinite"] = group["nonfinite"] + (~finite).float()
            group["loss_sum"] = group["loss_sum"] + torch.where(finite, value, 0.0)
            group["loss_count"] = group["loss_count"] + finite.float()
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_oom(error):
                raise
            group["oom"] = 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _optimizer_step(self, group: dict) -> None:
        """All-reduce, clip, step, all queued without waiting for the GPU: whether the step was bad (out of memory,
        non-finite loss or gradient) is decided on the device (the fused optimizer's `found_inf`), and the host
        reads the flags one step later (`_settle`), so the GPU never idles while the host decides."""
        cfg, st = self.cfg, self.state
        flags = dist.reduce_step(self.params, group["oom"], group["nonfinite"], group["loss_sum"],
                                 group["loss_count"], self.device)
        self._settle()  # the previous step: its flags were computed long ago
        self.lr = lr_at(st.global_step, cfg, cfg.scheduler or self.task.scheduler, st.total_steps,
                        st.schedule_from_step, st.schedule_from_lr)
        apply_hparams(self.optimizer, cfg, self.lr)
        if self.scaler.is_enabled():
            grad_norm = torch.full((), float("nan"), device=self.device)  # of a skipped step
            # fp16: GradScaler skips non-finite gradients itself; the other bad steps are decided on the host
            summary = dist.StepSummary.read(flags)  # a host sync, fp16 only
            if not (summary.oom or summary.nonfinite):
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or float("inf"))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
        else:
            skip = dist.bad_step(flags, check_grads=True)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or float("inf"))
            self.optimizer.found_inf = skip  # read by the fused Adam(W) kernels: no update where 1
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
            if self.ema is not None:
                self.ema.update(self.model, skip=skip)
        self.optimizer.zero_grad(set_to_none=True)
        # on its way to the host while the GPU goes on; read at the next step (`_settle`)
        self.pending = (dist.HostCopy(torch.cat((flags, grad_norm.reshape(1).float()))), st.epoch, st.global_step,
                        self.lr)
        st.global_step += 1  # skipped steps advance too: the lr schedule stays tied to the data position

    def _settle(self) -> None:
        """The host's bookkeeping of the last optimizer step: skip counters, the bad-steps limit, the loss window,
        the step log. Called before the next step is queued and before every report."""
        if self.pending is None:
            return
        (copy, epoch, step, lr), self.pending = self.pending, None
        cfg, st = self.cfg, self.state
        *flags, grad_norm = copy.read()
        summary = dist.StepSummary.read(flags)
        if summary.oom:
            st.skipped_oom += 1
        elif summary.nonfinite or (not summary.grads_finite and not self.scaler.is_enabled()):
            st.skipped_nonfinite += 1
            st.bad_steps_in_row += 1
            if st.bad_steps_in_row >= cfg.max_bad_steps:
                raise BadStepsError(
                    f"{st.bad_steps_in_row} optimizer steps in a row had a non-finite loss or gradient (epoch "
                    f"{epoch}, step {step}); stopping. Lower lr, set grad_clip, check the data, or raise "
                    f"max_bad_steps (now {cfg.max_bad_steps}).")
        else:
            st.bad_steps_in_row = 0
        if summary.loss_count:
            self.window[0] += summary.loss_sum
            self.window[1] += summary.loss_count
            self.last_loss = summary.loss_sum / summary.loss_count
            if self.rank == 0:
                self.logger.log_step(step + 1, {"loss": self.last_loss, "lr": lr, "grad_norm": grad_norm})

    def _check_preemption(self) -> None:
        """Once Ray reports that a node of this run is being drained (spot reclaim, autoscaler), write a
        just-in-time checkpoint with the data position, waiting for its upload, then train on until the node goes:
        Ray then restarts the group from it (counted against max_preemptions, not max_failures)."""
        import ray.train

        if self.preemption_saved:
            return
        info = ray.train.get_preemption_info()  # a barrier: every rank asks at the same steps; rank 0's answer
        if info is None:
            return
        st = self.state
        self.preemption_saved = True
        st.preemptions += 1
        metrics = {**self._train_metrics(), "preempted_ranks": info.preempted_ranks}
        self._report(metrics, f"checkpoint_epoch{st.epoch:04d}_step{st.global_step:08d}_preempted",
                     wait_for_upload=True)
        self.window = [0.0, 0.0]

    def _maybe_hold(self) -> None:
        """Test hook (hold_at_steps): after optimizer step N, once per run, wait up to 10 minutes, asking Ray about
        preemption every 0.5 s, so that a test can remove, add or drain a node while the run is mid-epoch."""
        step = self.state.global_step
        if step not in self.holds:
            return
        self.holds.discard(step)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f".held_at_step_{step}").write_text(str(self.world))
        for _ in range(1200):  # the same count on every rank: each check is a barrier
            time.sleep(0.5)
            self._check_preemption()

    def _maybe_crash(self) -> None:
        """Test hook: a real process death of rank 0 after optimizer step `crash_at_step`, once per run."""
        if self.cfg.crash_at_step != self.state.global_step or self.rank != 0:
            return
        marker = self.run_dir / f".crashed_at_step_{self.cfg.crash_at_step}"
        if marker.exists():
            return
        # Die once Ray has registered the last reported checkpoint (it travels through a background thread and
        # the controller's poll): the test then knows where the restart resumes.
        snapshot = f"{self.storage.path}/checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 120
        while self.last_checkpoint and time.monotonic() < deadline:
            try:
                with self.storage.fs.open_input_stream(snapshot) as f:
                    if self.last_checkpoint in f.read().decode():
                        break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    # -- validation, early stopping, reporting --

    def _train_metrics(self) -> dict:
        self._settle()
        st, window = self.state, self.window
        metrics = {
            "epoch": st.epoch, "global_step": st.global_step, "batch": st.batch,
            "train_loss": window[0] / window[1] if window[1] else float("nan"),
            "lr": getattr(self, "lr", self.cfg.lr), "skipped_oom": st.skipped_oom,
            "skipped_nonfinite": st.skipped_nonfinite, "workers": self.world, "preemptions": st.preemptions,
        }
        if self.cfg.cuda_graphs and self.device.type == "cuda":  # captures so far: new size buckets cost time
            metrics["graph_captures"], metrics["graph_capture_s"] = capture_stats(self.model)
        return metrics

    @torch.no_grad()
    def validate(self) -> dict:
        from atomica_ray.data import make_loader

        # The same noisy validation set for every run, whatever its seed: runs and Tune trials compare on one set
        loader = make_loader(self.valid_spec, seed=ATOMICA_SEED, epoch=0, rank=self.rank, world_size=self.world,
                             shuffle=False, num_workers=self.cfg.loader_workers,
                             pin_memory=self.device.type == "cuda")
        records: dict[str, list] = defaultdict(list)
        oom = 0
        self.model.eval()
        weights = self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext()
        with weights:
            for batch in loader:
                try:
                    with autocast(self.cfg, self.device):
                        _, rec = self.task.forward(self.model, to_device(batch, self.device))
                except (RuntimeError, torch.OutOfMemoryError) as error:
                    if not is_oom(error):
                        raise
                    oom += 1
                    continue
                for k, v in rec.items():
                    records[k].append(v.detach().cpu().numpy())
        self.model.train()
        local = {k: np.concatenate(v) for k, v in records.items()}
        parts = dist.gather_objects((local, oom))  # every rank gets the whole validation set
        keys = sorted({k for part, _ in parts for k in part})
        merged = {k: np.concatenate([part[k] for part, _ in parts if k in part]) for k in keys}
        metrics = self.task.metrics(merged) if merged else {self.task.selection_metric: float("nan")}
        metrics["val_skipped_oom"] = sum(n for _, n in parts)
        return metrics

    def end_of_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        metrics = self._train_metrics()  # waits for the epoch's last step
        metrics["train_time_s"] = time.perf_counter() - self.epoch_start  # loader start to last step done
        if self.valid_spec is not None:
            metrics.update(self.validate())
            self._early_stopping(metrics[self.task.selection_metric])
            metrics["best_" + self.task.selection_metric] = st.best_metric
            metrics["patience_left"] = st.patience_left
        finished = st.epoch
        st.epoch, st.batch = st.epoch + 1, 0  # the checkpoint resumes at the next epoch
        metrics["epoch"], metrics["batch"] = finished, 0
        metrics["stopped_early"] = st.stopped_early
        self._report(metrics, f"checkpoint_epoch{finished:04d}_step{st.global_step:08d}")
        if self.rank == 0:
            shown = {k: v for k, v in metrics.items() if k.startswith("val_") and not k.startswith("val_skipped")}
            if metrics.get("val_skipped_oom"):
                shown["val_skipped_oom"] = metrics["val_skipped_oom"]
            emit("epoch", run=self.name, epoch=finished, max_epoch=cfg.max_epoch, train_loss=metrics["train_loss"]
                 if math.isfinite(metrics["train_loss"]) else None, metrics=shown,
                 selection_metric=self.task.selection_metric, best=st.best_metric,
                 skipped=st.skipped_oom + st.skipped_nonfinite, stopped_early=st.stopped_early,
                 seconds=time.perf_counter() - self.epoch_start)
        if cfg.trial_gate and st.epoch < cfg.max_epoch and not st.stopped_early:
            self._tune_decision(finished)

    def _early_stopping(self, value: float) -> None:
        """ATOMICA's rule: patience resets on improvement, else decreases; the first `warmup_epochs` epochs
        neither count against patience nor set the best value."""
        st, cfg = self.state, self.cfg
        if st.epoch < cfg.warmup_epochs:
            st.patience_left = cfg.patience_epochs
            return
        if math.isfinite(value) and (st.best_metric is None or
                                     (value < st.best_metric if self.task.mode == "min" else value > st.best_metric)):
            st.best_metric = value
            st.patience_left = cfg.patience_epochs
        else:
            st.patience_left -= 1
            if st.patience_left <= 0 and cfg.patience > 0:
                st.stopped_early = True


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: `config` is `TrainConfig.to_dict()`."""
    WorkerRun(TrainConfig.from_dict(config)).fit()
