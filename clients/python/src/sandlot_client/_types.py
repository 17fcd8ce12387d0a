"""The client's typed vocabulary: Status, Result, Limits, Output, FileInfo (frozen dataclasses, no dicts)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

StreamName = Literal["stdout", "stderr"]
TaskStatus = Literal["queued", "running", "done"]


class Status(enum.StrEnum):
    """How a run ended: the server's status model, value for value (sandlot.models.Status)."""

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"  # the program exited non-zero
    SIGNALED = "signaled"  # the program died of a signal (a cancel too)
    TIMEOUT = "timeout"  # CPU or wall-clock limit; the message says which
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    COMPILE_ERROR = "compile_error"
    INTERNAL_ERROR = "internal_error"  # the sandbox failed, never the program
    REJECTED = "rejected"  # bad input


@dataclass(frozen=True)
class Limits:
    """Per-run limits; None leaves the server's default. Units as the HTTP API takes them."""

    time_limit: float | None = None  # CPU seconds
    wall_time_limit: float | None = None  # seconds
    memory_limit: int | None = None  # MiB
    max_processes: int | None = None
    max_file_size: int | None = None  # KiB
    max_output: int | None = None  # KiB of stdout and stderr together


@dataclass(frozen=True)
class Result:
    """How a run ended. Output is text (bytes that are not UTF-8 arrive as U+FFFD).

    ``value`` is a stateful session cell's last expression (its ``repr``), else None.
    """

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    compile_output: str = ""
    wall_time: float = 0.0  # seconds
    cpu_time: float = 0.0  # seconds
    memory_peak: int | None = None  # bytes
    truncated: bool = False
    language: str = ""
    message: str = ""
    value: str | None = None
    task_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class Output:
    """A piece of a task's output as it arrives; ``stage`` is ``run``, ``compile`` or a command."""

    stage: str
    stream: StreamName
    text: str


@dataclass(frozen=True)
class TaskState:
    """A task as the server describes it now; ``result`` once it is done."""

    task_id: str
    status: TaskStatus
    result: Result | None = None


@dataclass(frozen=True)
class FileInfo:
    """A regular file of a session's workdir."""

    path: str
    size: int  # bytes


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server created it."""

    session_id: str
    expires_in_s: float
    isolation: str
    stateful: bool = False
    language: str | None = None
