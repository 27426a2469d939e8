"""Our console, not Ray's: what a run shows the person who started it, and the log file that keeps the rest.

Workers never print for people. Rank 0 sends *events* (`emit`): one line on its stdout, marked, holding JSON
(run start, progress within an epoch, the epoch's metrics, notes such as "resumed from checkpoint X"). Ray
forwards worker output to the driver; there `Console` takes Ray's place as the handler of that output
(`ray._private.worker.global_worker_stdstream_dispatcher`, the one hook Ray has for it): events become our lines
(an epoch line, a progress bar on a terminal), everything else Ray's processes print goes to the run's log file.
The driver's own Ray chatter goes there too: Ray's loggers, Python warnings, and whatever Ray's C++ core writes
to file descriptor 2. `--verbose` shows all of it on the console as well.

Without a Console (the Python API, tests calling `build_trainer(...).fit()`), Ray prints the event lines as it
prints any worker output; they stay readable.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

EVENT_MARK = "@atomica-ray@ "
LOG_NAME = "atomica-ray.log"


# --- worker side -----------------------------------------------------------------------------------------------

def emit(kind: str, **fields) -> None:
    """Send one event to the driver's console (rank 0 only, by the caller's choice). Written to the stream, not
    printed: Ray Train's workers patch `print` to copy each line to their logger as well."""
    sys.stdout.write(EVENT_MARK + json.dumps({"kind": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


class Progress:
    """Progress events of one epoch, at most one every `interval` seconds (each crosses Ray's log path)."""

    def __init__(self, run: str, epoch: int, total: int, initial: int, interval: float = 2.0):
        self.run, self.epoch, self.total, self.interval = run, epoch, total, interval
        self.last = time.monotonic()
        emit("progress", run=run, epoch=epoch, batch=initial, total=total)

    def update(self, batch: int, loss: float, lr: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            emit("progress", run=self.run, epoch=self.epoch, batch=batch, total=self.total,
                 loss=loss if math.isfinite(loss) else None, lr=lr)


# --- driver side -----------------------------------------------------------------------------------------------

def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def epoch_line(e: dict) -> str:
    """`epoch 3 (4/10)  train_loss 0.61  val_bce 0.55  val_auroc 0.81  best val_bce 0.55  12.3 s`"""
    parts = [f"epoch {e['epoch']} ({e['epoch'] + 1}/{e['max_epoch']})"]
    if e.get("train_loss") is not None:
        parts.append(f"train_loss {fmt(e['train_loss'])}")
    parts += [f"{k} {fmt(v)}" for k, v in e.get("metrics", {}).items() if v is not None]
    if e.get("best") is not None:
        parts.append(f"best {e['selection_metric']} {fmt(e['best'])}")
    if e.get("skipped"):
        parts.append(f"skipped steps {e['skipped']}")
    parts.append(f"{e['seconds']:.1f} s")
    if e.get("stopped_early"):
        parts.append("(stopped early: no improvement)")
    return "  ".join(parts)


class _LogStream(io.TextIOBase):
    """A text stream into the console's log file (stands in for sys.stdout)."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, console: "Console"):
        super().__init__()
        self.console = console

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.console.log.fileno()

    def write(self, text: str) -> int:
        self.console.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return False


def trial_status(e: dict, console: "Console") -> str:
    status = e["status"]
    if status == "started":
        params = ", ".join(f"{k}={fmt(v)}" for k, v in (e.get("params") or {}).items())
        return f"started ({params})" if params else "started"
    if status == "failed":
        return f"failed: {e.get('cause')} (see the log)"
    start = next((x for x in reversed(console.events) if x.get("kind") == "start" and x.get("run") == e.get("run")),
                 {})
    epoch = e.get("epoch")
    if status == "stopped" and epoch is not None and epoch + 1 < start.get("max_epoch", epoch + 2):
        return f"stopped by Tune after epoch {epoch}"  # its scheduler (ASHA), or Ctrl-C
    return "finished" + (f" (last epoch {epoch})" if epoch is not None else "")


class Console:
    """The driver's console and the run's log file. Use as a context manager around everything after the
    driver-side checks; `attach_ray()` once Ray is initialised."""

    def __init__(self, command: str, log_path: str | Path, verbose: bool = False, show_progress: bool = True):
        self.command, self.verbose, self.show_progress = command, verbose, show_progress
        self.log_path = Path(log_path)
        self.events: list[dict] = []
        self.bar = None
        self.sweep = command == "tune"  # lines name their trial; no progress bars
        self._saved: dict = {}
        self.out = sys.stdout
        self.err = sys.stderr

    # -- setup and teardown --

    def __enter__(self) -> "Console":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", buffering=1)
        self.log_failed = False
        self.note(f"\n===== atomica-ray {self.command}, {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()} =====")
        handler = logging.StreamHandler(self)  # `write` below: a full disk does not break the console
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler = handler
        self._saved["ray_handlers"] = list(logging.getLogger("ray").handlers)
        self._mute_ray_handlers()
        for name in ("ray", "py.warnings", "atomica_ray"):
            logging.getLogger(name).addHandler(handler)
        logging.getLogger("atomica_ray").setLevel(logging.INFO)
        logging.captureWarnings(True)
        self._saved["showwarning"] = warnings.showwarning
        if not self.verbose:
            self._redirect_fd2()
            # stray prints of the libraries (Tune's experiment banner, ...) go to the log; ours use self.out
            self._saved["stdout"] = sys.stdout
            sys.stdout = _LogStream(self)
        return self

    def _mute_ray_handlers(self) -> None:
        """Ray's own console handlers off (not with --verbose): Ray's loggers reach the log through ours."""
        if self.verbose:
            return
        ray_logger = logging.getLogger("ray")
        for h in list(ray_logger.handlers):
            if h is not getattr(self, "handler", None) and isinstance(h, logging.StreamHandler) \
                    and not isinstance(h, logging.FileHandler):
                ray_logger.removeHandler(h)

    def _redirect_fd2(self) -> None:
        """What Ray's C++ core (and anything else) writes to stderr goes to the log; our lines go to a copy of
        the real stderr."""
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(self.log.fileno(), 2)
        except (OSError, ValueError):  # no real fd 2 (e.g. an embedding host): leave it
            return
        self._saved["fd2"] = saved
        self.err = os.fdopen(os.dup(saved), "w", buffering=1)

    def __exit__(self, *exc) -> None:
        self.close_bar()
        self.detach_ray()
        if "stdout" in self._saved:
            sys.stdout = self._saved.pop("stdout")
        if "fd2" in self._saved:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(self._saved.pop("fd2"), 2)
            self.err.close()
            self.err = sys.stderr
        for name in ("ray", "py.warnings", "atomica_ray"):
            logging.getLogger(name).removeHandler(self.handler)
        ray_logger = logging.getLogger("ray")
        for h in self._saved.pop("ray_handlers", []):
            if h not in ray_logger.handlers:
                ray_logger.addHandler(h)
        logging.captureWarnings(False)
        try:
            self.log.close()
        except OSError:
            pass

    def attach_ray(self) -> None:
        """Take over the printing of worker output from Ray."""
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        self._mute_ray_handlers()  # ray.init may have added its handler again
        self._dispatcher = dispatcher
        self._ray_printer = [h for h in dispatcher.handlers if h[0] == "ray_print_logs"]
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("atomica_ray_console", self.ray_output)
        self._ray_print = ray_worker.print_to_stdstream

    def detach_ray(self) -> None:
        dispatcher = getattr(self, "_dispatcher", None)
        if dispatcher is not None:
            dispatcher.remove_handler("atomica_ray_console")
            for name, handler in self._ray_printer:  # Ray prints worker output again (e.g. the next run's Ray)
                dispatcher.add_handler(name, handler)
            self._dispatcher = None

    # -- output --

    def line(self, text: str, err: bool = False) -> None:
        """One of our lines: on the console and in the log."""
        self.close_bar()
        stream = self.err if err else self.out
        print(text, file=stream, flush=True)
        self.note(text)

    def note(self, text: str) -> None:
        """A line for the log file only."""
        self.write(text + "\n")

    def write(self, text: str) -> None:
        """Into the log file; if the disk is full, the console says so once and the log is left behind."""
        if self.log_failed:
            return
        try:
            self.log.write(text)
        except (OSError, ValueError) as e:
            self.log_failed = True
            print(f"atomica-ray: cannot write the log file {self.log_path} ({getattr(e, 'strerror', e)}); "
                  "going on without it", file=self.err, flush=True)

    def flush(self) -> None:
        try:
            self.log.flush()
        except (OSError, ValueError):
            self.log_failed = True

    def ray_output(self, data: dict) -> None:
        """Ray's handler of forwarded worker output (one batch of lines of one process)."""
        source = data.get("actor_name") or data.get("task_name") or data.get("pid")
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status tables every few seconds: the events only, as Ray does
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
        for raw in lines:
            if EVENT_MARK in raw:
                try:
                    event = json.loads(raw.split(EVENT_MARK, 1)[1])
                except ValueError:
                    event = None
                if event is not None:
                    self.note(f"[event] {raw.split(EVENT_MARK, 1)[1]}")
                    self.on_event(event)
                    continue
            self.note(f"({source} pid={data.get('pid')}) {raw}")
        if self.verbose:
            lines = [ln for ln in data.get("lines", []) if EVENT_MARK not in ln]
            if lines and data.get("pid") != "autoscaler":
                self._ray_print({**data, "lines": lines}, ignore_prefix=False)

    def on_event(self, e: dict) -> None:
        kind = e.get("kind")
        self.events.append(e)
        who = f"trial {e.get('run')}: " if self.sweep else ""
        if kind == "progress":
            self.progress(e)
        elif kind == "epoch":
            self.line(who + epoch_line(e))
        elif kind == "note":
            self.line(who + e["text"])
        elif kind == "start":
            starts = [x for x in self.events if x.get("kind") == "start" and x.get("run") == e.get("run")]
            if e.get("resumed_from"):
                restarted = len(starts) > 1
                self.line(who + ("a worker failed (see the log); restarted " if restarted else "resuming ")
                          + f"from {e['resumed_from']} (epoch {e['epoch']}, batch {e['batch']})")
            elif e.get("init_checkpoint"):
                self.line(f"{who}starting from {e['init_checkpoint']} (this config's hyperparameters)")
        elif kind == "trial":
            self.line(who + trial_status(e, self))

    # -- the progress bar (a terminal only: in a log file a bar is noise) --

    def progress(self, e: dict) -> None:
        if not (self.show_progress and not self.sweep and getattr(self.out, "isatty", lambda: False)()):
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.desc != f"epoch {e['epoch']}":
            self.close_bar()
            self.bar = tqdm(total=e["total"], initial=e["batch"], desc=f"epoch {e['epoch']}", file=self.out,
                            leave=False, dynamic_ncols=True)
        self.bar.update(e["batch"] - self.bar.n)
        if e.get("loss") is not None:  # known only after the first step: no placeholder before
            self.bar.set_postfix(loss=f"{e['loss']:.4f}", lr=f"{e['lr']:.2e}", refresh=False)
        self.bar.refresh()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def last(self, kind: str) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("kind") == kind), None)
