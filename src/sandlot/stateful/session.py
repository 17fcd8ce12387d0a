"""A stateful session: one interpreter kept alive in one pinned box, its cells run one at a time.

Theory of operation
-------------------
``StatefulSession.start`` creates the session's owner task (``_own``), which holds a box
through one long ``pool.lease`` for the session's whole life. In that box it runs the
REPL driver (``driver_python.py``) as an ordinary ``Box.run``: stdin is a queue of
framed cells, the output is consumed as events only (``keep_output=False``), and the
box's cgroup carries the session's memory limit for its whole life. When the
interpreter ends (killed after a cell would not stop, the memory limit, a protocol
failure, the program exiting for good), the owner starts a new one and the next cell
says so first with a ``session_reset`` notice. ``close`` ends the interpreter; leaving
the lease gives the box back to the pool, which resets it as after any run.

A cell (``run_cell``, one at a time under ``_lock``) is sent as one frame; its output
comes back through ``Cell.events`` as it is produced; its end is the driver's marker
on both streams (``protocol.py``): each pipe is in order, so the Nth marker pair ends
the Nth cell sent. Per-cell limits: the wall deadline and the CPU budget (the
cgroup's CPU counter since the cell began, re-armed as ``sandbox.monitor`` does) and
the output cap send SIGINT (KeyboardInterrupt in the cell); a cell still running
``INTERRUPT_GRACE_S`` later has its interpreter killed and restarted. A caller that
leaves mid-cell interrupts it the same way, so the next cell never gets its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from sandlot.errors import SandlotError, SessionNotFound
from sandlot.models import (
    NOTICE_SESSION_RESET,
    ExitEvent,
    Limits,
    NoticeEvent,
    OutputEvent,
    Result,
    Status,
)
from sandlot.pool import BoxPool
from sandlot.sandbox import Box
from sandlot.sandbox.policy import Bind
from sandlot.sandbox.workdirs import usage_of
from sandlot.sessions_store import WorkdirFigures
from sandlot.stateful.cell import INTERRUPT_GRACE_S, Cell, cell_result, reset_reason
from sandlot.stateful.protocol import CellReport, MarkerSplitter, ProtocolError, cell_frame, new_marker

log = logging.getLogger("sandlot.stateful")

_MIN_CPU_CHECK_S = 0.002
SESSION_ENDED_MID_CELL = "the session ended during the cell (it expired or was deleted)"


@dataclass(frozen=True)
class Interpreter:
    """How to start the session's interpreter in its box (from the engine's view of the language)."""

    language: str
    argv: tuple[str, ...]  # the interpreter with its driver; the session's marker is appended
    env: dict[str, str]
    rootfs: Path | None
    binds: tuple[Bind, ...] = ()


class StatefulSession:
    """One tenant's interpreter in one pinned box (see the module's docstring)."""

    def __init__(
        self,
        session_id: str,
        tenant: str,
        pool: BoxPool,
        interpreter: Interpreter,
        limits: Limits,
        *,
        lifetime_s: float,
        cpu_rate: float,
        environment: str = "",
    ) -> None:
        self.id = session_id
        self.tenant = tenant
        self.interpreter = interpreter
        self.isolation = pool.isolation
        self.limits = limits  # the session's: memory and processes for its life; cells default to the rest
        self._pool = pool
        self._lifetime_s = lifetime_s
        self._cpu_rate = max(cpu_rate, 0.01)
        self._lock = asyncio.Lock()
        self._box: Box | None = None
        # The interpreters' stdin, one queue for all of them: a frame sent while none runs waits for the next.
        self._stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._wanted = asyncio.Event()  # a cell was sent: an interpreter that ended is started again
        self._cell: Cell | None = None
        self._closing = False
        self.reset_reason = ""  # said with the next cell's session_reset notice (and its result's message)
        self._owner: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()
        self.created = time.time()
        self.environment = environment  # the environment's name it was started in ("" for the host's)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @property
    def ended(self) -> bool:
        """Its box is given back (closed, or its owner failed): no cell runs here any more."""
        return self._owner is not None and self._owner.done()

    def open_root(self) -> int:
        """A new fd on its box's workdir, for the session file routes (``sessions.FileRoot``); the caller
        closes it. SessionNotFound once the session has ended."""
        box = self._box
        if box is None or self._closing:
            raise SessionNotFound(f"session {self.id!r} not found or expired", field="session_id")
        return os.open(box.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def figures(self) -> WorkdirFigures:
        """Its box's workdir against that tmpfs's own size (``GET /api/v1/sessions/{id}``)."""
        fd = self.open_root()
        try:
            usage = usage_of(fd)
        finally:
            os.close(fd)
        return WorkdirFigures(
            busy=self.busy,
            bytes_used=usage.bytes_used,
            files_used=usage.files_used,
            disk_limit_bytes=usage.size_bytes,
            files_limit=usage.inodes,
        )

    @property
    def owner(self) -> tuple[int, int]:
        box = self._box
        return (box.slot.uid, box.slot.gid) if box is not None else (0, 0)

    async def start(self) -> None:
        """Take a box (waiting in the pool's queue like any run) and start the interpreter."""
        leased: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(leased), name=f"sandlot-stateful-{self.id}")
        try:
            await leased
        except BaseException:
            await self.close()  # the creation was abandoned (its request cancelled): keep no box for nobody
            raise

    async def close(self) -> None:
        """End the interpreter and give the box back; waits for both."""
        self._closing = True
        if self._box is not None:
            self._box.cancel_run()
        elif self._owner is not None:
            self._owner.cancel()  # still waiting for its box: stop waiting
        self._stdin.put_nowait(None)
        self._wanted.set()
        if self._owner is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self._owner)

    # ------------------------------------------------------------- owner

    async def _own(self, leased: asyncio.Future[None]) -> None:
        try:
            async with self._pool.lease(self.tenant, rootfs=self.interpreter.rootfs) as box:
                self._box = box
                if not leased.done():
                    leased.set_result(None)
                while not self._closing:
                    await self._interpret(box)
                    # Started again only for a cell: one that cannot start (or dies at once) is tried once
                    # per cell, never in a loop.
                    await self._wanted.wait()
        except BaseException as exc:
            if not leased.done():
                leased.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.exception("stateful session %s failed", self.id)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._closing = True
            self._box = None
            if self._cell is not None and not self._cell.finished:
                self._cell.died = self._cell.died or Result(Status.INTERNAL_ERROR, message="the session ended")
                self._cell.end()

    async def _interpret(self, box: Box) -> None:
        """One interpreter's life: start it, route its output to the running cell, notice its end."""
        it = self.interpreter
        marker = new_marker()
        splitters = {
            "stdout": MarkerSplitter(marker, with_report=True),
            "stderr": MarkerSplitter(marker, with_report=False),
        }
        self._wanted.clear()
        box.clear_cancel()  # a kill of the previous interpreter must not end this one
        command = [*it.argv, marker.decode()]
        ended = Result(Status.INTERNAL_ERROR, message="the interpreter ended without a result")
        run = box.run(
            command,
            limits=self._run_limits(),
            stdin=_queued(self._stdin),
            env=it.env,
            binds=it.binds,
            rootfs=it.rootfs,
            keep_output=False,
        )
        try:
            async with contextlib.aclosing(run) as events:
                async for item in events:
                    if isinstance(item, Result):
                        ended = item
                        continue
                    try:
                        parts = splitters[item.stream].feed(item.data)
                    except ProtocolError as exc:
                        log.warning("stateful session %s: %s; restarting its interpreter", self.id, exc)
                        box.cancel_run()
                        continue
                    for part in parts:
                        self._deliver(item.stream, part)
        except SandlotError as exc:  # the box could not start it: the cell says so, the session stays
            log.warning("stateful session %s: the interpreter did not start: %s", self.id, exc)
            ended = Result(Status.INTERNAL_ERROR, message=f"sandbox failure: {exc}")
        cell = self._cell
        if cell is not None and not cell.finished:
            if self._closing:  # ended under the cell: its expiry, or a DELETE
                ended = Result(Status.SIGNALED, signal=signal.SIGKILL, message=SESSION_ENDED_MID_CELL)
            cell.died = ended
            cell.end()
        if not self._closing:
            self.reset_reason = reset_reason(ended, cell)

    def _run_limits(self) -> Limits:
        """The interpreter's run: the session's memory and processes; its own time bounded by the lifetime."""
        lifetime = self._lifetime_s + 60.0
        return replace(self.limits, time_limit_s=lifetime * 64, wall_time_limit_s=lifetime, max_output_bytes=1 << 62)

    def _deliver(self, stream: str, part: bytes | CellReport | None) -> None:
        cell = self._cell
        if cell is None or cell.finished:
            return  # a background thread's output between cells: nobody's
        if isinstance(part, bytes):
            if part and not cell.output("stdout" if stream == "stdout" else "stderr", part):
                self._interrupt(cell, "output")
            return
        if isinstance(part, CellReport):
            cell.report = part
        else:
            cell.stderr_ended = True
        if cell.report is not None and cell.stderr_ended:
            cell.end()

    # ------------------------------------------------------------- cells

    async def run_cell(
        self, code: str, stdin: bytes, limits: Limits
    ) -> AsyncGenerator[OutputEvent | NoticeEvent | ExitEvent, None]:
        """Run one cell: a session_reset notice first if the interpreter was restarted, its output, its exit."""
        seq = itertools.count(1)

        def stamped(event: OutputEvent | NoticeEvent | ExitEvent) -> OutputEvent | NoticeEvent | ExitEvent:
            return replace(event, seq=next(seq), time=time.time())

        async with self._lock:
            if self._closing:
                yield stamped(ExitEvent(Result(Status.INTERNAL_ERROR, message="the session has ended")))
                return
            if self.reset_reason:
                yield stamped(NoticeEvent(NOTICE_SESSION_RESET, self.reset_reason))
            said_reset, self.reset_reason = self.reset_reason, ""
            cell = Cell(limits, output_left=limits.max_output_bytes)
            self._cell = cell
            try:
                async with self._limits(cell) as measured:
                    self._wanted.set()
                    self._stdin.put_nowait(cell_frame(code, stdin.decode("utf-8", "replace")))
                    while (event := await cell.events.get()) is not None:
                        yield stamped(event)
                result, value = cell_result(cell, measured(), said_reset)
                yield stamped(ExitEvent(replace(result, language=self.interpreter.language), value=value))
            finally:
                if not cell.finished:  # the caller left mid-cell: stop it before the next one may start
                    await asyncio.shield(self._abandon(cell))
                self._cell = None
                self.last_used = time.monotonic()

    @contextlib.asynccontextmanager
    async def _limits(self, cell: Cell) -> AsyncIterator[_Measure]:
        loop = asyncio.get_running_loop()
        box = self._box
        if box is None:
            raise RuntimeError("the session has no box")
        before = box.run_stats(reset_peak=True)  # the cell's memory_peak is its own, not an earlier cell's
        measure = _Measure(box, time.monotonic(), before.cpu_time_s if before else 0.0)
        timers = [loop.call_later(cell.limits.wall_time_limit_s, self._interrupt, cell, "wall")]

        def check_cpu() -> None:
            if cell.finished:
                return
            left = cell.limits.time_limit_s - measure.cpu_time_s()
            if left <= 0:
                self._interrupt(cell, "cpu")
            else:
                timers.append(loop.call_later(max(left / self._cpu_rate, _MIN_CPU_CHECK_S), check_cpu))

        timers.append(loop.call_later(cell.limits.time_limit_s / self._cpu_rate, check_cpu))
        try:
            yield measure
        finally:
            for timer in timers:
                timer.cancel()

    def cancel_cell(self) -> None:
        """Stop the running cell (a client's cancel): interrupted, then its interpreter killed past the grace."""
        if self._cell is not None:
            self._interrupt(self._cell, "cancelled")

    def signal_cell(self, sig: int) -> None:
        """An interactive door's signal (Ctrl-C: SIGINT is a KeyboardInterrupt in the cell)."""
        if self._cell is not None and not self._cell.finished and self._box is not None:
            self._box.send_signal(sig)

    def _interrupt(self, cell: Cell, why: str) -> None:
        """SIGINT for the cell (KeyboardInterrupt); past the grace, the interpreter is killed."""
        if cell.finished or cell.stopped_for or self._box is None:
            return
        cell.stopped_for = why
        self._box.send_signal(signal.SIGINT)
        asyncio.get_running_loop().call_later(INTERRUPT_GRACE_S, self._kill_if_running, cell)

    def _kill_if_running(self, cell: Cell) -> None:
        if not cell.finished and self._box is not None:
            self._box.cancel_run()  # the owner sees the interpreter end and starts a new one

    async def _abandon(self, cell: Cell) -> None:
        self._interrupt(cell, "cancelled")
        while await cell.events.get() is not None:
            pass


@dataclass
class _Measure:
    box: Box
    started: float
    cpu_before: float

    def cpu_time_s(self) -> float:
        stats = self.box.run_stats()
        if stats is None:
            return 0.0
        # A restarted interpreter's counter starts again from 0.
        return stats.cpu_time_s - self.cpu_before if stats.cpu_time_s >= self.cpu_before else stats.cpu_time_s

    def __call__(self) -> tuple[float, float, int]:
        stats = self.box.run_stats()
        peak = stats.memory_peak_bytes if stats is not None else 0
        return time.monotonic() - self.started, self.cpu_time_s(), peak


async def _queued(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes | None]:
    while True:
        chunk = await queue.get()
        yield chunk
        if chunk is None:
            return
