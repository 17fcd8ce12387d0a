"""The HTTP door's renderings of the shared event stream: SSE frames and their JSON payloads, WebSocket messages.

The door-neutral part (decoding output, a task's result as a dict) is ``api.common.render``.
"""

from __future__ import annotations

import json
from typing import Any

from sandlot.api.common.render import OutputDecoder, exit_body
from sandlot.judge.model import render_test_result
from sandlot.models import Event, NoticeEvent, OutputEvent, StageEvent, StageResultEvent, TestResultEvent

SSE_KEEPALIVE = b": keep-alive\n\n"  # a comment line: clients ignore it, proxies see traffic


def event_data(event: Event, decoder: OutputDecoder) -> dict[str, Any]:
    """The JSON payload of one event, as the SSE stream carries it."""
    if isinstance(event, StageEvent):
        return {"stage": event.stage, "time": event.time}
    if isinstance(event, OutputEvent):
        return {"stream": event.stream, "stage": event.stage, "data": decoder.decode(event), "time": event.time}
    if isinstance(event, StageResultEvent):
        return {"stage": event.stage, "result": event.result.to_dict(), "time": event.time}
    if isinstance(event, NoticeEvent):
        return {"code": event.code, "message": event.message, "time": event.time}
    if isinstance(event, TestResultEvent):
        return {**render_test_result(event), "time": event.time}
    return {**exit_body(event), "time": event.time}


def ws_message(event: Event, decoder: OutputDecoder) -> dict[str, Any]:
    """The WebSocket message of one event."""
    if isinstance(event, StageEvent):
        return {"type": "stage", "stage": event.stage}
    if isinstance(event, OutputEvent):
        return {"type": event.stream, "data": decoder.decode(event), "stage": event.stage}
    if isinstance(event, StageResultEvent):
        return {"type": "stage_result", "stage": event.stage, "result": event.result.to_dict()}
    if isinstance(event, NoticeEvent):
        return {"type": "notice", "code": event.code, "message": event.message}
    if isinstance(event, TestResultEvent):
        return {"type": "test_result", **render_test_result(event)}
    return {"type": "exit", "result": exit_body(event)}


def sse_frame(kind: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One Server-Sent Event; JSON never contains a raw newline, so data is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
