"""A claimed job run to its exit: on the engine in a pool box, as a judge flow, or as a stateful cell.

Theory of operation
-------------------
The worker (``worker.py``) claims a job, settles where it runs (its session bound,
its environment's digest) and hands it here with ``JobRunner``: ``execute`` leases
a box of the job's level (the session's workdir mounted, a jail launched for its
root first), marks the task running, runs the engine and publishes every event
as it happens, the exit at once (the box's reset follows off the client's path);
a judge job's flow leases its own boxes; ``cell`` sends a stateful session's cell
to its interpreter. While a job runs, a companion task follows the doors'
control messages: stdin chunks feed the program, a signal reaches its process
group, cancel kills the box. The worker keeps the task's lifecycle: ``Run``
records where it is, and the worker stores exactly one exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandlot.broker import Broker, Control, TaskSpec
from sandlot.engine import Engine, check_isolation
from sandlot.environments.shared import SharedEnvironments
from sandlot.errors import AtCapacity, SandlotError
from sandlot.judge.compile_once import CompileOnce
from sandlot.judge.flow import Judge
from sandlot.metrics import Metrics
from sandlot.models import CANCELLED, ExitEvent, OutputEvent, Status, terminal_event
from sandlot.pool import BoxPool, pool_for_run
from sandlot.sandbox import Box
from sandlot.worker_cells import run_cell

if TYPE_CHECKING:
    from sandlot.stateful import StatefulSession

PublishExit = Callable[[TaskSpec, ExitEvent, list[ExitEvent]], Awaitable[None]]


@dataclass
class Run:
    """One claimed task on its way to one terminal result (or back to the queue)."""

    spec: TaskSpec
    published: list[ExitEvent] = field(default_factory=list)  # the exit, once stored
    started: bool = False  # the box is leased, the task marked running, and the engine runs
    handed_back: bool = False  # the job went back to the queue (or over to another worker)
    superseded: bool = False  # the job moved on to another worker: this run ends without a result
    cut_off: str = ""  # why the run was stopped while Redis was unreachable (it is handed back when it answers)

    @property
    def settled(self) -> bool:
        return bool(self.published) or self.handed_back or self.superseded

    @property
    def interrupted(self) -> bool:
        """Stopped by this worker, not by a drain: its claim loop carries on."""
        return self.superseded or bool(self.cut_off)


class JobRunner:
    """Made by the worker: ``publish_exit`` stores a task's one exit, ``on_started`` opens its claim gate."""

    def __init__(
        self,
        broker: Broker,
        engine: Engine,
        pools: Mapping[str, BoxPool],
        *,
        default_isolation: str,
        metrics: Metrics | None,
        environments: SharedEnvironments | None,
        publish_exit: PublishExit,
        on_started: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.engine = engine
        self.pools = pools
        self.default_isolation = default_isolation
        self.metrics = metrics
        self.environments = environments
        self.judge = Judge(engine)
        self.compile_once = CompileOnce(engine)
        self._publish_exit = publish_exit
        self._on_started = on_started

    def _started(self, run: Run) -> None:
        run.started = True
        self._on_started()  # one claimed job fewer waits: the claim gate may open

    async def execute(self, run: Run, output: dict[str, bytearray]) -> None:
        """A claimed job (not a stateful cell) to its exit: in a box, or as a judge flow."""
        spec = run.spec
        level = spec.isolation or self.default_isolation
        check_isolation(level)
        if spec.environment_digest and self.environments is not None:
            # Before the box: a fetch keeps this job unstarted (it counts against claims), boxes stay free.
            await self.environments.ensure(spec.environment, spec.environment_digest)
        if spec.judge:
            await self._judge(run, level)
            return
        prepared = self.engine.prepare(spec.to_job(), spec.limits, spec.compile_limits, qualify_fields=True)
        waited_from = time.monotonic()
        try:
            pool = pool_for_run(self.pools, level, spec.tenant, spec.session_id)
            lease = pool.lease(spec.tenant, spec.session_id, rootfs=prepared.rootfs)  # a box launched for it first
            box = await lease.__aenter__()
        except AtCapacity as exc:
            raise SandlotError(str(exc)) from exc
        if self.metrics is not None:
            self.metrics.box_wait.observe(time.monotonic() - waited_from)
        stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        follower = asyncio.create_task(_follow_controls(self.broker, spec.id, box, stdin_queue))
        if self.metrics is not None:
            self.metrics.active_workers.inc()
        try:
            # "running" once it has its box: a job claimed and still waiting (for its session's previous
            # run) is still "queued", and starts afresh without a notice if its worker is lost.
            await self.broker.mark_running(spec.id)
            self._started(run)
            stdin = _drain_queue(stdin_queue) if spec.interactive else None
            precompiled = await self.compile_once.compiled(prepared, box) if spec.compile_once else None
            run_events = self.engine.execute(prepared, box, stdin=stdin, precompiled=precompiled)
            async with contextlib.aclosing(run_events) as events:
                async for event in events:
                    if isinstance(event, ExitEvent):
                        # Publish at once; the box's teardown and reset follow, off the client's path.
                        await self._publish_exit(spec, event, run.published)
                        continue
                    if isinstance(event, OutputEvent) and event.stage != "compile":
                        output[event.stream] += event.data
                    await self.broker.publish(spec.id, event)
        finally:
            if self.metrics is not None:
                self.metrics.active_workers.dec()
            follower.cancel()
            # Whatever ended the follower, the lease below must still be released.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            await lease.__aexit__(None, None, None)

    async def _judge(self, run: Run, level: str) -> None:
        """Judge mode: the judge flow leases its own boxes (one per compile, per test), fairly, from the pool."""
        spec = run.spec
        pool = pool_for_run(self.pools, level, spec.tenant, None)
        await self.broker.mark_running(spec.id)
        self._started(run)
        if self.metrics is not None:
            self.metrics.active_workers.inc()

        async def judging() -> None:
            async with contextlib.aclosing(self.judge.run(spec, pool)) as events:
                async for event in events:
                    if isinstance(event, ExitEvent):
                        await self._publish_exit(spec, event, run.published)
                    else:
                        await self.broker.publish(spec.id, event)

        async def cancelled() -> None:  # a door's cancel (its client left): the tests' boxes are killed
            async for message in self.broker.controls(spec.id):
                if message.kind == "cancel":
                    return

        judge = asyncio.create_task(judging(), name=f"judge-{spec.id}")
        follower = asyncio.create_task(cancelled())
        try:
            await asyncio.wait({judge, follower}, return_when=asyncio.FIRST_COMPLETED)
            if not judge.done():
                judge.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await judge
                if not run.published:
                    why = f"{CANCELLED} by request"
                    ended = terminal_event(Status.SIGNALED, why, language=spec.language, signal=signal.SIGKILL)
                    await self._publish_exit(spec, ended, run.published)
            else:
                judge.result()  # what failed in the flow fails the task as any run's failure does
        finally:
            for task in (judge, follower):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.metrics is not None:
                self.metrics.active_workers.dec()

    async def cell(self, run: Run, session: StatefulSession, output: dict[str, bytearray]) -> None:
        """A stateful session's cell: run in the session's interpreter; events and exit as any run's."""
        await self.broker.mark_running(run.spec.id)
        self._started(run)
        limits = self.engine.settings.resolve_limits(run.spec.limits, where="limits")
        exit_event = await run_cell(self.broker, run.spec, session, limits, output)
        if exit_event is not None:
            await self._publish_exit(run.spec, exit_event, run.published)


async def _follow_controls(broker: Broker, task_id: str, box: Box, stdin: asyncio.Queue[bytes | None]) -> None:
    async for message in broker.controls(task_id):
        _apply(message, box, stdin)


def _apply(message: Control, box: Box, stdin: asyncio.Queue[bytes | None]) -> None:
    if message.kind == "stdin":
        stdin.put_nowait(message.data)
    elif message.kind == "close_stdin":
        stdin.put_nowait(None)
    elif message.kind == "signal":
        box.send_signal(message.signal)
    elif message.kind == "cancel":
        box.cancel_run()
        stdin.put_nowait(None)


async def _drain_queue(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes | None]:
    while True:
        chunk = await queue.get()
        yield chunk
        if chunk is None:
            return
