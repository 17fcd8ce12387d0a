"""The broker: how a task travels from a door to a worker and its events travel back.

Theory of operation
-------------------
A door validates a request into a ``TaskSpec`` and ``submit``s it (bounded:
``AtCapacity`` past the limit; an idempotency key returns the earlier task). A
worker ``claim``s tasks fairly across tenants, marks them running, ``publish``es
every event of the run and ``finish``es with the final ``ExitEvent``; results
are kept for a TTL. Any door can ``subscribe`` to a task's events: it gets the
whole history from the start, then live events, ending with the exit event.
Doors steer a running task through ``control`` messages (stdin, close-stdin, a
signal, cancel) that the worker running it receives.

The exit event is the one durable end of a task: once a subscriber sees it,
it is stored and final. Whatever bookkeeping follows it (acknowledging the
job, dead-lettering it) comes after, never before: a crash in between must
leave a job to acknowledge later, never a job acknowledged without a result.
So the bookkeeping is done when the call that stored the exit returns
(``finish``, or the ``claim`` / ``reclaim`` that ended a task itself), not
when a subscriber first sees the exit.

Two implementations share this protocol: ``memory.MemoryBroker`` (embedded
mode, one process) and, for the distributed mode, a Redis Streams broker.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from sandlot.config import LimitRequest
from sandlot.models import (
    Event,
    ExitEvent,
    Job,
    NoticeEvent,
    OutputEvent,
    Result,
    SourceFile,
    StageEvent,
    StageResultEvent,
    Status,
    StreamName,
    TestResultEvent,
    terminal_event,
)

TaskStatus = Literal["queued", "running", "done"]


def _limits_json(limits: LimitRequest | None) -> dict[str, Any] | None:
    return None if limits is None else dict(vars(limits))


@dataclass(frozen=True)
class TaskSpec:
    """A validated execution request, as it travels to a worker."""

    id: str
    tenant: str
    language: str
    files: tuple[SourceFile, ...]
    stdin: bytes = b""
    args: tuple[str, ...] = ()
    limits: LimitRequest | None = None
    compile_limits: LimitRequest | None = None
    session_id: str | None = None
    isolation: str = ""  # "": the server's default level
    commands: tuple[str, ...] = ()
    fetch_files: tuple[str, ...] = ()
    interactive: bool = False  # stdin arrives through control messages
    user_file_name: str | None = None
    environment: str = ""  # an environment's name (sandlot env list); "": the host
    environment_digest: str = ""  # distributed mode: what the name stood for at submit; the worker runs in that
    # JSON a door keeps with its task (Judge0: expected_output, callback_url, its limits), opaque to the
    # broker, the engine and the worker; it travels with the spec so that any API node can render the task.
    door_data: str = ""
    # Judge mode: the JSON of a sandlot.judge.JudgeSpec (tests, checker, interactor); "": an ordinary run.
    judge: str = ""
    # Same program as other tasks of its batch: a worker compiles it once for all (sandlot.judge.compile_once).
    compile_once: bool = False
    # A cell of a stateful session (distributed mode: the API node found the session to be one; the worker
    # runs it in the session's interpreter, starting one where none is yet).
    stateful: bool = False
    created: float = field(default_factory=time.time)

    def to_job(self) -> Job:
        return Job(
            language=self.language,
            files=self.files,
            stdin=self.stdin,
            args=self.args,
            user_file_name=self.user_file_name,
            commands=self.commands,
            fetch_files=self.fetch_files,
            environment=self.environment,
            environment_digest=self.environment_digest,
        )

    def to_json(self) -> str:
        # Field by field rather than dataclasses.asdict, whose deep copy was a tenth of an API node's
        # time per execute (from_json reads exactly these).
        return json.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "language": self.language,
                "files": [{"name": f.name, "content": base64.b64encode(f.content).decode()} for f in self.files],
                "stdin": base64.b64encode(self.stdin).decode(),
                "args": list(self.args),
                "limits": _limits_json(self.limits),
                "compile_limits": _limits_json(self.compile_limits),
                "session_id": self.session_id,
                "isolation": self.isolation,
                "environment": self.environment,
                "environment_digest": self.environment_digest,
                "commands": list(self.commands),
                "fetch_files": list(self.fetch_files),
                "interactive": self.interactive,
                "user_file_name": self.user_file_name,
                "door_data": self.door_data,
                "judge": self.judge,
                "compile_once": self.compile_once,
                "stateful": self.stateful,
                "created": self.created,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskSpec:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            tenant=str(data["tenant"]),
            language=str(data["language"]),
            files=tuple(SourceFile(f["name"], base64.b64decode(f["content"])) for f in data["files"]),
            stdin=base64.b64decode(data.get("stdin", "")),
            args=tuple(data.get("args", ())),
            limits=LimitRequest(**data["limits"]) if data.get("limits") else None,
            compile_limits=LimitRequest(**data["compile_limits"]) if data.get("compile_limits") else None,
            session_id=data.get("session_id"),
            isolation=str(data.get("isolation", "")),
            environment=str(data.get("environment", "")),
            environment_digest=str(data.get("environment_digest", "")),
            commands=tuple(data.get("commands", ())),
            fetch_files=tuple(data.get("fetch_files", ())),
            interactive=bool(data.get("interactive", False)),
            user_file_name=data.get("user_file_name"),
            door_data=str(data.get("door_data", "")),
            judge=str(data.get("judge", "")),
            compile_once=bool(data.get("compile_once", False)),
            stateful=bool(data.get("stateful", False)),
            created=float(data.get("created", time.time())),
        )


@dataclass(frozen=True)
class TaskState:
    id: str
    tenant: str
    status: TaskStatus
    created: float
    exit: ExitEvent | None = None  # set when done
    spec: TaskSpec | None = None  # as submitted (for a door's own data); None if it cannot be read


@dataclass(frozen=True)
class Control:
    """A message from a door to the worker running a task."""

    kind: Literal["stdin", "close_stdin", "signal", "cancel"]
    data: bytes = b""
    signal: int = 0


class Broker(Protocol):
    async def submit(self, spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec: ...

    async def claim(self) -> TaskSpec: ...

    async def mark_running(self, task_id: str) -> None: ...

    async def publish(self, task_id: str, event: Event) -> None: ...

    async def finish(self, task_id: str, exit_event: ExitEvent) -> None: ...

    async def get(self, tenant: str, task_id: str) -> TaskState | None: ...

    def subscribe(self, tenant: str, task_id: str) -> AsyncIterator[Event]: ...

    async def control(self, tenant: str, task_id: str, message: Control) -> bool: ...

    def controls(self, task_id: str) -> AsyncIterator[Control]: ...

    async def cancel(self, tenant: str, task_id: str) -> bool: ...

    def queue_depth(self) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class Heartbeating(Protocol):
    """A broker whose claimed jobs are taken over unless their worker keeps saying it is alive (Redis).

    The worker calls ``heartbeat`` every ``heartbeat_interval_s`` while it holds a
    task; False means the job is no longer this worker's (another took it over).
    The memory broker has no such thing: its worker cannot die without its queue.
    """

    @property
    def heartbeat_interval_s(self) -> float: ...

    async def heartbeat(self, task_id: str) -> bool: ...


SessionVerdict = Literal["ready", "new", "reset", "elsewhere", "moved", "full", "gone"]


@dataclass(frozen=True)
class SessionBinding:
    """Where a session's job runs, as a worker taking it learns from the session directory.

    ``ready``: this worker holds the session's box. ``new``: no box yet, this worker
    opens one. ``reset``: the box was lost (its worker died or left), this worker opens
    a fresh one and the run says so. ``elsewhere``: another live worker holds the box,
    the job goes to it. ``moved``: this worker would have to open a box and has no room
    for another session, so the session was given to the live worker with the most room
    (as its last presence said): the job goes there. ``full``: no live worker has room
    (nothing was recorded). ``gone``: the session ended or expired.
    """

    verdict: SessionVerdict
    expires_in_s: float = 0.0


@dataclass(frozen=True)
class SessionRecord:
    """What the distributed mode's directory keeps of a session besides where it lives.

    ``language`` is set for a stateful session only (its interpreter's language); its
    ``limits`` are the session's (JSON of a ``LimitRequest``, "" for the defaults), its
    ``environment_digest`` what its environment's name stood for at creation. A file
    session's runs go in ``environment`` unless a run names another. ``held``, as read:
    a live worker holds it (else its next run or file request places it).
    """

    isolation: str
    environment: str = ""
    environment_digest: str = ""
    language: str = ""
    limits: str = ""
    held: bool = field(default=False, compare=False)

    @property
    def stateful(self) -> bool:
        return bool(self.language)

    def limit_request(self) -> LimitRequest | None:
        return LimitRequest(**json.loads(self.limits)) if self.limits else None


def limits_text(limits: LimitRequest | None) -> str:
    """A ``SessionRecord``'s ``limits``: the JSON of the request, "" for none."""
    fields = _limits_json(limits)
    return json.dumps(fields, separators=(",", ":")) if fields else ""


@dataclass(frozen=True)
class SessionSummary:
    """What the session directory knows of a session's state (``GET /api/v1/sessions/{id}`` in distributed mode)."""

    isolation: str
    environment: str  # "" for the host's
    created_at: float  # Unix time (the broker's clock)
    expires_at: float  # Unix time: the idle deadline or the absolute one, whichever is first
    placed: bool  # a worker opened a workdir for it once (false: never used, no worker holds anything)
    language: str = ""  # a stateful session's interpreter; "" for a file session


class SessionDirectory(Protocol):
    """Sessions of the distributed mode: named in the broker, their boxes held by one worker each."""

    async def create(self, tenant: str, record: SessionRecord, *, ttl_s: float, idle_s: float) -> str: ...

    async def record(self, tenant: str, session_id: str) -> SessionRecord | None:
        """What the session was created with; None if it ended or expired."""
        ...

    async def room(self, level: str, *, stateful: bool) -> tuple[int, int]:
        """How many live workers serve ``level``, and how many more sessions of the kind they could open."""
        ...

    async def isolation(self, tenant: str, session_id: str) -> str | None:
        """The session's isolation level; None if it ended or expired."""
        ...

    async def summary(self, tenant: str, session_id: str) -> SessionSummary | None:
        """The session's times, level and whether it was ever placed; None if it ended or expired."""
        ...

    async def end(self, tenant: str, session_id: str) -> bool: ...

    async def exists(self, tenant: str, session_id: str) -> bool: ...

    async def bind(
        self, tenant: str, session_id: str, *, have_box: bool, room: bool, stateful: bool = False
    ) -> SessionBinding: ...


@dataclass(frozen=True)
class Presence:
    """What a worker learns when it says it is alive.

    ``owned``: which of its session boxes still have their session here. ``lost``:
    it had been taken for dead since its last presence (silent longer than the
    presence TTL: frozen, or cut off from Redis), so every job it held went to
    other workers; it must stop those runs, whose writes are fenced off anyway.
    """

    owned: set[tuple[str, str]]
    lost: bool = False


@runtime_checkable
class Distributed(Heartbeating, Protocol):
    """A broker shared by many worker processes (Redis): jobs and sessions move between workers.

    The worker says it is alive with ``presence`` every ``presence_interval_s``
    (and learns which of its session boxes still have a session, and whether it
    had been taken for dead); a worker whose presence expires has its jobs taken
    over at once by the live ones (see ``sandlot.broker.redis``); ``hand_back``
    returns a job it holds but will not finish to the queue's front; on SIGTERM
    ``leave`` stops jobs being routed to it, and ``retire``, once nothing runs,
    hands back whatever it still holds.
    """

    @property
    def sessions(self) -> SessionDirectory: ...

    @property
    def presence_interval_s(self) -> float: ...

    @property
    def presence_ttl_s(self) -> float:
        """How long a worker's presence lasts: silent longer, it is taken for dead."""
        ...

    async def presence(
        self, sessions: Sequence[tuple[str, str]], levels: Sequence[str], room: Mapping[str, tuple[int, int]]
    ) -> Presence:
        """``room``: by level, how many more file sessions and stateful sessions this worker could open."""
        ...

    async def serving(self, level: str) -> int:
        """How many live workers serve the isolation level (their presence has not expired)."""
        ...

    async def claim_routed(self) -> TaskSpec | None:
        """A job routed to this worker (its sessions' runs) if one comes within a blocking read, else None."""
        ...

    async def hand_back(self, task_id: str) -> bool: ...

    async def leave(self) -> None: ...

    async def retire(self) -> int: ...


def cancelled_before_start(spec: TaskSpec) -> ExitEvent:
    """The exit event of a task cancelled while it was still queued."""
    return terminal_event(Status.SIGNALED, "cancelled before it started", language=spec.language, signal=9, seq=1)


# --------------------------------------------------------------- event codec


def _result_to_wire(result: Result) -> dict[str, Any]:
    data = result.to_dict()
    for key in ("stdout", "stderr", "compile_output"):
        data[key + "_b64"] = base64.b64encode(getattr(result, key)).decode()
    return data


def _result_from_wire(data: dict[str, Any]) -> Result:
    return Result(
        status=Status(data["status"]),
        exit_code=data.get("exit_code"),
        signal=data.get("signal"),
        stdout=base64.b64decode(data.get("stdout_b64", "")),
        stderr=base64.b64decode(data.get("stderr_b64", "")),
        compile_output=base64.b64decode(data.get("compile_output_b64", "")),
        wall_time=float(data.get("wall_time", 0.0)),
        cpu_time=float(data.get("cpu_time", 0.0)),
        memory_peak=int(data.get("memory_peak", 0)),
        truncated=bool(data.get("truncated", False)),
        language=str(data.get("language", "")),
        message=str(data.get("message", "")),
    )


def event_to_wire(event: Event) -> dict[str, Any]:
    """A lossless JSON-able form of an event (bytes as base64), for the Redis broker."""
    base: dict[str, Any] = {"kind": event.kind, "seq": event.seq, "time": event.time}
    if isinstance(event, StageEvent):
        base["stage"] = event.stage
    elif isinstance(event, OutputEvent):
        base.update(stream=event.stream, stage=event.stage, data=base64.b64encode(event.data).decode())
    elif isinstance(event, StageResultEvent):
        base.update(stage=event.stage, result=_result_to_wire(event.result))
    elif isinstance(event, NoticeEvent):
        base.update(code=event.code, message=event.message)
    elif isinstance(event, TestResultEvent):
        base.update(
            test=event.test,
            name=event.name,
            verdict=event.verdict,
            result=_result_to_wire(event.result),
            comment=event.comment,
        )
    else:
        base.update(
            result=_result_to_wire(event.result),
            stages=[[name, _result_to_wire(r)] for name, r in event.stages],
            files=[[name, base64.b64encode(content).decode()] for name, content in event.files],
        )
        if event.value is not None:
            base["value"] = event.value
    return base


def event_from_wire(data: dict[str, Any]) -> Event:
    kind = data["kind"]
    seq, at = int(data["seq"]), float(data["time"])
    if kind == "stage":
        return StageEvent(str(data["stage"]), seq=seq, time=at)
    if kind == "output":
        stream: StreamName = "stdout" if data["stream"] == "stdout" else "stderr"
        return OutputEvent(stream, base64.b64decode(data["data"]), stage=str(data["stage"]), seq=seq, time=at)
    if kind == "stage_result":
        return StageResultEvent(str(data["stage"]), _result_from_wire(data["result"]), seq=seq, time=at)
    if kind == "notice":
        return NoticeEvent(str(data["code"]), str(data.get("message", "")), seq=seq, time=at)
    if kind == "test_result":
        return TestResultEvent(
            int(data["test"]),
            str(data["name"]),
            str(data["verdict"]),
            _result_from_wire(data["result"]),
            comment=str(data.get("comment", "")),
            seq=seq,
            time=at,
        )
    if kind == "exit":
        return ExitEvent(
            _result_from_wire(data["result"]),
            stages=tuple((str(n), _result_from_wire(r)) for n, r in data.get("stages", [])),
            files=tuple((str(n), base64.b64decode(c)) for n, c in data.get("files", [])),
            seq=seq,
            time=at,
            value=None if data.get("value") is None else str(data["value"]),
        )
    raise ValueError(f"unknown event kind {kind!r}")
