"""The worker: claims tasks from the broker and runs them on the engine in pool boxes.

Theory of operation
-------------------
``concurrency`` loops each claim one task at a time (the broker serves tenants
in rotation) and run it (``worker_runs.JobRunner``: a pool box, the engine,
every event published as it happens, the doors' control messages followed);
the exit event is stored with ``finish`` in a ``finally`` so that every claimed
task reaches exactly one terminal result, whatever failed.

``drain`` stops claiming, lets running tasks finish until a deadline, then
cancels the rest (their boxes are killed and their exit events say so).

With many workers (``Distributed``) a loop claims any job only while a box is
there for it (free, or a session's idle one, beyond the jobs claimed and not
started yet); otherwise it takes only the runs routed to it (its sessions',
which run in their boxes). A worker never holds jobs it cannot start now,
which would wait behind its runs, and be the last to come back if it died.

With a broker whose jobs are taken over from silent workers (``Heartbeating``:
Redis), a third task per claimed job heartbeats until its exit is stored, so a
run longer than the broker's claim timeout is never handed to a second worker
while this one lives.

Fencing: every write of a task's events and result carries this worker's
delivery token, and the broker refuses it once the job has moved on (this
worker was taken for dead while frozen or cut off, or wedged past the claim
timeout). The first refused write (``Superseded``), a heartbeat that finds the
job gone, or a presence that says this worker had been declared dead,
*supersedes* the run: it is stopped (its box's processes killed) and ends here
without a result, since the task ends on the worker that has it now. A worker
that cannot reach Redis for longer than the presence TTL stops its runs too,
and hands each job back once Redis answers, unless it moved on meanwhile.

With a broker many worker processes share (``Distributed``), the worker also:

- says it is alive (``presence``, every few seconds, before its first claim),
  and releases the boxes of sessions that are no longer its own (ended,
  expired, or moved to another worker while this one looked dead); the live
  workers' presences are what notice a dead one and requeue its jobs at once;
- binds a session's job before running it (``worker_sessions``): the job runs
  here in the session's box, or in a fresh box when the box was lost with
  another worker (the run's first event is a ``session_reset`` notice), or is
  handed over to the live worker that holds the box;
- answers the session file requests API nodes send it (``worker_files``: list,
  read, write in the workdir of a session it holds, or places there);
- gets the environment a job carries (its digest) before the job takes a box,
  when this node's store lacks it: fetched from an API node, verified, or built
  from its spec (``environments.shared``), one fetch per digest at a time;
- drains by handing jobs back instead of failing them: it ``leave``s at once
  (no more session jobs routed here), hands back the jobs it claimed but has
  not started, lets started ones finish until the deadline and hands back
  those that did not (a ``requeued`` notice tells their clients the run starts
  again), then ``retire``s (whatever is still pending to it goes back too).
  A job handed back is never finished here, so it ends once, on another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING

from sandlot import worker_files
from sandlot.broker import Broker, Distributed, Heartbeating, TaskSpec
from sandlot.broker.redis_session_files import RedisSessionFiles
from sandlot.engine import Engine
from sandlot.environments.shared import SharedEnvironments
from sandlot.errors import AtCapacity, BrokerUnavailable, RejectedError, SandlotError, SessionNotFound, Superseded
from sandlot.metrics import Metrics
from sandlot.models import (
    NOTICE_REQUEUED,
    NOTICE_SESSION_RESET,
    ExitEvent,
    NoticeEvent,
    Status,
    terminal_event,
)
from sandlot.pool import BoxPool, pool_for_run
from sandlot.worker_runs import JobRunner, Run
from sandlot.worker_sessions import SessionBoxes, SessionKey

if TYPE_CHECKING:
    from sandlot.stateful import StatefulSession, StatefulSessions

log = logging.getLogger("sandlot.worker")
_CLAIM_RETRY_S = 1.0
_HAND_BACK_PATIENCE_S = 60.0  # how long a job caught in a Redis outage waits to be handed back, not reclaimed
_SESSION_RESET_MESSAGE = "the session's box was lost with its worker; this run starts in a fresh, empty box"
_CANCEL_GRACE_S = 5.0  # after the drain deadline, for cancelled runs to release their boxes and hand back


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
        environments: SharedEnvironments | None = None,
        stateful: StatefulSessions | None = None,
    ) -> None:
        self.broker = broker
        self.environments = environments  # distributed mode: fetches what a job asks for and this node lacks
        self.stateful = stateful  # a stateful session's cell runs in its interpreter, not on the engine
        self.engine = engine
        self.default_isolation = default_isolation
        self.pools = {pools.isolation: pools} if isinstance(pools, BoxPool) else dict(pools)  # by isolation level
        self.concurrency = concurrency
        self.metrics = metrics
        self._loops: list[asyncio.Task[None]] = []
        self._runs: dict[asyncio.Task[None], Run] = {}  # loop -> the run it is on
        self._stopping = False
        self._present = asyncio.Event()  # the first presence was said (or tried): claiming may start
        self._presence_task: asyncio.Task[None] | None = None
        self._files_task: asyncio.Task[None] | None = None
        self._sessions = SessionBoxes(self.pools, default_isolation, stateful, environments)
        self._claiming = 0  # loops past the claim gate, waiting for a job
        self._freed = asyncio.Event()  # the gate's inputs changed: a box freed, a claim or a run ended
        self._boxless = False  # a job went back for want of a box: only routed jobs until a box is freed
        for pool in self.pools.values():
            pool.on_free = self._box_freed
        self._runner = JobRunner(
            broker,
            engine,
            self.pools,
            default_isolation=default_isolation,
            metrics=metrics,
            environments=environments,
            publish_exit=self._publish_exit,
            on_started=self._freed.set,
        )

    def start(self) -> None:
        if isinstance(self.broker, Distributed):
            self._presence_task = asyncio.create_task(self._presence(self.broker), name="sandlot-worker-presence")
            files = getattr(self.broker, "session_files", None)
            if isinstance(files, RedisSessionFiles):  # API nodes send it the file requests of its sessions
                serving = worker_files.serve(files, self.broker, self._sessions, self.pools)
                self._files_task = asyncio.create_task(serving, name="sandlot-worker-session-files")
        else:
            self._present.set()
        self._loops = [asyncio.create_task(self._loop(), name=f"sandlot-worker-{i}") for i in range(self.concurrency)]

    async def present(self) -> None:
        """Until the first presence was said (or tried): from then on other nodes see this worker."""
        await self._present.wait()

    async def drain(self, deadline_s: float) -> None:
        """Stop claiming; give running tasks until the deadline, then cancel them (or hand them back)."""
        self._stopping = True
        distributed = self.broker if isinstance(self.broker, Distributed) else None
        self._sessions.cancel()
        for loop_task in self._loops:
            if loop_task not in self._runs:
                loop_task.cancel()
        if distributed is not None:
            await _quietly("leave", distributed.leave())
            for loop_task, run in list(self._runs.items()):
                if not run.started:  # claimed, still waiting for a box: another worker can start it now
                    loop_task.cancel()
        running = [t for t in self._loops if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=deadline_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_CANCEL_GRACE_S)
        # Presence is said until here: a worker killed while it drains is taken over like any dead one.
        for chore in (self._presence_task, self._files_task):
            if chore is not None:
                chore.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chore
        if distributed is not None:
            await _quietly("retire", distributed.retire())

    async def _loop(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        await self._present.wait()
        while not self._stopping:
            try:
                spec = await self._next_job()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker error must not end this claim loop for good
                log.exception("claiming a task failed; retrying")
                await asyncio.sleep(_CLAIM_RETRY_S)
                continue
            if spec is None:
                continue
            run = self._runs[current] = Run(spec)
            try:
                await self.run_task(spec, run)
            except asyncio.CancelledError:
                if self._stopping or not run.interrupted:
                    raise
                current.uncancel()  # this worker stopped the run itself; the loop goes on
            finally:
                self._runs.pop(current, None)
                self._freed.set()

    async def _next_job(self) -> TaskSpec | None:
        """The next job this worker can start now; None to look again (the gate's inputs changed).

        Shared by many workers (``Distributed``), it claims any job only while a box is
        free for one more job than it has claimed and not started; otherwise only the
        runs routed to it, of the sessions whose boxes it holds (they run in those), or
        it waits for a box. The embedded mode's worker is the only one: it claims freely.
        """
        broker = self.broker
        if not isinstance(broker, Distributed):
            return await broker.claim()
        # Sessions pin no box (their runs take free ones): only free boxes count.
        free = sum(pool.available for pool in self.pools.values())
        unstarted = sum(1 for run in self._runs.values() if not run.started)
        if free > unstarted + self._claiming and not self._boxless:
            self._claiming += 1
            try:
                return await broker.claim()
            finally:
                self._claiming -= 1
                self._freed.set()  # a claim ended: another loop may pass the gate now
        if any(pool.session_count for pool in self.pools.values()):
            return await broker.claim_routed()  # None after one blocking read: then the gate is looked at again
        self._freed.clear()
        await self._freed.wait()
        return None

    def _box_freed(self) -> None:
        self._boxless = False
        self._freed.set()

    def _interrupt(self, run: Run, *, superseded: bool = False, cut_off: str = "") -> None:
        """Stop a run this worker can no longer finish: its job moved on, or Redis is out of reach."""
        if run.settled or run.interrupted:
            return
        run.superseded, run.cut_off = superseded, cut_off
        for loop_task, held in self._runs.items():
            if held is run:
                loop_task.cancel()

    async def run_task(self, spec: TaskSpec, run: Run | None = None) -> None:
        """Run one claimed task to exactly one terminal result (or, when stopping, back to the queue)."""
        run = run or Run(spec)
        heart = None
        if isinstance(self.broker, Heartbeating):
            heart = asyncio.create_task(self._heartbeat(self.broker, run), name=f"heartbeat-{spec.id}")
        try:
            await self._run_claimed(run)
        finally:
            if heart is not None:
                heart.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heart

    async def _run_claimed(self, run: Run) -> None:
        spec = run.spec
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        failure: ExitEvent | None = None
        try:
            distributed = self.broker if isinstance(self.broker, Distributed) else None
            session = self._cell_session(spec)
            if session is not None:  # embedded: the doors found the cell's session in this process
                await self._runner.cell(run, session, output)
                return
            if distributed is not None and not self._can_start(spec):
                # Claimed on an idle session box's account, but it needs a free one: another worker starts
                # it now (front of the queue, not counted), rather than it waiting here behind the runs.
                self._boxless = True
                await self._hand_back(distributed, run, "")
                return
            # Inside the try: a broker outage here (Redis) must end in a result too, not end the claim loop.
            if (
                spec.session_id is not None
                and distributed is not None
                and not await self._bind_session(distributed, run, spec.session_id)
            ):
                return  # handed over to the worker holding the session's box
            if spec.stateful and self.stateful is not None:  # bound: its interpreter is here now
                session = self.stateful.find(spec.tenant, spec.session_id)
                if session is None:
                    raise SessionNotFound(f"session {spec.session_id!r} not found or expired", field="session_id")
                await self._runner.cell(run, session, output)
                return
            await self._runner.execute(run, output)
        except Superseded as exc:
            log.warning("%s; stopping its run here", exc)
            run.superseded = True
        except asyncio.CancelledError:
            if run.superseded:
                raise  # settled: no result from here
            if run.cut_off and isinstance(self.broker, Distributed) and not run.published:
                await self._hand_back(self.broker, run, run.cut_off, patience_s=_HAND_BACK_PATIENCE_S)
                raise
            if self._stopping and isinstance(self.broker, Distributed) and not run.published:
                await self._hand_back(self.broker, run, "the worker stopped during the run; it starts again on another")
            # Keep what the program had printed: it was already streamed to the client.
            failure = terminal_event(
                Status.INTERNAL_ERROR,
                "the server shut down during the run",
                language=spec.language,
                stdout=bytes(output["stdout"]),
                stderr=bytes(output["stderr"]),
            )
            raise
        except BrokerUnavailable as exc:
            # Redis went away under this job (marking it running, binding its session, publishing its
            # output): that is no result of the program's. The job goes back to the queue, to run again
            # from the start, once Redis answers; never stored as a failure.
            if isinstance(self.broker, Distributed):
                log.warning("task %s: %s; handing it back once redis answers", spec.id, exc)
                why = "redis was unreachable during the run; it starts again"
                await self._hand_back(self.broker, run, why, patience_s=_HAND_BACK_PATIENCE_S)
            else:  # the in-process broker has nothing to come back
                failure = terminal_event(Status.INTERNAL_ERROR, f"sandbox failure: {exc}", language=spec.language)
        except RejectedError as exc:
            failure = terminal_event(Status.REJECTED, str(exc), language=spec.language)
        except SandlotError as exc:
            failure = terminal_event(Status.INTERNAL_ERROR, f"sandbox failure: {exc}", language=spec.language)
        finally:
            if not run.settled:
                unexpected = terminal_event(Status.INTERNAL_ERROR, "unexpected error", language=spec.language)
                await self._publish_exit(spec, failure or unexpected, run.published)

    async def _publish_exit(self, spec: TaskSpec, exit_event: ExitEvent, published: list[ExitEvent]) -> None:
        """Store the task's one terminal result (shielded: a shutdown must not lose it)."""
        published.append(exit_event)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.broker.finish(spec.id, exit_event))
        if self.metrics is not None:
            self.metrics.record(exit_event.result)

    async def _hand_back(self, broker: Distributed, run: Run, why: str, *, patience_s: float = 0.0) -> None:
        """Give the job back to the queue instead of failing it (shielded, like storing a result).

        A run that had started says ``why`` in a ``requeued`` notice first. While
        Redis is unreachable this tries again every ``_CLAIM_RETRY_S`` for up to
        ``patience_s`` (not once the worker is stopping); after that the job stays
        pending and is reclaimed after ``claim_idle_ms``: still never lost, and
        still never ended here.
        """
        deadline = time.monotonic() + patience_s
        spec = run.spec
        run.handed_back = True
        told = not run.started
        notice = NoticeEvent(NOTICE_REQUEUED, why)
        while True:
            try:
                if not told:
                    await asyncio.shield(self.broker.publish(spec.id, notice))
                    told = True
                await asyncio.shield(broker.hand_back(spec.id))
                return
            except Exception as exc:
                if isinstance(exc, BrokerUnavailable) and not self._stopping and time.monotonic() < deadline:
                    await asyncio.sleep(_CLAIM_RETRY_S)
                elif not told:  # the notice is best effort: the hand-back still gets its try
                    log.warning("requeued notice of %s: %s", spec.id, exc)
                    told = True
                else:
                    log.warning("hand back %s: %s; it stays pending, to be reclaimed", spec.id, exc)
                    return

    def _cell_session(self, spec: TaskSpec) -> StatefulSession | None:
        """Embedded mode: the stateful session whose cell this is (distributed, the cell binds it first)."""
        if self.stateful is None or isinstance(self.broker, Distributed):
            return None
        return self.stateful.find(spec.tenant, spec.session_id)

    async def _bind_session(self, broker: Distributed, run: Run, session_id: str) -> bool:
        """Make sure the session's box is here; False if the job went to the worker holding it."""
        try:
            verdict = await self._sessions.bind(broker, run.spec, session_id)
        except AtCapacity as exc:  # no worker has room for the session: a refusal to retry, no sandbox failure
            raise RejectedError(str(exc), field="session_id") from exc
        if verdict == "reset" and not run.spec.stateful:  # a cell's interpreter says so itself, with the cell
            await self.broker.publish(run.spec.id, NoticeEvent(NOTICE_SESSION_RESET, _SESSION_RESET_MESSAGE))
        if verdict != "elsewhere":
            return True
        run.handed_back = True
        await broker.hand_back(run.spec.id)
        return False

    def _can_start(self, spec: TaskSpec) -> bool:
        """Whether the job can start here: its session's files are here (it waits for a box), or a box is free."""
        pool = pool_for_run(self.pools, spec.isolation or self.default_isolation, spec.tenant, None)
        if spec.session_id is not None and pool.has_session(spec.tenant, spec.session_id):
            return True
        if spec.stateful and self.stateful is not None and self.stateful.find(spec.tenant, spec.session_id):
            return True  # its cell runs in the session's own box
        return pool.available > 0

    async def _presence(self, broker: Distributed) -> None:
        """Say this worker is alive; release the boxes of sessions that are no longer its own.

        A presence that says this worker had been declared dead (it was silent past
        the TTL: frozen, or cut off) supersedes every run it has: their jobs went to
        other workers. A presence that cannot reach Redis for longer than the TTL
        stops the runs as well (the live workers will have taken their jobs), and
        hands each back once Redis answers, unless it moved on meanwhile.
        """
        levels = sorted(self.pools)
        said_at = time.monotonic()
        first = True
        while True:
            held = self._sessions.held()
            owned: set[SessionKey] | None = None
            try:
                presence = await broker.presence(list(held), levels, self._sessions.room())
                owned, said_at = presence.owned, time.monotonic()
                if presence.lost and not first:
                    log.warning("this worker was taken for dead (silent too long); its jobs went to other workers")
                    for run in list(self._runs.values()):
                        self._interrupt(run, superseded=True)
                first = False
            except BrokerUnavailable as exc:
                log.warning("presence: %s", exc)
            except Exception:  # never let presence end: a silent worker looks dead and loses its sessions
                log.exception("presence failed")
            finally:
                self._present.set()
            if time.monotonic() - said_at > broker.presence_ttl_s:
                why = "redis was unreachable longer than the worker's presence lasts; the run starts again"
                for run in list(self._runs.values()):
                    self._interrupt(run, cut_off=why)
            if owned is not None:
                self._sessions.release(held, owned)
            await asyncio.sleep(broker.presence_interval_s)

    async def _heartbeat(self, broker: Heartbeating, run: Run) -> None:
        """Keep the claimed job ours until its exit is stored; an outage only skips a beat."""
        while True:
            await asyncio.sleep(broker.heartbeat_interval_s)
            try:
                still_ours = await broker.heartbeat(run.spec.id)
            except BrokerUnavailable as exc:
                log.warning("heartbeat of %s: %s", run.spec.id, exc)
                continue
            if not still_ours:
                if not run.settled:  # after the exit or a hand-back, the job is simply not ours any more
                    log.warning("task %s was taken over by another worker while this one ran it", run.spec.id)
                    self._interrupt(run, superseded=True)
                return


async def _quietly(what: str, awaitable: Awaitable[object]) -> None:
    """Await a best-effort step of a shutdown: a failure is logged, never raised."""
    try:
        await awaitable
    except Exception as exc:
        log.warning("%s: %s", what, exc)
