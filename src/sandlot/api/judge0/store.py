"""What the Judge0 door remembers of each submission, for as long as the broker keeps its task.

A TaskSpec carries what the engine needs; a Judge0 client also gets back what
only Judge0 has (expected_output, the limits in its units, callback_url, the
request's text fields) and its verdict needs expected_output. Those travel
with the task itself (``record_of``: the spec's ``door_data``), so any API node
sharing the broker can render the submission whole (``from_record``), whichever
node took it. The ``SubmissionStore`` is this process's cache of the
submissions it took, keyed by token and checked against the tenant, and the
source of ``GET /submissions`` (the caller's list, per process). A record goes
when the broker no longer knows its task (found out when it is looked up), when
it is older than the retention, or when the store is over its count or byte
budget (oldest first); the broker's copy still renders it.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from sandlot.api.judge0.submission import Submission
from sandlot.broker import TaskSpec

# What the spec already carries, and is not repeated in the record.
_FROM_SPEC = frozenset(
    {"token", "tenant", "language", "source_code", "stdin", "extra_files", "args", "created", "environment"}
)
_BYTES = ("expected_output", "additional_files")
_DOOR = "judge0"  # the record's key in the spec's door_data


def record_of(submission: Submission) -> str:
    """The Judge0-only half of a submission, as the JSON its task's spec carries (``door_data``)."""
    data: dict[str, Any] = {
        f.name: getattr(submission, f.name) for f in dataclasses.fields(Submission) if f.name not in _FROM_SPEC
    }
    for name in _BYTES:
        if data[name] is not None:
            data[name] = base64.b64encode(data[name]).decode()
    data["stdin_given"] = submission.stdin is not None  # Judge0 tells no stdin (null) from an empty one
    return json.dumps({_DOOR: data})


def from_record(spec: TaskSpec) -> Submission | None:
    """The submission a task's spec carries, or None (another door's task, or an unreadable record)."""
    try:
        data = dict(json.loads(spec.door_data)[_DOOR]) if spec.door_data else None
        if data is None:
            return None
        for name in _BYTES:
            if data[name] is not None:
                data[name] = base64.b64decode(data[name])
        stdin_given = bool(data.pop("stdin_given"))
        return Submission(
            token=spec.id,
            tenant=spec.tenant,
            language=spec.language,
            source_code=spec.files[0].content,
            stdin=spec.stdin if stdin_given else None,
            extra_files=spec.files[1:],
            args=spec.args,
            created=spec.created,
            environment=spec.environment,
            **data,
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return None


MAX_RECORDS = 100_000
MAX_RECORD_BYTES = 256 * 1024 * 1024


class SubmissionStore:
    def __init__(
        self,
        *,
        retention_s: float,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_RECORD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_s = retention_s
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._clock = clock
        self._records: collections.OrderedDict[str, Submission] = collections.OrderedDict()  # oldest first
        self._merged: dict[str, bytes] = {}  # redirect_stderr_to_stdout output, once the task is done
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, submission: Submission) -> None:
        self._records[submission.token] = submission
        self._bytes += submission.size
        self._evict()

    def get(self, tenant: str, token: str) -> Submission | None:
        record = self._records.get(token)
        return record if record is not None and record.tenant == tenant else None

    def forget(self, token: str) -> None:
        record = self._records.pop(token, None)
        if record is not None:
            self._bytes -= record.size
            self._bytes -= len(self._merged.pop(token, b""))

    def newest_first(self, tenant: str) -> list[Submission]:
        return [r for r in reversed(self._records.values()) if r.tenant == tenant]

    def merged_output(self, token: str) -> bytes | None:
        return self._merged.get(token)

    def keep_merged_output(self, token: str, output: bytes) -> None:
        if token in self._records and token not in self._merged:
            self._merged[token] = output
            self._bytes += len(output)
            self._evict()

    def _evict(self) -> None:
        horizon = self._clock() - self.retention_s
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.created >= horizon and len(self._records) <= self.max_records and self._bytes <= self.max_bytes:
                return
            self.forget(oldest.token)
