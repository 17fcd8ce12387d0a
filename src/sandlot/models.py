"""The typed vocabulary every layer shares: status, limits, results, events, jobs.

Nothing here does I/O. Every door renders these types; no raw dict crosses a
module boundary.
"""

from __future__ import annotations

import base64
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Literal

StreamName = Literal["stdout", "stderr"]

# A cancelled task ends as SIGNALED (SIGKILL, which is what ended it) with a message that begins
# with this word: "cancelled by request", "cancelled before it started". No status of its own:
# to the status model a cancel is one more way a program is killed; doors that show a status
# to people say "cancelled" (Result.cancelled).
CANCELLED = "cancelled"


class Status(enum.StrEnum):
    """The outcome of an execution; one enum, every door maps it."""

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"  # the program exited non-zero
    SIGNALED = "signaled"  # the program died of a signal; a cancel (our SIGKILL) says so: Result.cancelled
    TIMEOUT = "timeout"  # CPU or wall-clock limit; the message says which
    MEMORY_LIMIT = "memory_limit"  # the cgroup OOM killer fired
    OUTPUT_LIMIT = "output_limit"  # stdout+stderr exceeded max_output_bytes
    COMPILE_ERROR = "compile_error"
    INTERNAL_ERROR = "internal_error"  # the sandbox failed, never the program
    REJECTED = "rejected"  # bad input

    @property
    def is_program_failure(self) -> bool:
        return self not in (Status.OK, Status.INTERNAL_ERROR, Status.REJECTED)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one stage, each named with its unit."""

    time_limit_s: float  # CPU time, summed over every process of the run
    wall_time_limit_s: float
    memory_limit_bytes: int  # RAM, swap disallowed
    max_processes: int  # processes and threads together
    max_file_size_bytes: int  # RLIMIT_FSIZE: the largest file one write may create
    max_output_bytes: int  # stdout + stderr together


@dataclass(frozen=True)
class Result:
    """The outcome of one stage, or of a whole job (then with compile_output)."""

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    compile_output: bytes = b""
    wall_time: float = 0.0  # seconds
    cpu_time: float = 0.0  # seconds, from the cgroup
    memory_peak: int = 0  # bytes, from the cgroup
    truncated: bool = False
    language: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the CLI contract; undecodable bytes become U+FFFD."""
        return {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "compile_output": self.compile_output.decode("utf-8", "replace"),
            "wall_time": round(self.wall_time, 6),
            "cpu_time": round(self.cpu_time, 6),
            "memory_peak": self.memory_peak,
            "truncated": self.truncated,
            "language": self.language,
            "message": self.message,
        }

    @property
    def cancelled(self) -> bool:
        """Was the task ended by a cancel (a client's request, a server shutting its run down)?"""
        return self.status is Status.SIGNALED and self.message.startswith(CANCELLED)

    @property
    def shell_exit_code(self) -> int:
        """The exit code a shell would report: the program's, or 128+N for signal N."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 1


@dataclass(frozen=True)
class SourceFile:
    """A file placed in the workdir before the first stage."""

    name: str
    content: bytes

    @classmethod
    def from_text(cls, name: str, text: str) -> SourceFile:
        return cls(name, text.encode())

    @classmethod
    def from_base64(cls, name: str, data: str) -> SourceFile:
        return cls(name, base64.b64decode(data, validate=True))


@dataclass(frozen=True)
class Job:
    """One execution request, whichever door it came through."""

    language: str
    files: tuple[SourceFile, ...]  # the first file is the program
    stdin: bytes = b""
    args: tuple[str, ...] = ()
    limits: Limits | None = None  # None: the configured defaults
    compile_limits: Limits | None = None
    user_file_name: str | None = None  # the name compiler messages should show
    commands: tuple[str, ...] = ()  # CI-like: shell commands run in order instead of the program
    fetch_files: tuple[str, ...] = ()  # workspace files to return with the result
    environment: str = ""  # the environment's name to run in; "": the host
    environment_digest: str = ""  # distributed mode: the digest the name stood for at submit (run in exactly that)


# ---------------------------------------------------------------- events
# Ordered, sequence-numbered, timestamped. The engine stamps seq and time.


@dataclass(frozen=True)
class StageEvent:
    """A stage (compile, run, a command) begins."""

    stage: str
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["stage"] = "stage"


@dataclass(frozen=True)
class OutputEvent:
    """A chunk of the program's output, as it was produced."""

    stream: StreamName
    data: bytes
    stage: str = "run"
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["output"] = "output"


@dataclass(frozen=True)
class StageResultEvent:
    """A stage ended (compile or command); its own Result."""

    stage: str
    result: Result
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["stage_result"] = "stage_result"


@dataclass(frozen=True)
class ExitEvent:
    """The job ended; always the last event."""

    result: Result
    stages: tuple[tuple[str, Result], ...] = ()  # compile and each command, in order
    files: tuple[tuple[str, bytes], ...] = ()  # fetch_files: workspace files returned with the result
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["exit"] = "exit"
    value: str | None = None  # a stateful session's cell: the repr of its last expression (capped), else None


@dataclass(frozen=True)
class NoticeEvent:
    """Something about the run that is neither the program's output nor a stage: e.g. its session was reset.

    ``code`` is one of the ``NOTICE_*`` names below (clients branch on it); ``message`` is for people.
    """

    code: str
    message: str
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["notice"] = "notice"


# The session's box was lost with the worker that held it: this run starts in a fresh, empty box.
NOTICE_SESSION_RESET = "session_reset"
# The worker stopped during the run (SIGTERM past its drain deadline): the run starts again on another worker.
NOTICE_REQUEUED = "requeued"


@dataclass(frozen=True)
class TestResultEvent:
    """Judge mode: one test of a submission was judged (they arrive as tests finish, not in test order).

    ``verdict`` is a ``sandlot.judge.Verdict`` value; ``result`` is the solution's run (its stdout capped).
    """

    __test__ = False  # not a pytest test class, despite its name

    test: int  # 1-based, the test's place in the request
    name: str
    verdict: str
    result: Result
    comment: str = ""  # the checker's or interactor's stderr, or why the verdict is what it is
    seq: int = 0
    time: float = field(default_factory=time.time)
    kind: Literal["test_result"] = "test_result"


Event = StageEvent | OutputEvent | StageResultEvent | NoticeEvent | TestResultEvent | ExitEvent


def terminal_event(
    status: Status,
    message: str,
    *,
    language: str,
    signal: int | None = None,
    stdout: bytes = b"",
    stderr: bytes = b"",
    seq: int = 0,
) -> ExitEvent:
    """The exit event of a task that ends outside the engine (refused, cancelled while queued, a failure of the
    worker or the broker); the engine builds the others from the run's own Result."""
    result = Result(status, signal=signal, stdout=stdout, stderr=stderr, language=language, message=message)
    return ExitEvent(result, seq=seq)
