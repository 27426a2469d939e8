"""The three ways a command ends badly, each with one line for the console.

- `InputError`: a bad input found on the driver before Ray starts (config, name, path, storage, data, labels).
  Exit code 2; nothing was written.
- `RunFailed`: the run started and failed (a worker, the Train controller, storage). Exit code 1; the line names
  the cause and the log file that holds the full story.
- `Interrupted`: Ctrl-C. Exit code 130; the line says how to resume.

`cause_of` turns whatever Ray raised into that one-line cause.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad input, refused before Ray starts."""

    exit_code = 2


class RunFailed(RuntimeError):
    exit_code = 1

    def __init__(self, cause: str, log_path: str | None = None):
        super().__init__(cause)
        self.cause, self.log_path = cause, log_path


class Interrupted(KeyboardInterrupt):
    exit_code = 130


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def describe_exception(error: BaseException) -> str:
    """`TypeName: first line of its message` (the message alone for our own errors)."""
    text = first_line(str(error))
    name = type(error).__name__
    return text if name in ("InputError", "DataError") else f"{name}: {text}" if text else name


def cause_of(error: BaseException) -> str:
    """The root cause of a failed fit, as one line: the worker's exception, the controller's, or Ray's."""
    try:
        from ray.train import ControllerError, WorkerGroupError
        from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    except ImportError:  # pragma: no cover - Ray without Train V2
        return describe_exception(error)
    if isinstance(error, WorkerGroupError) and error.worker_failures:
        rank, failure = sorted(error.worker_failures.items())[0]
        base = getattr(failure, "_base_exc", failure)
        if isinstance(failure, UserExceptionWithTraceback) and base is failure:
            # the traceback text's last line is "Type: message"
            return f"worker {rank}: {first_line(str(failure).strip().splitlines()[-1])}"
        return f"worker {rank}: {describe_exception(base)}"
    if isinstance(error, ControllerError):
        inner = error.controller_failure
        return f"Ray Train controller: {describe_exception(getattr(inner, '_base_exc', inner))}"
    import ray.exceptions

    if isinstance(error, ray.exceptions.ActorDiedError):
        return "the Ray Train controller died: " + first_line(str(error).split("\n", 1)[-1])
    return describe_exception(error)
