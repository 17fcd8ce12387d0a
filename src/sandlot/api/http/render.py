"""Rendering the shared event stream: JSON bodies, SSE frames, WebSocket messages, text.

Output arrives as byte chunks cut wherever the pipe read stopped, so a UTF-8
character can straddle two chunks. ``OutputDecoder`` keeps one incremental
decoder per (stage, stream): the split character comes out whole with the
second chunk, and bytes that are not UTF-8 become U+FFFD instead of breaking a
JSON or text body.
"""

from __future__ import annotations

import base64
import codecs
import json
from typing import Any

from sandlot.models import Event, ExitEvent, NoticeEvent, OutputEvent, StageEvent, StageResultEvent, StreamName

_Key = tuple[str, StreamName]
SSE_KEEPALIVE = b": keep-alive\n\n"  # a comment line: clients ignore it, proxies see traffic


def exit_body(exit_event: ExitEvent) -> dict[str, Any]:
    """The full result of a task: the Result, each stage's own Result, and the fetched files."""
    return {
        **exit_event.result.to_dict(),
        "stages": [{"name": name, **result.to_dict()} for name, result in exit_event.stages],
        "files": [{"name": name, "content": base64.b64encode(content).decode()} for name, content in exit_event.files],
    }


class OutputDecoder:
    """Bytes to text, per (stage, stream), keeping multi-byte characters split across chunks whole."""

    def __init__(self) -> None:
        self._decoders: dict[_Key, codecs.IncrementalDecoder] = {}

    def decode(self, event: OutputEvent) -> str:
        key = (event.stage, event.stream)
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(event.data)

    def flush(self) -> list[tuple[str, StreamName, str]]:
        """What is left of characters cut short when their stream ended (as U+FFFD)."""
        leftovers = [(stage, stream, d.decode(b"", final=True)) for (stage, stream), d in self._decoders.items()]
        self._decoders.clear()
        return [item for item in leftovers if item[2]]


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
    return {"type": "exit", "result": exit_body(event)}


def sse_frame(kind: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One Server-Sent Event; JSON never contains a raw newline, so data is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
