"""What the Judge0 door remembers of each submission, for as long as the broker keeps its task.

A TaskSpec carries what the engine needs; a Judge0 client also gets back what
only Judge0 has (expected_output, the limits in its units, callback_url, the
request's text fields) and its verdict needs expected_output. Those live here,
keyed by token and checked against the tenant. A record goes when the broker no
longer knows its task (found out when it is looked up), when it is older than
the retention, or when the store is over its count or byte budget (oldest
first). A task whose record is gone still renders, from the broker alone, but
without the request's fields and without a Wrong Answer verdict.

This is per process: with several API replicas in front of one broker, a
submission must be read through the replica that took it (see the door's notes).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from sandlot.api.judge0_submission import Submission

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
