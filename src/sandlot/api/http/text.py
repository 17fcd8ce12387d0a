"""``POST /run``: the Go code runner's text door. The body is the program; the answer is its output.

The language comes from ``?language=``, else from the source itself (see
``detect_language``); ``?environment=`` runs it in an environment instead of on
the host. stdout and stderr stream back interleaved as produced,
compile errors included, as ``text/plain; charset=utf-8``.

The status code is committed when the first byte is sent, so the door waits for
the task's first event before answering: a rejection or a sandbox failure known
by then is a 400/500 with one text line, a busy server a 429. After that the
answer is 200 and a failure of the program shows in its own output, followed
by one line saying how the run ended when it did not end well (the way
``go run`` prints ``exit status 1``). A client that hangs up cancels its run.
The ``X-Sandlot-Task-Id`` header names the task, for ``GET /api/v1/tasks/{id}``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST, race_disconnect
from sandlot.api.common.auth import Principal
from sandlot.api.common.core import Core
from sandlot.api.common.render import OutputDecoder
from sandlot.api.http.door import CallerDep, EnvironmentQuery, LanguageQuery, decode_code
from sandlot.api.http.errors import MAPPED_ERRORS, ApiError, as_api_error
from sandlot.api.http.schemas import AUTH, text_answers
from sandlot.errors import RejectedError
from sandlot.languages import LanguageRegistry
from sandlot.models import Event, ExitEvent, OutputEvent, Result, Status
from sandlot.requests import parse_execution

DEFAULT_LANGUAGE = "python"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
_SHEBANG = re.compile(r"#!\s*(\S+)(?:\s+(.*))?")
_VERSION_SUFFIX = re.compile(r"[\d.]+$")

router = APIRouter(tags=["text"])


@router.post(
    "/run",
    response_class=PlainTextResponse,
    openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}},
    responses=text_answers(
        200,
        text=(400, 404, 429, 500, 503),
        json=(*AUTH, 413),
        what="The program's output as it comes, then a line saying how the run ended if it did not end well",
    ),
    summary="Run the body as a program and stream its output as text",
)
async def run_text(
    request: Request,
    caller: CallerDep,
    language: LanguageQuery = None,
    environment: EnvironmentQuery = None,
) -> Response:
    try:
        code = decode_code(await request.body())
        name = language or detect_language(code, caller.service.languages)
        data = {"language": name, "code": code} | ({"environment": environment} if environment else {})
        spec = parse_execution(data, tenant=caller.tenant)
        spec = await caller.core.submit(caller.principal, spec, waits=True)
    except MAPPED_ERRORS as exc:
        return _error_text(as_api_error(exc))
    events = caller.core.events(spec.tenant, spec.id)
    connected, first = await race_disconnect(request.receive, anext(events, None))
    if not connected or first is None:  # the client left (or the task vanished) before the first event
        await events.aclose()
        await caller.core.cancel(spec.tenant, spec.id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(first, ExitEvent) and first.result.status in (Status.REJECTED, Status.INTERNAL_ERROR):
        await events.aclose()
        status = 400 if first.result.status is Status.REJECTED else 500
        return PlainTextResponse(f"{first.result.message}\n", status_code=status, media_type=TEXT_MEDIA_TYPE)
    stream = _stream(caller.core, caller.principal, spec.id, first, events)
    return StreamingResponse(stream, media_type=TEXT_MEDIA_TYPE, headers={"X-Sandlot-Task-Id": spec.id})


def detect_language(code: str, languages: LanguageRegistry) -> str:
    """go for a ``package`` clause, the interpreter of a shebang, else python.

    The first line that is neither blank nor a ``//`` comment decides (Go files
    often open with a licence comment; a shebang is always the first line).
    """
    for raw in _lines(code):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        if line.startswith("package "):
            return "go"
        match = _SHEBANG.match(line)
        if match is not None:
            return _interpreter_language(match.group(1), match.group(2) or "", languages)
        return DEFAULT_LANGUAGE
    return DEFAULT_LANGUAGE


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one by one: the first line usually decides, so a long body is never split whole."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _interpreter_language(program: str, rest: str, languages: LanguageRegistry) -> str:
    """``/bin/bash`` -> bash, ``/usr/bin/env python3`` -> python, ``env -S node --x`` -> javascript."""
    name = program.rsplit("/", 1)[-1]
    if name == "env":
        words = [w for w in rest.split() if not w.startswith("-")]
        name = words[0].rsplit("/", 1)[-1] if words else ""
    for candidate in (name, _VERSION_SUFFIX.sub("", name)):
        try:
            return languages.get(candidate).name
        except RejectedError:
            continue
    raise RejectedError(f"language: no offered language runs the shebang's {name!r}; use ?language=", field="language")


async def _stream(
    core: Core, principal: Principal, task_id: str, first: Event, events: AsyncGenerator[Event, None]
) -> AsyncIterator[bytes]:
    render = _TextRenderer()
    finished = isinstance(first, ExitEvent)
    try:
        if text := render(first):
            yield text.encode()
        while not finished:
            event = await anext(events, None)
            if event is None:  # the task's record expired under us
                return
            finished = isinstance(event, ExitEvent)
            if text := render(event):
                yield text.encode()
    finally:
        await events.aclose()
        if not finished:  # the client hung up mid-run
            await core.cancel(principal.tenant, task_id)


class _TextRenderer:
    """Output as text, then the ending line on a line of its own."""

    def __init__(self) -> None:
        self._decoder = OutputDecoder()
        self._at_line_start = True

    def __call__(self, event: Event) -> str:
        if isinstance(event, OutputEvent):
            text = self._decoder.decode(event)
        elif isinstance(event, ExitEvent):
            text = "".join(left for _, _, left in self._decoder.flush())
            ending = _ending(event.result)
            if ending:
                ends_a_line = text.endswith("\n") if text else self._at_line_start
                text += ending if ends_a_line else "\n" + ending
        else:
            return ""
        if text:
            self._at_line_start = text.endswith("\n")
        return text


def _ending(result: Result) -> str:
    """One line saying how the run ended, unless it ended well or the compiler already said it."""
    if result.status in (Status.OK, Status.COMPILE_ERROR):
        return ""
    if result.status is Status.RUNTIME_ERROR:
        return f"exit status {result.exit_code}\n"
    return f"[{result.status.value}] {result.message}".rstrip() + "\n"


def _error_text(error: ApiError) -> Response:
    return PlainTextResponse(f"{error.message}\n", status_code=error.status, headers=error.headers())
