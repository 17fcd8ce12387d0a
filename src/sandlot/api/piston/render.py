"""The Piston door's answers: a run's events as Piston's ``{language, version, run, compile?}``, and its errors.

Each stage's output is decoded once (``OutputDecoder``), split into stdout,
stderr and both interleaved as read. Our status model as Piston's two-letter
``status`` is in the table below; see ``routes`` for the mapping's rules.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, Response

from sandlot.api.common.render import OutputDecoder
from sandlot.models import Event, ExitEvent, OutputEvent, Result, Status, StreamName

MS_PER_S = 1000
_STATUS: dict[Status, str | None] = {
    Status.OK: None,
    Status.RUNTIME_ERROR: "RE",
    Status.SIGNALED: "SG",
    Status.TIMEOUT: "TO",
    Status.MEMORY_LIMIT: "SG",
}
_KILLED = {"TO", "OL", "EL"}


@dataclass
class _StageOutput:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # both streams, in the order they were read
    last_stream: StreamName | None = None  # the stream written when the output cap was hit

    def add(self, stream: StreamName, text: str) -> None:
        (self.stdout if stream == "stdout" else self.stderr).append(text)
        self.output.append(text)


def _stage_outputs(events: Sequence[Event]) -> dict[str, _StageOutput]:
    decoder = OutputDecoder()
    stages: dict[str, _StageOutput] = {}
    for event in events:
        if isinstance(event, OutputEvent) and event.data:
            stage = stages.setdefault(event.stage, _StageOutput())
            stage.add(event.stream, decoder.decode(event))
            stage.last_stream = event.stream
    for name, stream, text in decoder.flush():
        stages.setdefault(name, _StageOutput()).add(stream, text)
    return stages


def render(language: str, version: str, events: Sequence[Event]) -> Response:
    """Piston's answer for a task's events through its exit event."""
    exit_event = events[-1]
    assert isinstance(exit_event, ExitEvent)
    result = exit_event.result
    if result.status is Status.REJECTED:  # noticed by the worker (e.g. two files with one name)
        return message(400, result.message)
    outputs = _stage_outputs(events)
    body: dict[str, Any] = {"language": language, "version": version}
    compiled = dict(exit_event.stages).get("compile")
    if compiled is not None:
        body["compile"] = _stage(compiled, outputs.get("compile", _StageOutput()))
    if compiled is not None and compiled.status is not Status.OK:
        body["run"] = body["compile"]  # what Piston answers when the run never started
        failed = compiled
    else:
        body["run"] = _stage(result, outputs.get("run", _StageOutput()))
        failed = result
    return JSONResponse(body, status_code=500 if failed.status is Status.INTERNAL_ERROR else 200)


def _stage(result: Result, output: _StageOutput) -> dict[str, Any]:
    if result.status is Status.OUTPUT_LIMIT:
        status: str | None = "EL" if output.last_stream == "stderr" else "OL"
    else:
        status = _STATUS.get(result.status, "XX")
    killed = status in _KILLED or result.status is Status.MEMORY_LIMIT
    signal_name = "SIGKILL" if killed else _signal_name(result.signal)
    return {
        "stdout": "".join(output.stdout),
        "stderr": "".join(output.stderr),
        "output": "".join(output.output),
        "code": None if killed or result.signal is not None else result.exit_code,
        "signal": signal_name,
        "message": result.message or None,
        "status": status,
        "cpu_time": round(result.cpu_time * MS_PER_S),
        "wall_time": round(result.wall_time * MS_PER_S),
        "memory": result.memory_peak,
    }


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def message(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    """Piston's error shape: ``{"message": ...}``."""
    return JSONResponse({"message": text}, status_code=status, headers=headers)
