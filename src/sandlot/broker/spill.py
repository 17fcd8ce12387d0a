"""Finished tasks' events on disk: how the embedded broker keeps results within a memory budget.

The memory broker keeps every finished task's events (all its output, the
result, fetched files) for ``result_ttl_s``, so late readers can replay them. At
a busy server's rates that is gigabytes, most of it results whose synchronous
caller already has them. Past ``result_memory_bytes`` the oldest finished tasks
are written here, one JSON-lines file per task (the events in the broker's own
lossless wire form), and dropped from memory; reading one back is a file read.
Each broker spills into a fresh directory of its own under ``<state_dir>/results``
(several servers or test runs may share a state dir), holding a flock on it for
its lifetime; it removes the directory when it closes, and a broker starting
removes any sibling whose lock nobody holds (a process that died). Results never
outlive the process that ran them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from sandlot.broker import event_from_wire, event_to_wire
from sandlot.models import Event, ExitEvent, OutputEvent, Result, StageResultEvent, TestResultEvent

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LOCK = ".lock"


def payload_bytes(events: list[Event]) -> int:
    """The bytes of output a task's events hold (what retention costs; the small fields are not counted)."""
    total = 0
    for event in events:
        if isinstance(event, OutputEvent):
            total += len(event.data)
        elif isinstance(event, (StageResultEvent, TestResultEvent)):
            total += _result_bytes(event.result)
        elif isinstance(event, ExitEvent):
            total += _result_bytes(event.result) + sum(_result_bytes(r) for _, r in event.stages)
            total += sum(len(content) for _, content in event.files)
    return total


def _result_bytes(result: Result) -> int:
    return len(result.stdout) + len(result.stderr) + len(result.compile_output)


class SpillDir:
    """One file of events per spilled task; every call is blocking file I/O (run it in a thread)."""

    def __init__(self, parent: Path) -> None:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _sweep_dead(parent)
        self.path = Path(tempfile.mkdtemp(dir=parent))
        self._lock = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)

    def can_hold(self, task_id: str) -> bool:
        return _SAFE_ID.fullmatch(task_id) is not None

    def write(self, task_id: str, events: list[Event]) -> None:
        final = self._file(task_id)
        partial = final.with_suffix(".partial")
        try:
            with open(partial, "w", encoding="utf-8") as out:
                for event in events:
                    out.write(json.dumps(event_to_wire(event), separators=(",", ":")))
                    out.write("\n")
            os.replace(partial, final)  # a reader sees the whole file or none
        except OSError:
            partial.unlink(missing_ok=True)
            raise

    def read(self, task_id: str) -> list[Event] | None:
        """The task's events, or None if its file is gone."""
        try:
            with open(self._file(task_id), encoding="utf-8") as src:
                return [event_from_wire(json.loads(line)) for line in src]
        except FileNotFoundError:
            return None

    def remove(self, task_id: str) -> None:
        self._file(task_id).unlink(missing_ok=True)

    def _file(self, task_id: str) -> Path:
        return self.path / f"{task_id}.jsonl"


def _sweep_dead(parent: Path) -> None:
    """Remove the spill directories of brokers that are gone (their lock is free)."""
    for child in parent.iterdir():
        try:
            fd = os.open(child / _LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not ours, or being created this instant: its owner will lock it
        try:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(child, ignore_errors=True)
        finally:
            os.close(fd)
