"""A cell of a stateful session: what it gathers while it runs, and the Result it ends with.

``cell_result`` is the one place that turns how a cell ended (the driver's report, the
host's interrupt and why, or the interpreter's end) into the status model; ``reset_reason``
says why the next cell starts in a fresh interpreter (its ``session_reset`` notice).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field, replace

from sandlot.models import NOTICE_SESSION_RESET, Limits, OutputEvent, Result, Status, StreamName
from sandlot.stateful.protocol import CellReport

INTERRUPT_GRACE_S = 2.0  # after SIGINT, how long a cell has to stop before its interpreter is killed


@dataclass
class Cell:
    """One cell on its way: its output so far, how it ended."""

    limits: Limits
    output_left: int
    events: asyncio.Queue[OutputEvent | None] = field(default_factory=asyncio.Queue)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    report: CellReport | None = None
    stderr_ended: bool = False
    died: Result | None = None  # the interpreter ended during the cell
    stopped_for: str = ""  # wall | cpu | output | cancelled: why the host interrupted it
    truncated: bool = False
    finished: bool = False

    def output(self, stream: StreamName, data: bytes) -> bool:
        """Take the cell's output up to its cap; False once the cap is passed (the rest is dropped)."""
        if len(data) > self.output_left:
            data = data[: self.output_left]
            self.truncated = True
        self.output_left -= len(data)
        if data:
            (self.stdout if stream == "stdout" else self.stderr).extend(data)
            self.events.put_nowait(OutputEvent(stream=stream, data=data))
        return not self.truncated

    def end(self) -> None:
        if not self.finished:
            self.finished = True
            self.events.put_nowait(None)


def reset_reason(ended: Result, cell: Cell | None) -> str:
    if cell is not None and cell.stopped_for in ("wall", "cpu", "cancelled"):
        detail = f"a cell did not stop within {INTERRUPT_GRACE_S:g} s of its interrupt"
    elif ended.status is Status.MEMORY_LIMIT:
        detail = "the session's memory limit was reached"
    else:
        detail = f"the interpreter ended ({ended.status.value}{': ' + ended.message if ended.message else ''})"
    return f"{detail}; the interpreter was restarted: earlier variables and imports are gone"


def cell_result(cell: Cell, measured: tuple[float, float, int], reset_reason: str) -> tuple[Result, str | None]:
    """The cell's Result and value, from its report or from how its interpreter ended."""
    wall, cpu, peak = measured
    base = Result(
        Status.OK,
        exit_code=0,
        stdout=bytes(cell.stdout),
        stderr=bytes(cell.stderr),
        wall_time=wall,
        cpu_time=cpu,
        memory_peak=peak,
        truncated=cell.truncated,
        message=reset_reason and f"{NOTICE_SESSION_RESET}: {reset_reason}",
    )
    limits = cell.limits
    stopped = {
        "wall": (Status.TIMEOUT, f"wall-clock time limit exceeded ({limits.wall_time_limit_s:g} s)"),
        "cpu": (Status.TIMEOUT, f"CPU time limit exceeded ({limits.time_limit_s:g} s)"),
        "output": (Status.OUTPUT_LIMIT, f"output limit exceeded ({limits.max_output_bytes} bytes)"),
        "cancelled": (Status.SIGNALED, "cancelled by request"),
    }.get(cell.stopped_for)
    report = cell.report
    if cell.died is not None:
        died = cell.died
        if stopped is not None:
            status, message = stopped
            message += f"; the cell did not stop within {INTERRUPT_GRACE_S:g} s, so the interpreter was restarted"
        elif died.status is Status.MEMORY_LIMIT:
            status = Status.MEMORY_LIMIT
            message = f"the session's memory limit was exceeded ({limits.memory_limit_bytes // (1024 * 1024)} MB)"
        else:
            status, message = died.status, died.message or "the interpreter ended"
        if status is Status.OK:
            status = Status.RUNTIME_ERROR
        return replace(base, status=status, exit_code=None, signal=died.signal, message=message), None
    if stopped is not None:
        status, message = stopped
        return replace(base, status=status, exit_code=None, signal=signal.SIGINT, message=message), None
    assert report is not None
    if report.outcome == "error":
        return replace(base, status=Status.RUNTIME_ERROR, exit_code=1, message=f"the cell raised {report.error}"), None
    if report.outcome == "interrupted":
        return replace(
            base, status=Status.RUNTIME_ERROR, exit_code=1, message="the cell raised KeyboardInterrupt"
        ), None
    if report.outcome == "exit":
        code = int(report.error) if report.error.lstrip("-").isdigit() else 1
        if code:
            return replace(base, status=Status.RUNTIME_ERROR, exit_code=code, message=f"exited with code {code}"), None
        return base, None
    value = report.value
    if value is not None and report.value_chars > len(value):
        value += f"... [the value's repr is {report.value_chars} characters; cut at {len(value)}]"
    return base, value
