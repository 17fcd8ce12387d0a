"""Following a task's Server-Sent Events: the parser, and what each event means across reconnects.

``SseParser`` takes the stream's lines one at a time (sync or async reading alike) as the HTML
standard parses them; ``Follow`` turns events into Outputs and the final Result, remembers the last
event id for a reconnect (``Last-Event-ID``), and gives up after ``MAX_RECONNECTS`` broken streams.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sandlot_client._errors import Unavailable
from sandlot_client._types import Output, Result
from sandlot_client._wire import OutputCallback, decode, output, result

MAX_RECONNECTS = 3  # event streams broken before the result, per wait


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: its type, its data lines joined, and the last event id seen so far."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    """Server-Sent Events from a stream's lines, one ``feed`` per line, as the HTML standard parses them.

    ``field: value`` (one space after the colon dropped), ``data`` lines joined with newlines, ``:``
    lines are comments (keep-alives), an event without data is not dispatched, and the last id
    persists across events. An event cut off by the end of the stream is never returned.
    """

    def __init__(self) -> None:
        self._kind = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            event = SseEvent(self._kind or "message", "\n".join(self._data), self.last_id) if self._data else None
            self._kind, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def parse_sse(lines: Iterable[str]) -> list[SseEvent]:
    """Every complete event of ``lines`` (for tests and small streams)."""
    parser = SseParser()
    return [event for line in lines if (event := parser.feed(line)) is not None]


class StreamBroken(Unavailable):
    """An event stream ended or failed before the result: worth reconnecting with Last-Event-ID."""


class Follow:
    """One task followed to its result across reconnects: what to do with each event of the stream."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.last_id: str | None = None
        self.broken = 0

    def event(self, event: SseEvent) -> Result | Output | None:
        """The Result at ``exit``, an Output, or None for the other events (stage, notice, ...)."""
        self.last_id = event.id if event.id is not None else self.last_id
        if event.event == "exit":
            return result(decode(event.data), self.task_id)
        if event.event == "output":
            return output(decode(event.data))
        if event.event == "error":  # the server lost its broker mid-stream; it says so instead of cutting
            raise StreamBroken(f"the event stream of task {self.task_id} broke: {event.data}")
        return None

    def broke(self, failure: StreamBroken | None) -> None:
        """A stream ended before the exit event: reconnect, unless that has happened too often."""
        self.broken += 1
        if self.broken > MAX_RECONNECTS:
            raise failure or StreamBroken(f"the event stream of task {self.task_id} ended before its result")


def output_callback(
    piece: Output, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
) -> OutputCallback | None:
    """Which callback gets a piece: the program's stdout goes to on_stdout; its stderr and everything a
    compiler or command printed (either stream) to on_stderr, as ``sandlot run`` shows them."""
    return on_stdout if piece.stream == "stdout" and piece.stage == "run" else on_stderr
