"""Rendering the shared event stream, door-neutral: output bytes as text, a task's result as a dict.

Output arrives as byte chunks cut wherever the pipe read stopped, so a UTF-8
character can straddle two chunks. ``OutputDecoder`` keeps one incremental
decoder per (stage, stream): the split character comes out whole with the
second chunk, and bytes that are not UTF-8 become U+FFFD instead of breaking a
JSON or text body. Each door renders these in its own format (``api.http.render``
for JSON, SSE and WebSocket messages; the Piston and MCP doors their own).
"""

from __future__ import annotations

import base64
import codecs
from typing import Any

from sandlot.models import ExitEvent, OutputEvent, Result, StreamName

_Key = tuple[str, StreamName]


OUTPUT_ENCODINGS = ("utf8", "base64")
_OUTPUT_FIELDS = ("stdout", "stderr", "compile_output")


def _result_dict(result: Result, output_encoding: str) -> dict[str, Any]:
    """``Result.to_dict``; with base64, the output fields carry the exact bytes (no U+FFFD)."""
    body = result.to_dict()
    if output_encoding == "base64":
        for name in _OUTPUT_FIELDS:
            body[name] = base64.b64encode(getattr(result, name)).decode()
    return body


def exit_body(exit_event: ExitEvent, output_encoding: str = "utf8") -> dict[str, Any]:
    """The full result of a task: the Result, each stage's own Result, and the fetched files.

    ``output_encoding`` "base64" gives stdout, stderr and compile_output as base64 of the
    program's bytes (a client that must reproduce them exactly: ``sandlot run``'s warm path).
    """
    return {
        **_result_dict(exit_event.result, output_encoding),
        "stages": [{"name": name, **_result_dict(result, output_encoding)} for name, result in exit_event.stages],
        "files": [{"name": name, "content": base64.b64encode(content).decode()} for name, content in exit_event.files],
        "value": exit_event.value,  # a stateful session's cell: its last expression's repr; else null
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
