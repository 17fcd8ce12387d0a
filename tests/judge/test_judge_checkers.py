"""The built-in checkers, testlib's exit codes, the summary and the request parsing: pure, no sandbox."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sandlot.broker import TaskSpec, event_from_wire, event_to_wire
from sandlot.engine import Engine
from sandlot.errors import RejectedError
from sandlot.judge.checkers import check_builtin, parse_builtin, verdict_of_exit, verdict_of_run
from sandlot.judge.model import JudgeSpec, Program, Verdict, summarize
from sandlot.judge.parse import parse_judge
from sandlot.judge.validate import prepare_judge
from sandlot.languages import LanguageRegistry
from sandlot.models import Result, Status, TestResultEvent
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("checker", "output", "expected", "verdict"),
    [
        ("exact", b"3\n", b"3\n", Verdict.ACCEPTED),
        ("exact", b"3", b"3\n", Verdict.PRESENTATION_ERROR),
        ("exact", b"4\n", b"3\n", Verdict.WRONG_ANSWER),
        ("lines", b"1 2  \r\n3\n\n\n", b"1 2\n3\n", Verdict.ACCEPTED),
        ("lines", b"1\n2\n", b"1 2\n", Verdict.PRESENTATION_ERROR),
        ("lines", b"1 3\n", b"1 2\n", Verdict.WRONG_ANSWER),
        ("tokens", b"1\n2\t3 ", b"1 2 3\n", Verdict.ACCEPTED),
        ("tokens", b"1 2", b"1 2 3", Verdict.WRONG_ANSWER),
        ("float:1e-6", b"0.3333333 2\n", b"0.333333333 2\n", Verdict.ACCEPTED),
        ("float:1e-6", b"1000000.5\n", b"1000000.0\n", Verdict.ACCEPTED),  # relative error 5e-7
        ("float:1e-6", b"0.334\n", b"0.333333\n", Verdict.WRONG_ANSWER),
        ("float:1e-6", b"nan\n", b"0.5\n", Verdict.WRONG_ANSWER),
        ("float:1e-6", b"abc\n", b"abd\n", Verdict.WRONG_ANSWER),
        ("float:0", b"1.0\n", b"1\n", Verdict.ACCEPTED),
    ],
)
def test_builtin_checkers(checker: str, output: bytes, expected: bytes, verdict: Verdict) -> None:
    assert check_builtin(checker, output, expected).verdict is verdict


@pytest.mark.parametrize("name", ["float:", "float:x", "float:-1", "float:inf", "bytes", ""])
def test_an_unknown_checker_is_refused_by_name(name: str) -> None:
    with pytest.raises(RejectedError) as caught:
        parse_builtin(name)
    assert caught.value.field == "checker"


@pytest.mark.parametrize(
    ("code", "verdict"),
    [(0, Verdict.ACCEPTED), (1, Verdict.WRONG_ANSWER), (2, Verdict.PRESENTATION_ERROR), (3, Verdict.JUDGE_ERROR)],
)
def test_testlib_exit_codes(code: int, verdict: Verdict) -> None:
    checked = verdict_of_exit(code, "ok 5 numbers\n", "checker")
    assert checked.verdict is verdict
    assert "ok 5 numbers" in checked.comment


def test_a_run_that_failed_is_its_own_verdict_and_a_sandbox_failure_never_passes() -> None:
    assert verdict_of_run(Result(Status.OK)) is None
    assert verdict_of_run(Result(Status.TIMEOUT)) is Verdict.TIMEOUT
    assert verdict_of_run(Result(Status.SIGNALED)) is Verdict.RUNTIME_ERROR
    assert verdict_of_run(Result(Status.INTERNAL_ERROR)) is Verdict.JUDGE_ERROR


def _tested(number: int, verdict: Verdict, cpu: float = 0.1, memory: int = 10) -> TestResultEvent:
    return TestResultEvent(number, str(number), verdict.value, Result(Status.OK, cpu_time=cpu, memory_peak=memory))


def test_the_summary_is_the_first_failing_test_by_order_not_by_arrival() -> None:
    events = [
        _tested(3, Verdict.TIMEOUT, cpu=1.0),
        _tested(1, Verdict.ACCEPTED),
        _tested(2, Verdict.WRONG_ANSWER, memory=99),
    ]
    summary = summarize(events, 3)
    assert (summary.verdict, summary.passed, summary.first_failure) == (Verdict.WRONG_ANSWER, 1, 2)
    assert (summary.max_time, summary.max_memory) == (1.0, 99)


def test_missing_tests_are_never_accepted() -> None:
    assert summarize([_tested(1, Verdict.ACCEPTED)], 2).verdict is Verdict.JUDGE_ERROR


def test_a_judge_request_travels_as_json_unchanged() -> None:
    spec = parse_judge(
        {
            "language": "python",
            "code": "print(1)",
            "tests": [
                {"stdin": "AAE=", "encoding": "base64", "expected_output": "AQ==", "limits": {"time_limit": 2}},
                {"name": "big", "stdin": "x", "args": ["-v"]},
            ],
            "checker": {"language": "python", "code": "import sys"},
            "stop_on_first_failure": True,
        },
        tenant="t",
    )
    judge = JudgeSpec.from_json(spec.judge)
    assert judge == JudgeSpec.from_json(judge.to_json())
    assert judge.tests[0].stdin == b"\x00\x01" and judge.tests[0].expected_output == b"\x01"
    assert judge.tests[1].expected_output is None and judge.tests[1].args == ("-v",)
    assert judge.checker == Program("python", "import sys") and judge.stop_on_first_failure


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"language": "python", "code": "1", "tests": []}, "tests"),
        ({"language": "python", "code": "1"}, "tests"),
        ({"language": "python", "code": "1", "tests": [{"stdin": 1}]}, "tests[0].stdin"),
        ({"language": "python", "code": "1", "tests": [{"bogus": ""}]}, "tests[0].bogus"),
        ({"language": "python", "code": "1", "tests": [{}], "stdin": "x"}, "stdin"),
        ({"language": "python", "code": "1", "tests": [{}], "checker": "float:x"}, "checker"),
        ({"language": "python", "code": "1", "tests": [{}], "checker": {"language": "python"}}, "checker"),
        ({"language": "python", "code": "1", "tests": [{}], "interactor": {"language": "c", "code": ""}}, "interactor"),
        ({"language": "python", "code": "1", "tests": [{}], "stop_on_first_failure": "yes"}, "stop_on_first_failure"),
    ],
)
def test_bad_requests_name_their_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(RejectedError) as caught:
        parse_judge(body, tenant="t")
    assert caught.value.field == field


def test_a_test_too_large_is_refused_naming_the_limit() -> None:
    settings = dataclasses.replace(make_settings(), judge_max_test_bytes=8)
    engine = Engine(settings, LanguageRegistry.load(None))
    spec = parse_judge({"language": "python", "code": "1", "tests": [{"stdin": "123456789"}]}, tenant="t")
    with pytest.raises(RejectedError, match="judge_max_test_bytes is 8") as caught:
        prepare_judge(engine, spec)
    assert caught.value.field == "tests[0].stdin"


def test_a_judge_task_and_its_test_events_cross_a_broker_unchanged() -> None:
    """The Redis broker carries specs and events as JSON: judge mode's parts must survive it."""
    spec = dataclasses.replace(
        parse_judge({"language": "python", "code": "1", "tests": [{"expected_output": "1"}]}, tenant="t"),
        compile_once=True,
    )
    assert TaskSpec.from_json(spec.to_json()) == spec
    event = TestResultEvent(
        3, "three", "wrong_answer", Result(Status.OK, stdout=b"\xff", cpu_time=0.5), comment="no", seq=7, time=1.0
    )
    assert event_from_wire(json.loads(json.dumps(event_to_wire(event)))) == event
