"""The JSON task routes: synchronous run, asynchronous execute, task state, SSE events, cancel.

``POST /api/v1/run`` waits for the exit event while watching the connection:
a client that gives up has its task cancelled, so the box is not kept busy for
nobody. ``POST /api/v1/execute`` only queues; the task is then followed with
``GET /api/v1/tasks/{id}`` or its event stream, and outlives the request. It is
declared here but served by ``execute``, a raw ASGI route (the ingest path).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST, finish_quietly, race_disconnect, read_json
from sandlot.api.common.core import Core
from sandlot.api.common.render import OUTPUT_ENCODINGS, OutputDecoder, exit_body
from sandlot.api.http.door import Caller, CallerDep, LanguageQuery
from sandlot.api.http.errors import ApiError
from sandlot.api.http.render import SSE_KEEPALIVE, event_data, sse_frame
from sandlot.api.http.schemas import (
    AUTH,
    EXECUTION_EXAMPLE,
    EXECUTION_REQUEST_SCHEMA,
    RUN_REQUEST_SCHEMA,
    SUBMIT,
    Cancelled,
    Queued,
    RunAnswer,
    TaskStateBody,
    answers,
    json_body,
)
from sandlot.broker import TaskState
from sandlot.errors import BrokerUnavailable
from sandlot.models import Event, ExitEvent, OutputEvent, Status
from sandlot.requests import parse_execution

SSE_KEEPALIVE_INTERVAL_S = 15.0  # under the usual 60 s idle timeout of proxies

router = APIRouter(prefix="/api/v1", tags=["tasks"])

_JSON_OR_TEXT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EXECUTION_REQUEST_SCHEMA, "example": EXECUTION_EXAMPLE},
            "text/plain": {
                "schema": {
                    "type": "string",
                    "description": "the program itself: ?language= names it, else it is detected as POST /run "
                    "does (a Go package clause, a shebang, else Python). Any content type but JSON is read "
                    "this way, except a JSON object with a language or code field, which is a request "
                    "(what curl -d sends)",
                }
            },
        },
    }
}


@router.post(
    "/run",
    openapi_extra=json_body(RUN_REQUEST_SCHEMA, example=EXECUTION_EXAMPLE),
    response_model=None,
    responses={
        **answers(200, RunAnswer, *SUBMIT, what="The run ended (whether the program succeeded or not)"),
        500: {"model": RunAnswer, "description": "The sandbox failed (status internal_error), never the program"},
    },
    summary="Run and wait for the result",
)
async def run_sync(request: Request, caller: CallerDep) -> Response:
    data = await read_json(request)
    output_encoding = _output_encoding(data)
    spec = parse_execution(data, tenant=caller.tenant, default_language=_language_of_files(caller, data))
    spec = await caller.core.submit(caller.principal, spec, waits=True)
    finished, exit_event = await race_disconnect(request.receive, caller.core.wait_exit(spec.tenant, spec.id))
    if not finished:
        await caller.core.cancel(spec.tenant, spec.id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if exit_event is None:
        raise ApiError(404, "not_found", f"task {spec.id} vanished before it finished", field="task_id")
    result = exit_event.result
    if result.status is Status.REJECTED:
        raise ApiError(400, "rejected", result.message)
    status = 500 if result.status is Status.INTERNAL_ERROR else 200
    return JSONResponse({**exit_body(exit_event, output_encoding), "task_id": spec.id}, status_code=status)


@router.post(
    "/execute",
    status_code=202,
    openapi_extra=_JSON_OR_TEXT_BODY,
    summary="Queue an execution",
    response_model=None,
    responses=answers(202, Queued, *SUBMIT, what="Queued: follow it at /api/v1/tasks/{task_id}"),
)
async def execute(
    caller: CallerDep,
    language: LanguageQuery = None,
    idempotency: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    """Declared here for the OpenAPI document (and 405 on other methods); ``execute.ExecuteRoute``,
    a raw ASGI route in front of FastAPI, answers every POST to this path, so this body never runs."""
    raise RuntimeError("POST /api/v1/execute is served by execute.ExecuteRoute")


@router.get(
    "/tasks/{task_id}",
    response_model=None,
    responses=answers(200, TaskStateBody, *AUTH, 404, 503),
    summary="A task's state, and its result when done",
)
async def get_task(task_id: str, caller: CallerDep) -> dict[str, Any]:
    state = await _task(caller, task_id)
    body: dict[str, Any] = {"task_id": state.id, "status": state.status}
    if state.exit is not None:
        body["result"] = exit_body(state.exit)
    return body


@router.delete(
    "/tasks/{task_id}",
    response_model=None,
    responses=answers(200, Cancelled, *AUTH, 404, 409, 503),
    summary="Cancel a task (kills its run)",
)
async def cancel(task_id: str, caller: CallerDep) -> dict[str, Any]:
    state = await _task(caller, task_id)
    if state.status == "done" or not await caller.service.broker.cancel(caller.tenant, task_id):
        raise ApiError(409, "conflict", f"task {task_id} has already finished", field="task_id")
    return {"task_id": task_id, "cancelled": True}


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses=answers(
        200,
        None,
        *AUTH,
        404,
        503,
        media="text/event-stream",
        what="Events stage, output, stage_result, notice and exit; each data line is a JSON object",
    ),
    summary="The task's events as Server-Sent Events, from the start, then live",
)
async def events(
    task_id: str,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    await _task(caller, task_id)
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    stream = _sse(caller.core, caller.tenant, task_id, after)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a live stream
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# ----------------------------------------------------------------- helpers


def _output_encoding(data: Any) -> str:
    """Take the run route's own ``output_encoding`` field out of the request (parse_execution knows the rest)."""
    if not isinstance(data, dict):
        return "utf8"  # parse_execution says what is wrong with the body
    encoding = data.pop("output_encoding", "utf8")
    if encoding not in OUTPUT_ENCODINGS:
        raise ApiError(400, "rejected", "output_encoding: must be utf8 or base64", field="output_encoding")
    return str(encoding)


def _language_of_files(caller: Caller, data: Any) -> str | None:
    """With files and no language, the language of the main file's extension (as ``sandlot run`` picks it).

    The main file as parse_execution picks it: the one named main (any extension), else the first.
    """
    if not isinstance(data, dict) or data.get("language") is not None or not isinstance(data.get("files"), list):
        return None
    names: list[str] = [f["name"] for f in data["files"] if isinstance(f, dict) and isinstance(f.get("name"), str)]
    if not names or len(names) != len(data["files"]):
        return None  # parse_execution says what is wrong with the files
    main = next((name for name in names if name.rsplit(".", 1)[0] == "main"), names[0])
    return caller.service.languages.for_file(main).name


async def _task(caller: Caller, task_id: str) -> TaskState:
    state = await caller.service.broker.get(caller.tenant, task_id)
    if state is None:  # unknown, expired, or another tenant's: all look the same
        raise ApiError(404, "not_found", f"task {task_id} not found", field="task_id")
    return state


async def _sse(core: Core, tenant: str, task_id: str, after: int) -> AsyncIterator[bytes]:
    decoder = OutputDecoder()
    last_id = 0
    try:
        async for event in _with_keepalives(core.events(tenant, task_id)):
            if event is None:
                yield SSE_KEEPALIVE
                continue
            if not isinstance(event, OutputEvent):
                for stage, stream, text in decoder.flush():
                    yield sse_frame("output", {"stream": stream, "stage": stage, "data": text})
            # Exit events built by the worker itself (a sandbox failure) carry seq 0; ids must still grow.
            last_id = event.seq if event.seq > last_id else last_id + 1
            data = event_data(event, decoder)
            if last_id > after or isinstance(event, ExitEvent):
                yield sse_frame(event.kind, data, last_id)
    except BrokerUnavailable as exc:
        # The response has started: no status code can say it now. End the stream with an error
        # frame instead of a cut connection; the client reconnects with Last-Event-ID when it can.
        body = {"error": {"code": "unavailable", "message": str(exc), "field": None}, "retry_after_s": 1}
        yield sse_frame("error", body, None)


async def _with_keepalives(events: AsyncIterator[Event]) -> AsyncIterator[Event | None]:
    """The events, with a None whenever none came for SSE_KEEPALIVE_INTERVAL_S."""
    # A forwarding task owns the subscription: timing out a queue read is safe, timing out
    # the subscription's own __anext__ would kill it.
    queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the subscription ended

    async def forward() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        finally:
            queue.put_nowait(None)

    forwarder = asyncio.create_task(forward())
    try:
        while True:
            try:
                async with asyncio.timeout(SSE_KEEPALIVE_INTERVAL_S):  # not wait_for: see pool.py
                    event = await queue.get()
            except TimeoutError:
                yield None
                continue
            if event is None:
                await forwarder  # raises what ended the subscription early, if anything
                return
            yield event
    finally:
        await finish_quietly(forwarder)
