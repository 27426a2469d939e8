"""A trial's gate: the Train run's epoch reports go up to Tune through it, and Tune's decisions come back down.

Train workers do not wait for Tune on their own: a trial that Tune's scheduler (ASHA) stops after epoch E would
train epoch E+1 while the decision travels. With the gate, after each epoch's report every worker waits for the
decision about that epoch (`decision`), which the trial function records once `tune.report` returns (Tune wants
more) or when the trial is stopped (`stop`). The wait costs one round trip per epoch.

    workers --report--> Train controller --GateCallback.after_report--> gate.put
    trial function: gate.next -> tune.report (returns: go on) -> gate.decide(epoch, True)
    workers: gate.decision(epoch) -> True: next epoch; False: end the run cleanly
"""

from __future__ import annotations

import asyncio
import functools

import ray
from ray.train import UserCallback

NAMESPACE = "atomica-ray-trial-gates"


@ray.remote(num_cpus=0)
class TrialGate:
    def __init__(self):
        self.reports: asyncio.Queue | None = None
        self.decided: dict[int, bool] = {}
        self.stopped = False
        self.changed: asyncio.Condition | None = None

    def _init(self) -> None:
        if self.reports is None:  # created in the actor's event loop
            self.reports, self.changed = asyncio.Queue(), asyncio.Condition()

    async def put(self, metrics: dict | None) -> None:
        """A report of the Train run (None: the run has ended)."""
        self._init()
        await self.reports.put(metrics)

    async def next(self) -> dict | None:
        self._init()
        return await self.reports.get()

    async def decide(self, epoch: int, go_on: bool) -> None:
        self._init()
        async with self.changed:
            self.decided[epoch] = go_on
            self.changed.notify_all()

    async def stop(self) -> None:
        self._init()
        async with self.changed:
            self.stopped = True
            self.changed.notify_all()

    async def decision(self, epoch: int) -> bool:
        """Whether the trial goes on after `epoch`; waits until that is decided."""
        self._init()
        async with self.changed:
            await self.changed.wait_for(lambda: self.stopped or epoch in self.decided)
            return not self.stopped and self.decided.get(epoch, False)


@functools.lru_cache(maxsize=8)
def gate_handle(name: str):
    return ray.get_actor(name, namespace=NAMESPACE)


class GateCallback(UserCallback):
    """Runs in the Train controller: every report (rank 0's metrics, and the checkpoint's path) to the gate."""

    def __init__(self, gate):
        self.gate = gate

    def after_report(self, run_context, metrics, checkpoint):
        report = dict(metrics[0])
        if checkpoint is not None:
            report["checkpoint_path"] = checkpoint.path
        ray.get(self.gate.put.remote(report))
