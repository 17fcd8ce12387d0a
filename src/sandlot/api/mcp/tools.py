"""The MCP tools: argument checking, what each tool does, and how its answer is rendered.

Theory of operation
-------------------
``Tools`` is the door logic of MCP, independent of the transport (stdio or
streamable HTTP; ``server`` wires both); the tools' definitions are in
``schemas``. A call names a tool and passes a JSON object; the arguments
are checked here, strictly and by name, so that a mistake comes back as a tool
error (``isError: true``) whose message names the argument, which a model can
read and correct. Only an unknown tool is a protocol error, as the MCP
specification asks.

``run_code`` is the execution door: its arguments become a ``TaskSpec``
(``requests.parse_execution``, like every door), which is submitted within the
caller's quota and followed on the broker up to the exit event. While it runs,
each output chunk is reported as a progress notification (``progress`` = output
bytes so far, ``message`` = the chunk's text; stderr and compile output are
labelled), which clients see only when they sent a ``progressToken``. The
answer is the Result both as structured content and as a readable text block.
A program's own failure (a compile error, a non-zero exit, a timeout) is a
successful tool call that reports it; ``isError`` is kept for what is not the
program's doing: bad arguments, quotas, a sandbox failure. A call abandoned by
the client (cancelled, or its connection gone) cancels its task.

The session tools give the caller's tenant a workdir (``create_session``), move
files in and out of its workdir with the link-safe ``Sessions.files``, and
``run_code(session_id=...)`` runs there, seeing the files.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp import types

from sandlot.api.common.auth import Principal
from sandlot.api.common.core import Core
from sandlot.api.common.errors import Kind, classify
from sandlot.api.common.render import OutputDecoder
from sandlot.api.mcp.schemas import tool_definitions
from sandlot.config import LimitRequest
from sandlot.errors import RejectedError
from sandlot.judge.model import render_test_result, summarize, summary_dict, summary_message
from sandlot.judge.parse import parse_judge
from sandlot.models import ExitEvent, OutputEvent, Result, StageResultEvent, Status, TestResultEvent
from sandlot.requests import decode_content, parse_execution
from sandlot.sessions import NO_SPACE_ERRNOS

log = logging.getLogger("sandlot.mcp")

DOOR = "mcp"
MAX_READ_BYTES = 8 * 1024 * 1024  # read_file answers in one message; larger files are refused
MAX_WRITE_BYTES = 16 * 1024 * 1024  # decoded content of one write_file
_MIB = 1024 * 1024
_LIMIT_ARGUMENTS = ("time_limit", "memory_limit")  # run_code's limits, passed on as the request's limits.*
_LIMIT_ARGUMENT_OF = {f"limits.{name}": name for name in _LIMIT_ARGUMENTS}

Progress = Callable[[float, str], Awaitable[None]]  # (output bytes so far, chunk text)
_Handler = Callable[[Principal, Mapping[str, Any], Progress], Awaitable[types.CallToolResult]]


class Tools:
    """The tools of one Service; ``call`` runs one tool call for a caller."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.service = service = core.service
        self._handlers: dict[str, _Handler] = {
            "run_code": self._run_code,
            "judge": self._judge,
            "list_languages": self._list_languages,
            "open_session": self._open_session,
            "close_session": self._end_session,
            "create_session": self._create_session,
            "end_session": self._end_session,
            "write_file": self._write_file,
            "read_file": self._read_file,
            "list_files": self._list_files,
        }
        self.tools = tool_definitions(service.settings)
        self._input_schemas = {tool.name: tool.input_schema for tool in self.tools}

    def input_schema(self, name: str) -> dict[str, Any] | None:
        return self._input_schemas.get(name)

    def knows(self, name: str) -> bool:
        return name in self._handlers

    async def call(
        self, principal: Principal, name: str, arguments: Mapping[str, Any] | None, progress: Progress
    ) -> types.CallToolResult:
        """Run one tool call: every failure is an ``isError`` answer, counted with its code."""
        handler = self._handlers[name]
        arguments = arguments or {}
        code = "cancelled"  # unless it ends otherwise
        try:
            _check_names(arguments, self._input_schemas[name])
            answer = await handler(principal, arguments, progress)
            code = "failed" if answer.is_error else "ok"
            return answer
        except Exception as exc:  # the boundary: no exception of a tool reaches the client as a crash
            code, message = _failure(exc, name)
            return _error(message)
        finally:
            self.service.metrics.requests.labels(door=DOOR, code=code).inc()

    # ------------------------------------------------------------ execution

    async def _run_code(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        request: dict[str, Any] = {
            key: arguments[key]
            for key in ("language", "code", "stdin", "args", "session_id", "environment")
            if arguments.get(key) is not None
        }
        limits = {key: arguments[key] for key in _LIMIT_ARGUMENTS if arguments.get(key) is not None}
        if limits:
            request["limits"] = limits
        try:
            spec = parse_execution(request, tenant=principal.tenant)
            # run_code answers with the result: with no live worker for the level that would never come.
            spec = await self.core.submit(principal, spec, waits=True)
        except RejectedError as exc:
            raise _unqualified(exc) from exc
        exit_event = await self._follow(spec.tenant, spec.id, progress)
        result = exit_event.result
        text = _result_text(result)
        if exit_event.value is not None:  # a stateful session's cell
            text += f"\nvalue: {exit_event.value}"
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content={**result.to_dict(), "value": exit_event.value},
            # The program's own failures are answers; only what is not its doing is a tool error.
            is_error=result.status in (Status.REJECTED, Status.INTERNAL_ERROR),
        )

    async def _judge(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        """Judge mode: reports each test's verdict as progress (tests judged so far) as it finishes."""
        request: dict[str, Any] = {key: arguments[key] for key in arguments if key not in _LIMIT_ARGUMENTS}
        limits = {key: arguments[key] for key in _LIMIT_ARGUMENTS if arguments.get(key) is not None}
        if limits:
            request["limits"] = limits
        try:
            spec = await self.core.submit(principal, parse_judge(request, tenant=principal.tenant), waits=True)
        except RejectedError as exc:
            raise _unqualified(exc) from exc
        tested: list[TestResultEvent] = []
        compile_output = ""
        async with contextlib.aclosing(self.core.follow(spec.tenant, spec.id)) as events:
            async for event in events:
                if isinstance(event, TestResultEvent):
                    tested.append(event)
                    await progress(len(tested), f"test {event.name}: {event.verdict}")
                elif isinstance(event, StageResultEvent) and event.stage == "compile":
                    compile_output = event.result.compile_output.decode("utf-8", "replace")
                elif isinstance(event, ExitEvent):
                    if event.result.status in (Status.REJECTED, Status.INTERNAL_ERROR):
                        return _error(event.result.message)
                    total = len(request.get("tests", []))
                    summary = summarize(tested, total)
                    structured = {
                        **summary_dict(summary),
                        "compile_output": compile_output,
                        "tests": [render_test_result(t) for t in sorted(tested, key=lambda t: t.test)],
                    }
                    return _answer(structured, summary_message(summary))
        raise RuntimeError(f"the event stream of task {spec.id} ended without an exit event")

    async def _follow(self, tenant: str, task_id: str, progress: Progress) -> ExitEvent:
        """Report output as progress until the exit event; leaving early for any reason cancels the task."""
        decoder = OutputDecoder()
        sent = 0
        async with contextlib.aclosing(self.core.follow(tenant, task_id)) as events:
            async for event in events:
                if isinstance(event, ExitEvent):
                    return event
                if isinstance(event, OutputEvent) and event.data:
                    sent += len(event.data)
                    text = decoder.decode(event)
                    if text:  # else only the start of a character split between chunks
                        await progress(sent, _label(event) + text)
        raise RuntimeError(f"the event stream of task {task_id} ended without an exit event")

    async def _list_languages(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        versions = self.service.versions()
        offered = self.service.languages.offered()
        rows = [lang.describe(versions.get(lang.name, "unknown")) for lang in offered]
        lines = [
            f"{lang.name} {versions.get(lang.name, 'unknown')}"
            + (f" (aliases: {', '.join(lang.aliases)})" if lang.aliases else "")
            for lang in offered
        ]
        return _answer({"languages": rows}, "\n".join(lines) or "no language is offered")

    # ------------------------------------------------------------- sessions

    async def _create_session(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        session = await self.service.create_session(principal.tenant, min_isolation=principal.min_isolation)
        expires_in_s = session.expires_in_s
        return _answer(
            {"session_id": session.id, "expires_in_s": expires_in_s},
            f"session {session.id} created; it expires in {expires_in_s:g} s, or after "
            f"{self.service.server.session_idle_s:g} s unused. Pass session_id to run_code and the file tools.",
        )

    async def _open_session(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        memory = arguments.get("memory_limit")
        language = arguments.get("language") or "python"
        if not isinstance(language, str):
            raise RejectedError("language: must be a string", field="language")
        session = await self.service.create_stateful(
            principal.tenant,
            language,
            min_isolation=principal.min_isolation,
            limits=LimitRequest.from_mapping({"memory_limit": memory}) if memory is not None else None,
        )
        return _answer(
            {
                "session_id": session.id,
                "expires_in_s": session.expires_in_s,
                "language": session.language,
                "isolation": session.isolation,
            },
            f"stateful {session.language} session {session.id} opened; pass session_id to run_code: variables "
            f"and imports stay between calls. It expires in {session.expires_in_s:g} s, or after "
            f"{self.service.server.session_idle_s:g} s unused.",
        )

    async def _end_session(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        session_id = _string(arguments, "session_id")
        await self.service.end_session(principal.tenant, session_id)
        return _answer({"session_id": session_id, "ended": True}, f"session {session_id} ended; its files are gone")

    async def _write_file(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        files = self.service.session_files(principal.tenant, _string(arguments, "session_id"))
        path = _string(arguments, "path")
        content = _string(arguments, "content", empty_ok=True)
        data = decode_content(content, arguments.get("encoding", "utf8"))
        if len(data) > MAX_WRITE_BYTES:
            raise RejectedError(f"content: larger than {MAX_WRITE_BYTES // _MIB} MB", field="content")
        try:
            await files.write(path, data)
        except RejectedError as exc:
            raise exc.for_field("path") from exc  # the file layer's files.name
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise RejectedError(f"path: the session's workdir is full; {path} not written", field="path") from exc
            raise
        return _answer({"path": path, "size": len(data)}, f"wrote {len(data)} bytes to {path}")

    async def _read_file(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        files = self.service.session_files(principal.tenant, _string(arguments, "session_id"))
        path = _string(arguments, "path")
        try:
            data = await files.read(path, MAX_READ_BYTES)
        except RejectedError as exc:  # missing, a link, a fifo, too large
            raise exc.for_field("path") from exc  # the file layer's files.name
        try:
            text, encoding = data.decode("utf-8"), "utf8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        shown = text if encoding == "utf8" else f"({len(data)} bytes, not UTF-8; base64 below)\n{text}"
        return _answer({"path": path, "size": len(data), "encoding": encoding, "content": text}, shown)

    async def _list_files(
        self, principal: Principal, arguments: Mapping[str, Any], progress: Progress
    ) -> types.CallToolResult:
        listing = await self.service.session_files(principal.tenant, _string(arguments, "session_id")).listing()
        rows = [{"path": f.path, "size": f.size} for f in listing.files]
        text = "\n".join(f"{f.path} ({f.size} bytes)" for f in listing.files) or "the workdir is empty"
        if listing.truncated:
            text += "\n(truncated: the workdir holds more than one listing shows)"
        return _answer({"files": rows, "truncated": listing.truncated}, text)


# ------------------------------------------------------------------ answers


def _answer(structured: dict[str, Any], text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


# The metric code of each kind; a refusal of the caller (unauthorized, forbidden, rate limited) counts
# with its own finer code ("too_many_executions", ...). A conflict is counted as the refusal it is.
_CODES = {
    Kind.REJECTED: "rejected",
    Kind.NOT_FOUND: "not_found",
    Kind.CONFLICT: "rejected",
    Kind.BUSY: "busy",
    Kind.UNAVAILABLE: "unavailable",
    Kind.INTERNAL: "internal_error",
}
_SAYS_WHEN_TO_RETRY = frozenset({Kind.RATE_LIMITED, Kind.BUSY})


def _failure(exc: Exception, tool: str) -> tuple[str, str]:
    """The metric code and the message of a failed call; the caller's mistakes say what to fix."""
    failure = classify(exc)
    if failure.kind is Kind.INTERNAL:
        log.exception("MCP tool %s failed", tool)
        return "internal_error", "internal error (the server logged it)"
    message = failure.message
    if failure.kind in _SAYS_WHEN_TO_RETRY:
        message = _with_retry(message, failure.retry_after_s)
    return _CODES.get(failure.kind, failure.code), message


def _with_retry(message: str, retry_after_s: float | None) -> str:
    return f"{message}; retry in {max(1, math.ceil(retry_after_s))} s" if retry_after_s else message


def _unqualified(exc: RejectedError) -> RejectedError:
    """Limit errors name ``limits.time_limit``; the tool's argument is plain ``time_limit``."""
    argument = _LIMIT_ARGUMENT_OF.get(exc.field or "")
    return exc if argument is None else exc.for_field(argument)


def _label(event: OutputEvent) -> str:
    """How a progress message says where its chunk came from: nothing for the program's stdout."""
    parts = [event.stage] if event.stage != "run" else []
    if event.stream == "stderr":
        parts.append("stderr")
    return f"[{' '.join(parts)}] " if parts else ""


def _result_text(result: Result) -> str:
    head = f"status: {result.status.value}"
    if result.cancelled:  # a person reads this: say what happened, not only which signal did it
        head = f"status: cancelled ({result.status.value})"
    if result.exit_code is not None:
        head += f" (exit code {result.exit_code})"
    if result.signal is not None:
        head += f" (signal {result.signal})"
    head += (
        f" · wall {result.wall_time:.3f} s · cpu {result.cpu_time:.3f} s · memory {result.memory_peak / _MIB:.1f} MB"
    )
    parts = [head]
    if result.message:
        parts.append(f"message: {result.message}")
    for title, data in (
        ("compile output", result.compile_output),
        ("stdout", result.stdout),
        ("stderr", result.stderr),
    ):
        if data:
            text = data.decode("utf-8", "replace").rstrip("\n")
            parts.append(f"--- {title} ---\n{text}")
    if result.truncated:
        parts.append("(output truncated at the output limit)")
    return "\n".join(parts)


# ---------------------------------------------------------------- arguments


def _check_names(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """No argument the tool does not know, and every required one given: checked before any tool runs."""
    allowed = list(schema["properties"])
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) or "none"
        raise RejectedError(f"{unknown[0]}: unknown argument (expected: {expected})", field=unknown[0])
    for name in schema["required"]:
        if arguments.get(name) is None:
            raise RejectedError(f"{name}: required", field=name)


def _string(arguments: Mapping[str, Any], name: str, *, empty_ok: bool = False) -> str:
    value = arguments.get(name)
    if not isinstance(value, str):
        raise RejectedError(f"{name}: must be a string", field=name)
    if not value and not empty_ok:
        raise RejectedError(f"{name}: must not be empty", field=name)
    return value
