"""Watching one run: output as it comes, three watchdogs, and the Result at the end.

The wall clock, the CPU budget (re-armed from the cgroup's counter: the next
check is when the budget could first be spent at the box's CPU quota, never a
busy poll) and the output cap each kill the whole box when they fire, through
the run's ``Reaper`` (reaper.py), which also tells when the launcher exited and,
after the Result, ends and removes the box. The init's status lines
(protocol.py) say whether setup completed and how the program ended, so a
sandbox failure is never mistaken for the program's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from sandlot.errors import SandboxError
from sandlot.models import CANCELLED, Limits, OutputEvent, Result, Status, StreamName
from sandlot.sandbox import protocol
from sandlot.sandbox.cgroups import Cgroup, CgroupStats
from sandlot.sandbox.launch import Launched, StdinSource, feed_stdin
from sandlot.sandbox.reaper import Reaper

_READ_CHUNK = 64 * 1024
_MIN_CPU_CHECK_S = 0.002
_DRAIN_GRACE_S = 0.5


@dataclass
class _RunState:
    output_left: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    status_lines: bytearray = field(default_factory=bytearray)
    kill_reason: str | None = None
    truncated: bool = False


class RunMonitor:
    """One run of one jail, from the moment its program may start."""

    def __init__(
        self,
        launched: Launched,
        cgroup: Cgroup,
        limits: Limits,
        *,
        reaper: Reaper,
        stage: str,
        cpu_rate: float,
        baseline: CgroupStats | None = None,
        started: float | None = None,
        keep_output: bool = True,
    ) -> None:
        self.launched = launched
        self.cgroup = cgroup
        self.reaper = reaper
        self.limits = limits
        self.stage = stage
        self.cpu_rate = max(cpu_rate, 0.01)
        self.baseline = baseline or CgroupStats(0.0, 0, 0)
        self.started = time.monotonic() if started is None else started
        self.state = _RunState(output_left=limits.max_output_bytes)
        self.state.status_lines += launched.status_seen
        # False for a long-lived program whose output is consumed as events (a stateful session's
        # interpreter): the Result's stdout/stderr stay empty instead of growing for the program's life.
        self.keep_output = keep_output

    @property
    def pid(self) -> int:
        return self.launched.pid

    def kill(self, reason: str) -> None:
        """End the run now (the first reason given is the one the Result reports)."""
        if self.state.kill_reason is None:
            self.state.kill_reason = reason
        self.reaper.kill()

    async def events(self, stdin: StdinSource) -> AsyncGenerator[OutputEvent | Result, None]:
        """Yield OutputEvents as produced, then exactly one Result."""
        loop = asyncio.get_running_loop()
        state = self.state
        pipes = self.launched.pipes
        queue: asyncio.Queue[OutputEvent | None] = asyncio.Queue()
        exited = self.reaper.watch()
        open_streams = {"stdout", "stderr", "status"}
        streams_done = asyncio.Event()
        done = asyncio.Event()  # the program and everything it started are gone
        ended_at: list[float] = []

        def reader(name: str, fd: int) -> bool:
            """Read one chunk; False when nothing more is there right now."""
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                open_streams.discard(name)
                if not open_streams:
                    streams_done.set()
                return False
            if name == "status":
                state.status_lines += data
                if protocol.has_exited(state.status_lines):
                    program_done()
                return True
            if state.output_left <= 0:
                # The cap is full and the program still writes: that is the limit, not a quiet drop.
                state.truncated = True
                self.kill("output")
                return True
            if len(data) > state.output_left:
                data = data[: state.output_left]
                state.truncated = True
            state.output_left -= len(data)
            if self.keep_output:
                (state.stdout if name == "stdout" else state.stderr).extend(data)
            stream: StreamName = "stdout" if name == "stdout" else "stderr"
            queue.put_nowait(OutputEvent(stream=stream, data=data, stage=self.stage))
            if state.truncated:
                self.kill("output")
            return True

        def drain_now() -> None:
            """Read stdout and stderr up to what they hold right now (no wait for EOF)."""
            while "stdout" in open_streams and reader("stdout", pipes.stdout):
                pass
            while "stderr" in open_streams and reader("stderr", pipes.stderr):
                pass

        def program_done() -> None:
            # The init reports only after reaping every process of the run: all output is
            # already in the pipes. Drain them now; the jail's teardown happens after the Result.
            if done.is_set():
                return
            ended_at.append(time.monotonic())
            drain_now()
            done.set()

        loop.add_reader(pipes.stdout, reader, "stdout", pipes.stdout)
        loop.add_reader(pipes.stderr, reader, "stderr", pipes.stderr)
        loop.add_reader(pipes.status, reader, "status", pipes.status)
        stdin_task = asyncio.ensure_future(feed_stdin(pipes.take(pipes.stdin_w), stdin))
        wall_timer = loop.call_at(self._deadline(loop), self.kill, "wall")
        cpu_timers: list[asyncio.TimerHandle] = []

        def check_cpu() -> None:
            if exited.done():
                return
            try:
                used = self.cgroup.cpu_time_s() - self.baseline.cpu_time_s
            except SandboxError:
                return
            left = self.limits.time_limit_s - used
            if left <= 0:
                self.kill("cpu")
            else:
                cpu_timers.append(loop.call_later(max(left / self.cpu_rate, _MIN_CPU_CHECK_S), check_cpu))

        cpu_timers.append(loop.call_later(self.limits.time_limit_s / self.cpu_rate, check_cpu))

        async def pump_until_exit() -> None:
            # Normally the init's final report ends the run; if the jail dies without
            # one (setup failure, a kill), the helper's exit and EOF on every pipe do.
            done_wait = asyncio.ensure_future(done.wait())
            waiters: set[asyncio.Future[Any]] = {done_wait, exited}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                done_wait.cancel()  # the consumer left mid-run: leave no task pending behind
                raise
            if not done.is_set():
                # Killed (cancel, a limit) or died: what the box wrote before is in the pipes,
                # and the readers take it up to EOF, which comes once the last holder is gone.
                done_wait.cancel()
                if not await _wait_event(streams_done, _DRAIN_GRACE_S):
                    self.kill("stray")  # something of the box's still holds a pipe: end it
                    if not await _wait_event(streams_done, _DRAIN_GRACE_S):
                        # Nothing of the box is left, yet no EOF: a holder outside it. Everything the
                        # box wrote is in the pipes by now; take it and end instead of waiting for ever.
                        drain_now()
            queue.put_nowait(None)

        pump = asyncio.ensure_future(pump_until_exit())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
            await pump
            wall_time = (ended_at[0] if ended_at else time.monotonic()) - self.started
            stats = self.cgroup.stats()
        finally:
            wall_timer.cancel()
            for timer in cpu_timers:
                timer.cancel()
            pump.cancel()
            stdin_task.cancel()
            for fd in (pipes.stdout, pipes.stderr, pipes.status):
                loop.remove_reader(fd)
            if not done.is_set() and not exited.done():
                self.kill("cancelled")  # the consumer went away mid-run
        yield classify(
            state,
            exited.result() if exited.done() else 0,
            self.limits,
            wall_time=wall_time,
            cpu_time=max(0.0, stats.cpu_time_s - self.baseline.cpu_time_s),
            memory_peak=stats.memory_peak_bytes,
            oom_kills=stats.oom_kills - self.baseline.oom_kills,
        )

    def _deadline(self, loop: asyncio.AbstractEventLoop) -> float:
        return loop.time() + self.limits.wall_time_limit_s - (time.monotonic() - self.started)


async def _wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for event up to timeout_s; True if it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def classify(
    state: _RunState,
    helper_wstatus: int,
    limits: Limits,
    *,
    wall_time: float,
    cpu_time: float,
    memory_peak: int,
    oom_kills: int,
) -> Result:
    """Turn what was observed into one Result of the status model."""
    report = protocol.parse_status(state.status_lines)
    started, wstatus, exec_error = report.started, report.wstatus, report.exec_error
    measured = Result(
        status=Status.INTERNAL_ERROR,
        wall_time=wall_time,
        cpu_time=cpu_time,
        memory_peak=memory_peak,
        truncated=state.truncated,
    )
    if state.kill_reason == "cancelled" and not started:
        # Cancelled while the box was still being set up: the cancel ended it, not a sandbox failure.
        return dataclasses.replace(
            measured, status=Status.SIGNALED, signal=signal.SIGKILL, message=f"{CANCELLED} by request"
        )
    if not started or exec_error is not None:
        detail = (
            exec_error
            or bytes(state.stderr).decode("utf-8", "replace").strip()
            or (f"sandbox helper exited with status {helper_wstatus}")
        )
        if state.kill_reason in ("wall", "cpu") and not started:
            detail = f"sandbox setup did not finish within the time limit ({detail})"
        return dataclasses.replace(measured, message=f"sandbox failure: {detail}")

    out = bytes(state.stdout)
    err = bytes(state.stderr)
    exit_code: int | None = None
    sig: int | None = None
    if wstatus is not None:
        if os.WIFEXITED(wstatus):
            exit_code = os.WEXITSTATUS(wstatus)
        elif os.WIFSIGNALED(wstatus):
            sig = os.WTERMSIG(wstatus)
    elif state.kill_reason is not None or oom_kills:
        sig = signal.SIGKILL  # we (or the OOM killer) ended the whole box
    base = dataclasses.replace(measured, status=Status.OK, exit_code=exit_code, signal=sig, stdout=out, stderr=err)

    def with_status(status: Status, message: str) -> Result:
        return dataclasses.replace(base, status=status, message=message)

    if state.kill_reason == "cpu" or sig == signal.SIGXCPU:
        return with_status(Status.TIMEOUT, f"CPU time limit exceeded ({limits.time_limit_s:g} s)")
    if state.kill_reason == "wall":
        return with_status(Status.TIMEOUT, f"wall-clock time limit exceeded ({limits.wall_time_limit_s:g} s)")
    if state.kill_reason == "cancelled":
        return with_status(Status.SIGNALED, f"{CANCELLED} by request")
    if state.kill_reason == "output":
        return with_status(Status.OUTPUT_LIMIT, f"output limit exceeded ({_kb(limits.max_output_bytes)})")
    if oom_kills:
        mb = limits.memory_limit_bytes // (1024 * 1024)
        return with_status(Status.MEMORY_LIMIT, f"memory limit exceeded ({mb} MB)")
    if wstatus is None:
        # runsc and bwrap exit 128+N when the box's init died of signal N. The program is the only
        # one in the box that could have done that (it cannot, by design; see helper.c), so the
        # run is not blamed on the sandbox.
        code = os.WEXITSTATUS(helper_wstatus) if os.WIFEXITED(helper_wstatus) else 0
        init_sig = code - 128
        if init_sig in signal.valid_signals():
            message = f"the box's init was killed by signal {init_sig} ({signal.strsignal(init_sig)}) mid-run"
            return dataclasses.replace(base, status=Status.SIGNALED, signal=init_sig, message=message)
        return dataclasses.replace(measured, message="sandbox failure: the box's init ended without a status")
    if sig is not None:
        if sig == signal.SIGXFSZ:
            return with_status(Status.SIGNALED, f"file size limit exceeded ({_kb(limits.max_file_size_bytes)})")
        return with_status(Status.SIGNALED, f"killed by signal {sig} ({signal.Signals(sig).name})")
    if exit_code:
        return with_status(Status.RUNTIME_ERROR, f"exited with code {exit_code}")
    return base


def _kb(size_bytes: int) -> str:
    """A size in the unit the limit was given in (KB) and in bytes: ``4 KB = 4096 bytes``."""
    return f"{size_bytes / 1024:g} KB = {size_bytes} bytes"
