"""Ray's processes go when the driver that started them goes, however it goes.

`ray.init()` ties a local Ray to its driver, but in Ray 2.60 a driver killed with SIGKILL (a crash, the OOM killer,
`kill -9`) leaves the node's dashboard agent and runtime-env agent running for good: orphans, each holding ports and
memory. `start` launches this module as a small process of its own (its own session, so a signal to the driver's
process group does not reach it) that watches the driver: while the driver lives it notes the driver's descendant
processes every two seconds; once the driver is gone it waits for Ray's own shutdown, then kills those noted
processes still alive (a process is known by its pid and start time, so a reused pid is never hit). A driver that
ends normally leaves nothing to kill. Linux only (it reads /proc); elsewhere it does nothing.

    python -m atomica_ray.train.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 2.0
GRACE_S = 5.0  # Ray's own shutdown of a driver that exits normally


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])  # ppid, starttime (fields 4 and 22 of proc(5))


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below `root`."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                parents.setdefault(info[0], []).append(int(entry))
                starts[int(entry)] = info[1]
    out, todo = {}, [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out[child] = starts[child]
                todo.append(child)
    return out


def watch(driver: int) -> None:
    noted: dict[int, int] = {}
    while _stat(driver) is not None:
        noted.update(descendants(driver))
        noted.pop(os.getpid(), None)  # the watcher itself starts as the driver's child
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    for pid, start in noted.items():
        info = _stat(pid)
        if info is not None and info[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


_WATCHED: set[int] = set()


def start(driver: int | None = None) -> None:
    """Watch `driver` (this process by default) from a process of its own; once per driver."""
    driver = driver or os.getpid()
    if driver in _WATCHED or not os.path.isdir("/proc/self"):
        return
    _WATCHED.add(driver)
    subprocess.Popen([sys.executable, "-m", "atomica_ray.train.reaper", str(driver)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
