"""The worker: claims tasks from the broker and runs them on the engine in pool boxes.

Theory of operation
-------------------
``concurrency`` loops each claim one task at a time (the broker serves tenants
in rotation), lease a box from the pool (the session's own, or a fresh one),
run the job on the engine and publish every event as it happens; the exit
event is stored with ``finish`` in a ``finally`` so that every claimed task
reaches exactly one terminal result, whatever failed. While a task runs, a
companion task follows the doors' control messages: stdin chunks feed the
program, a signal reaches its process group, cancel kills the box.

``drain`` stops claiming, lets running tasks finish until a deadline, then
cancels the rest (their boxes are killed and their exit events say so).

With a broker whose jobs are taken over from silent workers (``Heartbeating``:
Redis), a third task per claimed job heartbeats until its exit is stored, so a
run longer than the broker's claim timeout is never handed to a second worker
while this one lives. Stale jobs of dead workers are reclaimed by the broker's
own ``claim`` (see ``sandlot.broker.redis``): only a loop with a free slot
takes one, so a busy worker never hoards jobs it cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping

from sandlot.broker import Broker, BrokerUnavailable, Control, Heartbeating, TaskSpec
from sandlot.engine import Engine, check_isolation, rejected
from sandlot.errors import RejectedError, SandlotError
from sandlot.metrics import Metrics
from sandlot.models import ExitEvent, OutputEvent, Result, Status
from sandlot.pool import BoxPool, PoolFull, pool_for_run
from sandlot.sandbox import Box

log = logging.getLogger("sandlot.worker")
_CLAIM_RETRY_S = 1.0


class Worker:
    def __init__(
        self,
        broker: Broker,
        engine: Engine,
        pools: BoxPool | Mapping[str, BoxPool],
        *,
        concurrency: int,
        metrics: Metrics | None = None,
        default_isolation: str = "jail",
    ) -> None:
        self.default_isolation = default_isolation
        self.broker = broker
        self.engine = engine
        self.pools = {pools.isolation: pools} if isinstance(pools, BoxPool) else dict(pools)
        self.concurrency = concurrency
        self.metrics = metrics
        self._loops: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(), name=f"sandlot-worker-{i}") for i in range(self.concurrency)]

    async def drain(self, deadline_s: float) -> None:
        """Stop claiming; give running tasks until the deadline, then cancel them."""
        self._stopping = True
        for loop_task in self._loops:
            if loop_task not in self._running:
                loop_task.cancel()
        running = [t for t in self._loops if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=deadline_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)

    async def _loop(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while not self._stopping:
            try:
                spec = await self.broker.claim()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker error must not end this claim loop for good
                log.exception("claiming a task failed; retrying")
                await asyncio.sleep(_CLAIM_RETRY_S)
                continue
            self._running.add(current)
            try:
                await self.run_task(spec)
            finally:
                self._running.discard(current)

    async def run_task(self, spec: TaskSpec) -> None:
        """Run one claimed task to exactly one terminal result."""
        published: list[ExitEvent] = []
        heart = None
        if isinstance(self.broker, Heartbeating):
            heart = asyncio.create_task(self._heartbeat(self.broker, spec.id, published), name=f"heartbeat-{spec.id}")
        try:
            await self._run_claimed(spec, published)
        finally:
            if heart is not None:
                heart.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heart

    async def _run_claimed(self, spec: TaskSpec, published: list[ExitEvent]) -> None:
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        failure: ExitEvent | None = None
        try:
            # Inside the try: a broker outage here (Redis) must end in a result too, not end the claim loop.
            await self.broker.mark_running(spec.id)
            await self._execute(spec, published, output)
        except asyncio.CancelledError:
            # Keep what the program had printed: it was already streamed to the client.
            failure = ExitEvent(
                Result(
                    Status.INTERNAL_ERROR,
                    stdout=bytes(output["stdout"]),
                    stderr=bytes(output["stderr"]),
                    language=spec.language,
                    message="the server shut down during the run",
                ),
                time=time.time(),
            )
            raise
        except RejectedError as exc:
            failure = ExitEvent(rejected(str(exc), spec.language), time=time.time())
        except SandlotError as exc:
            failure = _failure(spec, Status.INTERNAL_ERROR, f"sandbox failure: {exc}")
        finally:
            if not published:
                await self._publish_exit(
                    spec, failure or _failure(spec, Status.INTERNAL_ERROR, "unexpected error"), published
                )

    async def _publish_exit(self, spec: TaskSpec, exit_event: ExitEvent, published: list[ExitEvent]) -> None:
        """Store the task's one terminal result (shielded: a shutdown must not lose it)."""
        published.append(exit_event)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.broker.finish(spec.id, exit_event))
        if self.metrics is not None:
            self.metrics.record(exit_event.result)

    async def _execute(self, spec: TaskSpec, published: list[ExitEvent], output: dict[str, bytearray]) -> None:
        level = spec.isolation or self.default_isolation
        check_isolation(level)
        prepared = self.engine.prepare(spec.to_job(), spec.limits, spec.compile_limits, qualify_fields=True)
        waited_from = time.monotonic()
        try:
            lease = pool_for_run(self.pools, level, spec.tenant, spec.session_id).lease(spec.tenant, spec.session_id)
            box = await lease.__aenter__()
        except PoolFull as exc:
            raise SandlotError(str(exc)) from exc
        if self.metrics is not None:
            self.metrics.box_wait.observe(time.monotonic() - waited_from)
        box.clear_cancel()
        stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        follower = asyncio.create_task(self._follow_controls(spec.id, box, stdin_queue))
        if self.metrics is not None:
            self.metrics.active_workers.inc()
        try:
            stdin = _drain_queue(stdin_queue) if spec.interactive else None
            async with contextlib.aclosing(self.engine.execute(prepared, box, stdin=stdin)) as events:
                async for event in events:
                    if isinstance(event, ExitEvent):
                        # Publish at once; the box's teardown and reset follow, off the client's path.
                        await self._publish_exit(spec, event, published)
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

    async def _heartbeat(self, broker: Heartbeating, task_id: str, published: list[ExitEvent]) -> None:
        """Keep the claimed job ours until its exit is stored; an outage only skips a beat."""
        while True:
            await asyncio.sleep(broker.heartbeat_interval_s)
            try:
                still_ours = await broker.heartbeat(task_id)
            except BrokerUnavailable as exc:
                log.warning("heartbeat of %s: %s", task_id, exc)
                continue
            if not still_ours:
                if not published:  # after the exit, the job is simply acknowledged
                    log.warning("task %s was taken over by another worker while this one ran it", task_id)
                return

    async def _follow_controls(self, task_id: str, box: Box, stdin: asyncio.Queue[bytes | None]) -> None:
        async for message in self.broker.controls(task_id):
            _apply(message, box, stdin)


def _failure(spec: TaskSpec, status: Status, message: str) -> ExitEvent:
    return ExitEvent(Result(status, language=spec.language, message=message), time=time.time())


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
