"""The host's side of the REPL driver's protocol (the driver's side: ``driver_python.py``).

A cell goes to the interpreter's stdin as ``<length>\\n<JSON>``. Its end comes back as
a marker on each of stdout and stderr, the stdout one followed by the cell's report
(JSON, one line). ``MarkerSplitter`` takes a stream's chunks as they come, gives
back the program's own bytes (holding back a tail that could be the start of a
marker split across two reads) and says when the marker passed.

The marker is random per interpreter: a program cannot print it by chance. A cell
that prints it on purpose only confuses its own session (the report's JSON is
checked; a bad one is a protocol failure that restarts the interpreter).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

_REPORT_MAX_BYTES = 1024 * 1024  # the value is capped at 64 Ki characters; its JSON escapes stay under this


class ProtocolError(Exception):
    """The interpreter said something the driver never says: restart it."""


def new_marker() -> bytes:
    return b"\x1esandlot-cell-end-" + secrets.token_hex(16).encode()


def cell_frame(code: str, stdin: str) -> bytes:
    body = json.dumps({"code": code, "stdin": stdin}).encode()
    return str(len(body)).encode() + b"\n" + body


@dataclass(frozen=True)
class CellReport:
    outcome: str  # ok | error | interrupted | exit
    value: str | None
    value_chars: int  # the repr's full length (``value`` is cut at the driver's cap)
    error: str  # the exception's name, or the exit code for "exit"

    @classmethod
    def parse(cls, line: bytes) -> CellReport:
        try:
            data = json.loads(line)
            value = data["value"]
            report = cls(
                str(data["outcome"]),
                None if value is None else str(value),
                int(data["value_chars"]),
                str(data["error"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"the interpreter's cell report is not valid: {line[:200]!r}") from exc
        if report.outcome not in ("ok", "error", "interrupted", "exit"):
            raise ProtocolError(f"unknown cell outcome {report.outcome!r}")
        return report


class MarkerSplitter:
    """One stream's bytes, split into the program's output and cell ends.

    ``with_report``: after the marker comes `` <JSON>\\n`` (stdout); else ``\\n`` (stderr).
    """

    def __init__(self, marker: bytes, *, with_report: bool) -> None:
        self._marker = marker
        self._with_report = with_report
        self._pending = bytearray()
        self._in_trailer = False  # past a marker, reading its trailer up to the newline

    def feed(self, data: bytes) -> list[bytes | CellReport | None]:
        """The program's bytes, and at each cell end a CellReport (stdout) or None (stderr), in order."""
        self._pending += data
        out: list[bytes | CellReport | None] = []
        while True:
            if self._in_trailer:
                end = self._pending.find(b"\n")
                if end < 0:
                    if len(self._pending) > _REPORT_MAX_BYTES:
                        raise ProtocolError("the interpreter's cell report has no end")
                    return out
                trailer = bytes(self._pending[:end])
                del self._pending[: end + 1]
                self._in_trailer = False
                if self._with_report:
                    out.append(CellReport.parse(trailer.removeprefix(b" ")))
                elif trailer:
                    raise ProtocolError("unexpected bytes after a cell's end on stderr")
                else:
                    out.append(None)
                continue
            at = self._pending.find(self._marker)
            if at >= 0:
                if at:
                    out.append(bytes(self._pending[:at]))
                del self._pending[: at + len(self._marker)]
                self._in_trailer = True
                continue
            keep = self._partial_tail()
            cut = len(self._pending) - keep
            if cut:
                out.append(bytes(self._pending[:cut]))
                del self._pending[:cut]
            return out

    def _partial_tail(self) -> int:
        """How many trailing bytes could begin a marker that the next read completes."""
        data = self._pending
        for size in range(min(len(self._marker) - 1, len(data)), 0, -1):
            if data.endswith(self._marker[:size]):
                return size
        return 0
