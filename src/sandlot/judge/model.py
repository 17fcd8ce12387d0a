"""Judge mode's vocabulary: verdicts, the request (tests, checker, interactor) and the summary.

Nothing here does I/O. A ``JudgeSpec`` travels with its task as JSON
(``TaskSpec.judge``), so a worker on another host judges exactly what the door
parsed; per-test results travel as ``TestResultEvent``s, and ``summarize``
turns them into the one answer every door gives.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sandlot.config import LimitRequest
from sandlot.models import TestResultEvent


class Verdict(enum.StrEnum):
    """One test's outcome."""

    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    PRESENTATION_ERROR = "presentation_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    RUNTIME_ERROR = "runtime_error"
    OUTPUT_LIMIT = "output_limit"
    COMPILE_ERROR = "compile_error"
    JUDGE_ERROR = "judge_error"  # the judge could not decide (a checker crashed, a sandbox failed): never a pass
    SKIPPED = "skipped"  # not run: stop_on_first_failure after an earlier test failed


BUILTIN_CHECKERS = ("exact", "lines", "tokens")  # and "float:EPS"


@dataclass(frozen=True)
class Program:
    """A checker's or interactor's source: compiled once, then run in its own box per test."""

    language: str
    code: str


@dataclass(frozen=True)
class JudgeTest:
    stdin: bytes
    expected_output: bytes | None  # None: not given (a custom checker or an interactor may not need it)
    name: str = ""
    args: tuple[str, ...] = ()
    limits: LimitRequest | None = None  # None: the submission's limits


@dataclass(frozen=True)
class JudgeSpec:
    tests: tuple[JudgeTest, ...]
    checker: str | Program = "exact"  # a built-in's name ("float:1e-6" included), or a custom checker
    interactor: Program | None = None
    stop_on_first_failure: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "tests": [_test_json(t) for t in self.tests],
                "checker": self.checker if isinstance(self.checker, str) else dataclasses.asdict(self.checker),
                "interactor": dataclasses.asdict(self.interactor) if self.interactor else None,
                "stop_on_first_failure": self.stop_on_first_failure,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JudgeSpec:
        data = json.loads(text)
        checker = data.get("checker", "exact")
        interactor = data.get("interactor")
        return cls(
            tests=tuple(_test_from_json(t) for t in data["tests"]),
            checker=checker if isinstance(checker, str) else Program(**checker),
            interactor=Program(**interactor) if interactor else None,
            stop_on_first_failure=bool(data.get("stop_on_first_failure", False)),
        )


def _test_json(test: JudgeTest) -> dict[str, Any]:
    expected = test.expected_output
    return {
        "name": test.name,
        "stdin": base64.b64encode(test.stdin).decode(),
        "expected_output": None if expected is None else base64.b64encode(expected).decode(),
        "args": list(test.args),
        "limits": dataclasses.asdict(test.limits) if test.limits else None,
    }


def _test_from_json(data: dict[str, Any]) -> JudgeTest:
    expected = data.get("expected_output")
    return JudgeTest(
        name=str(data.get("name", "")),
        stdin=base64.b64decode(data.get("stdin", "")),
        expected_output=None if expected is None else base64.b64decode(expected),
        args=tuple(data.get("args", ())),
        limits=LimitRequest(**data["limits"]) if data.get("limits") else None,
    )


@dataclass(frozen=True)
class Summary:
    verdict: Verdict  # the first failing test's (by test order), else accepted
    passed: int
    total: int
    max_time: float  # seconds of CPU, the slowest test's
    max_memory: int  # bytes, the largest test's peak
    first_failure: int | None  # 1-based test number


def summarize(results: Iterable[TestResultEvent], total: int) -> Summary:
    """The submission's answer from its tests' results (in any order)."""
    ordered = sorted(results, key=lambda r: r.test)
    failing = [r for r in ordered if r.verdict != Verdict.ACCEPTED]
    judged = len(ordered)
    verdict = Verdict(failing[0].verdict) if failing else Verdict.ACCEPTED
    if judged < total and not failing:
        verdict = Verdict.JUDGE_ERROR  # tests went missing: never an accepted
    return Summary(
        verdict=verdict,
        passed=sum(1 for r in ordered if r.verdict == Verdict.ACCEPTED),
        total=total,
        max_time=max((r.result.cpu_time for r in ordered), default=0.0),
        max_memory=max((r.result.memory_peak for r in ordered), default=0),
        first_failure=failing[0].test if failing else None,
    )


def summary_message(summary: Summary) -> str:
    where = f" (first failure: test {summary.first_failure})" if summary.first_failure else ""
    return f"{summary.verdict.value}: {summary.passed}/{summary.total} tests passed{where}"


def render_test_result(event: TestResultEvent, *, with_output: bool = False) -> dict[str, Any]:
    """One test's result as the JSON doors render it."""
    result = event.result
    body: dict[str, Any] = {
        "test": event.test,
        "name": event.name,
        "verdict": event.verdict,
        "time": round(result.cpu_time, 6),
        "wall_time": round(result.wall_time, 6),
        "memory": result.memory_peak,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "comment": event.comment,
    }
    if with_output:
        body["stdout"] = result.stdout.decode("utf-8", "replace")
        body["stderr"] = result.stderr.decode("utf-8", "replace")
    return body


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "verdict": summary.verdict.value,
        "passed": summary.passed,
        "total": summary.total,
        "max_time": round(summary.max_time, 6),
        "max_memory": summary.max_memory,
        "first_failure": summary.first_failure,
    }
