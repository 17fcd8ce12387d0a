"""``GET /api/v1/ws``: an interactive run over a WebSocket.

The client's first message starts the run; later ones steer it::

    -> {"type": "run", "language": "python", "code": "...", ...}   (the JSON request's fields)
       or {"type": "judge", ...}: judge mode (POST /api/v1/judge's fields): <- {"type": "test_result", ...} each
    -> {"type": "stdin", "data": "text"}  {"type": "close_stdin"}  {"type": "signal", "signal": "SIGINT" | 2}
    <- {"type": "stage", "stage": "run"}
    <- {"type": "stdout" | "stderr", "data": "...", "stage": "run"}
    <- {"type": "stage_result", "stage": "compile", "result": {...}}
    <- {"type": "exit", "result": {...}}                            then a normal close (1000)

stdin is a stream: a non-empty ``stdin`` in the run message is sent first and
then closed (the program sees EOF after it, as with the JSON routes); without
one, stdin stays open for ``stdin`` messages until ``close_stdin``. A bad
message is answered ``{"type": "error", "error": {...}}`` and a close with 1008
(1013 when the server is busy); the run it belonged to is cancelled, as it is
when the client disconnects: nobody would see its output. A connection sends at
most ``ws_max_stdin_bytes`` of stdin in all (the program need not read it, and
until it does it is held in memory): past that, an error and a close with 1009.

Two tasks relay while the run lasts: events to the client, the client's
messages to the broker as control messages. Whichever ends first decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from sandlot.api.common.asgi import core_of, finish_quietly
from sandlot.api.common.auth import Principal, bearer_token
from sandlot.api.common.core import Core
from sandlot.api.common.parsing import parse_json
from sandlot.api.common.render import OutputDecoder
from sandlot.api.http.errors import MAPPED_ERRORS, ApiError, as_api_error
from sandlot.api.http.render import ws_message
from sandlot.broker import Control, TaskSpec
from sandlot.errors import RejectedError
from sandlot.judge.parse import parse_judge
from sandlot.models import ExitEvent
from sandlot.requests import parse_execution

_ALLOWED_SIGNALS = frozenset(
    {signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
)
_CLOSE_NORMAL = 1000
_CLOSE_POLICY = 1008
_CLOSE_TOO_BIG = 1009
_CLOSE_INTERNAL = 1011
_CLOSE_TRY_LATER = 1013
_CONTROL_COST_BYTES = 256  # what a queued control costs at least, whatever it carries

router = APIRouter()
_log = logging.getLogger(__name__)


@router.websocket("/api/v1/ws")
async def interactive(websocket: WebSocket) -> None:
    core = await core_of(websocket)
    await websocket.accept()
    try:
        principal = core.auth.authenticate(bearer_token(websocket.headers.get("authorization")))
        spec = await _start(websocket, core, principal)
    except WebSocketDisconnect:
        return
    except MAPPED_ERRORS as exc:
        await _refuse(websocket, as_api_error(exc))
        return
    await _relay(websocket, core, spec)


async def _start(websocket: WebSocket, core: Core, principal: Principal) -> TaskSpec:
    data = await _receive_json(websocket, core.service.server.max_body_bytes)
    kind = data.pop("type", None)
    if kind == "judge":  # judge mode: a test_result message per test as it finishes, then exit
        return await core.submit(principal, parse_judge(data, tenant=principal.tenant), waits=True)
    if kind != "run":
        raise RejectedError(
            'type: the first message must be {"type": "run", ...} or {"type": "judge", ...}', field="type"
        )
    spec = parse_execution(data, tenant=principal.tenant, interactive=True)
    spec = await core.submit(principal, spec, waits=True)
    if spec.stdin:
        broker = core.service.broker
        await broker.control(spec.tenant, spec.id, Control("stdin", spec.stdin))
        await broker.control(spec.tenant, spec.id, Control("close_stdin"))
    return spec


async def _relay(websocket: WebSocket, core: Core, spec: TaskSpec) -> None:
    outbox = asyncio.create_task(_send_events(websocket, core, spec))
    inbox = asyncio.create_task(_follow_client(websocket, core, spec))
    try:
        await asyncio.wait({outbox, inbox}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        delivered = outbox.done() and not outbox.cancelled() and outbox.exception() is None
        await finish_quietly(inbox)
        if not delivered:  # the client left or broke the protocol (or we are shutting down): nobody will read it
            await finish_quietly(outbox)
            await core.cancel(spec.tenant, spec.id)
    if delivered:
        with contextlib.suppress(RuntimeError, OSError):  # the client may have closed first
            await websocket.close(_CLOSE_NORMAL)
        return
    _log_unexpected(None if outbox.cancelled() else outbox.exception())
    error = None if inbox.cancelled() else inbox.exception()
    if error is not None:
        _log_unexpected(error)
        await _refuse(websocket, as_api_error(error))


def _log_unexpected(error: BaseException | None) -> None:
    """A client going away or breaking the protocol is routine; anything else is our bug."""
    if error is not None and not isinstance(error, (*MAPPED_ERRORS, WebSocketDisconnect, OSError, RuntimeError)):
        _log.error("WebSocket relay failed", exc_info=error)


async def _send_events(websocket: WebSocket, core: Core, spec: TaskSpec) -> None:
    decoder = OutputDecoder()
    async for event in core.events(spec.tenant, spec.id):
        if isinstance(event, ExitEvent):
            for stage, stream, text in decoder.flush():
                await websocket.send_json({"type": stream, "data": text, "stage": stage})
        await websocket.send_json(ws_message(event, decoder))


async def _follow_client(websocket: WebSocket, core: Core, spec: TaskSpec) -> None:
    """Relay the client's messages as controls; returns when it disconnects, raises on a bad one.

    Every control waits in the broker and the worker until the program takes it,
    and a program need never read its stdin: so one connection may send at most
    ``ws_max_stdin_bytes`` in all (stdin data, each message counted as at least
    ``_CONTROL_COST_BYTES``). Past it the connection is refused (1009) and its run cancelled.
    """
    broker = core.service.broker
    budget = core.service.server.ws_max_stdin_bytes - len(spec.stdin)
    while True:
        try:
            data = await _receive_json(websocket, core.service.server.max_body_bytes)
        except WebSocketDisconnect:
            return
        control = _control(data)
        budget -= max(len(control.data), _CONTROL_COST_BYTES)
        if budget < 0:
            limit = core.service.server.ws_max_stdin_bytes
            raise ApiError(413, "payload_too_large", f"stdin: over {limit} bytes on this connection", field="data")
        await broker.control(spec.tenant, spec.id, control)


def _control(data: dict[str, Any]) -> Control:
    kind = data.get("type")
    if kind == "stdin":
        text = data.get("data")
        if not isinstance(text, str):
            raise RejectedError("data: must be a string", field="data")
        return Control("stdin", text.encode())
    if kind == "close_stdin":
        return Control("close_stdin")
    if kind == "signal":
        return Control("signal", signal=_signal_number(data.get("signal")))
    raise RejectedError("type: must be stdin, close_stdin or signal", field="type")


def _signal_number(value: object) -> int:
    try:
        if isinstance(value, str):
            number = signal.Signals[value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()]
        elif isinstance(value, int) and not isinstance(value, bool):
            number = signal.Signals(value)
        else:
            raise ValueError(value)
    except (KeyError, ValueError):
        number = None
    if number not in _ALLOWED_SIGNALS:
        names = ", ".join(sorted(s.name for s in _ALLOWED_SIGNALS))
        raise RejectedError(f"signal: must be one of {names} (or its number)", field="signal")
    return int(number)


async def _receive_json(websocket: WebSocket, max_bytes: int) -> dict[str, Any]:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(int(message.get("code", 1000)))
    text = message.get("text")
    if text is None:
        raise RejectedError("message: must be a JSON text frame", field="message")
    if len(text) > max_bytes:
        raise ApiError(413, "payload_too_large", f"message: over {max_bytes} bytes", field="message")
    data = parse_json(text.encode(), field="message")
    if not isinstance(data, dict):
        raise RejectedError("message: must be a JSON object", field="message")
    return data


async def _refuse(websocket: WebSocket, error: ApiError) -> None:
    """Say what was wrong, then close with the matching code."""
    code = {413: _CLOSE_TOO_BIG, 429: _CLOSE_TRY_LATER, 503: _CLOSE_TRY_LATER}.get(error.status, _CLOSE_POLICY)
    if error.status >= 500 and error.status != 503:
        code = _CLOSE_INTERNAL
    try:
        await websocket.send_json({"type": "error", "error": error.body()["error"]})
        await websocket.close(code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client is gone already
