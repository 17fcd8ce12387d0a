"""The go_sandbox.v1 gRPC door: the old go-sandbox service's contract, served by sandlot.

Its clients send code and an optional session id and read one RunResponse per
output line. The contract, as proto/go_sandbox/v1/sandbox.proto documents it:

* language: Go when the code begins (after blank lines and comments) with a
  package clause, else Python;
* lines: stdout and stderr are split into lines separately (a partial line
  waits for its newline or the end of the run), compiler messages included;
  timestamp is the Unix milliseconds of the chunk the line came in;
* failure: a last response with ``is_error`` and ``exec_err`` worded like Go's
  os/exec errors for the program's own failures ("exit status 3", "signal:
  killed", "timeout: ..."), and the server's message for its own (rejected
  input, queue full, sandbox failure). Like the old service, those are part of
  the stream, not gRPC statuses; only authentication is. The request metric
  still counts them under the status the native door would have used.
* session_id: the old service let clients choose their session ids; sandlot's
  pool hands out random ones. The door keeps the mapping (per tenant), creating
  a pool session on first use and again after the previous one expired.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator

from sandlot.api.common.auth import Principal
from sandlot.api.grpc.door import Context, Door, status_for
from sandlot.api.grpc.gen.go_sandbox.v1 import sandbox_pb2 as pb
from sandlot.api.grpc.gen.go_sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandlot.broker import TaskSpec
from sandlot.errors import RejectedError, SandlotError
from sandlot.models import Event, ExitEvent, OutputEvent, Result, SourceFile, Status
from sandlot.requests import new_task_id
from sandlot.service import Service

DOOR = "grpc_go_sandbox"
MAX_SESSION_ID_CHARS = 256

# Blank space and Go comments, then a package clause: the code is Go.
_GO_PREAMBLE = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_PACKAGE_CLAUSE = re.compile(r"package\s+[^\W\d]\w*")


def language_of(code: str) -> str:
    """Which language a client sent: "go" if the code opens with a package clause (after comments), else "python"."""
    text = code.removeprefix("\ufeff")
    preamble = _GO_PREAMBLE.match(text)
    assert preamble is not None  # the pattern matches the empty string
    return "go" if _PACKAGE_CLAUSE.match(text, preamble.end()) else "python"


def exec_error(result: Result) -> str | None:
    """The exec_err of a finished run, or None when it succeeded."""
    status = result.status
    if status is Status.OK:
        return None
    if status is Status.RUNTIME_ERROR and result.exit_code is not None:
        return f"exit status {result.exit_code}"
    if result.cancelled:  # not "signal: killed": the kill was ours, on request
        return result.message
    if status is Status.SIGNALED and result.signal is not None:
        description = signal.strsignal(result.signal) or f"signal {result.signal}"
        return f"signal: {description.lower()}"
    if status is Status.TIMEOUT:
        return f"timeout: {result.message}"
    if status is Status.COMPILE_ERROR and result.message == "compilation failed" and result.exit_code is not None:
        return f"compilation failed: exit status {result.exit_code}"
    return result.message or status.value


class _Lines:
    """One stream's output as lines: a partial last line waits for its newline (or the end)."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        end = self._pending.rfind(b"\n")
        if end < 0:
            return []
        complete = bytes(self._pending[:end])
        del self._pending[: end + 1]
        return [_text(line) for line in complete.split(b"\n")]

    def flush(self) -> list[str]:
        rest = bytes(self._pending)
        self._pending.clear()
        return [_text(rest)] if rest else []


def _text(line: bytes) -> str:
    # Like Go's bufio.ScanLines: a trailing carriage return is not part of the line.
    return line.removesuffix(b"\r").decode("utf-8", "replace")


def _ms(unix_s: float) -> int:
    return int(unix_s * 1000)


class _Sessions:
    """Client-chosen session ids, per tenant, mapped to the service's sessions (kept by this process)."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._ids: dict[tuple[str, str], str] = {}
        self._creating = asyncio.Lock()  # one creation at a time: no two sessions for one id

    async def resolve(self, tenant: str, client_id: str, min_isolation: str = "jail") -> str:
        """The session of a client-chosen id, created at first use (the server's default level, raised to the key's)."""
        if len(client_id) > MAX_SESSION_ID_CHARS:
            raise RejectedError(f"session_id: longer than {MAX_SESSION_ID_CHARS} characters", field="session_id")
        key = (tenant, client_id)
        known = await self._live(key)
        if known is not None:
            return known
        async with self._creating:
            known = await self._live(key)
            if known is not None:
                return known
            for stale in [k for k in self._ids if await self._live(k) is None]:
                del self._ids[stale]  # keeps the map as small as the live sessions
            session = await self._service.create_session(tenant, min_isolation=min_isolation)
            self._ids[key] = session.id
            return session.id

    async def _live(self, key: tuple[str, str]) -> str | None:
        session_id = self._ids.get(key)
        if session_id is None or not await self._service.sessions.exists(key[0], session_id):  # none, or it expired
            return None
        return session_id


class GoSandboxServicer(pb_grpc.GoSandboxServiceServicer):
    def __init__(self, door: Door) -> None:
        self._door = door
        self._sessions = _Sessions(door.service)

    async def RunCode(self, request: pb.RunRequest, context: Context) -> AsyncIterator[pb.RunResponse]:
        async with self._door.call(context, DOOR) as current:
            try:
                spec = await self._door.submit(current, await self._spec(request, current.principal))
                async for response in _responses(self._door.follow(spec)):
                    yield response
            except SandlotError as exc:  # the old contract: server failures are part of the stream
                current.code = status_for(exc)
                yield pb.RunResponse(is_error=True, exec_err=str(exc), timestamp=_ms(time.time()))

    async def _spec(self, request: pb.RunRequest, principal: Principal) -> TaskSpec:
        session_id = None
        if request.session_id:
            session_id = await self._sessions.resolve(principal.tenant, request.session_id, principal.min_isolation)
        return TaskSpec(
            id=new_task_id(),
            tenant=principal.tenant,
            language=language_of(request.code),
            files=(SourceFile("main", request.code.encode()),),
            session_id=session_id,
        )


async def _responses(events: AsyncIterator[Event]) -> AsyncIterator[pb.RunResponse]:
    streams = {"stdout": _Lines(), "stderr": _Lines()}
    async for event in events:
        if isinstance(event, OutputEvent):
            for line in streams[event.stream].feed(event.data):
                yield pb.RunResponse(output=line, timestamp=_ms(event.time))
        elif isinstance(event, ExitEvent):
            for lines in streams.values():
                for line in lines.flush():
                    yield pb.RunResponse(output=line, timestamp=_ms(event.time))
            error = exec_error(event.result)
            if error is not None:
                yield pb.RunResponse(is_error=True, exec_err=error, timestamp=_ms(event.time))
