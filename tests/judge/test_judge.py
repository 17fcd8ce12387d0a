"""Judge mode end to end: POST /api/v1/judge on a real Service, real sandboxes, real compilers.

The count of compiles is read off every ``Box.run`` of the process (a spy that calls
through): a submission compiles once however many tests it has. Orders and verdicts are
asserted, never durations.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from sandlot.api.http.app import create_app
from sandlot.models import Status
from sandlot.pool import BoxPool
from sandlot.sandbox.box import Box
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, parse_sse, running_service, wait_done
from tests.judge import programs

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

_TIMEOUT_S = 600.0  # an HTTP client bound only: a judge of 20 tests on a loaded 2-core host
_FAILING = {"time_limit": 1, "wall_time_limit": 60, "memory_limit": 64}


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="service")
async def service_fixture() -> AsyncIterator[Service]:
    async with running_service(pool_size=4) as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="client")
async def client_fixture(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(service)) as client:
        yield client


def _sum_tests(count: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "stdin": f"{i} {i * 3}\n", "expected_output": f"{i * 4}\n"} for i in range(count)]


async def _judge(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/judge", json=body, timeout=_TIMEOUT_S)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _verdicts(answer: dict[str, Any]) -> list[str]:
    return [test["verdict"] for test in answer["tests"]]


@pytest.mark.parametrize(("language", "code"), [("cpp", programs.CPP_SUM), ("python", programs.PY_SUM)])
async def test_a_correct_solution_passes_20_tests_with_one_compile(
    client: httpx.AsyncClient, stages: list[str], language: str, code: str
) -> None:
    answer = await _judge(client, language=language, code=code, tests=_sum_tests(20))
    assert (answer["verdict"], answer["passed"], answer["total"]) == ("accepted", 20, 20)
    assert [t["test"] for t in answer["tests"]] == list(range(1, 21))
    assert answer["max_time"] > 0 and answer["max_memory"] > 0
    compiles = 1 if language == "cpp" else 0
    assert stages.count("compile") == compiles and stages.count("run") == 20


@pytest.mark.parametrize(("language", "code"), [("cpp", programs.CPP_SUM_WRONG), ("python", programs.PY_SUM_WRONG)])
async def test_a_wrong_solution_fails_exactly_the_test_it_gets_wrong(
    client: httpx.AsyncClient, language: str, code: str
) -> None:
    answer = await _judge(client, language=language, code=code, tests=_sum_tests(20))
    assert (answer["verdict"], answer["passed"], answer["first_failure"]) == ("wrong_answer", 19, 8)
    assert _verdicts(answer) == ["accepted"] * 7 + ["wrong_answer"] + ["accepted"] * 12


@pytest.mark.parametrize(
    ("checker", "output", "expected", "verdict"),
    [
        ("exact", "3", "3\n", "presentation_error"),
        ("lines", "1 2   \n3\n\n", "1 2\n3\n", "accepted"),
        ("tokens", "1\n2\n3", "1 2 3\n", "accepted"),
        ("float:1e-4", "0.33334", "0.333333\n", "accepted"),
        ("float:1e-6", "0.33334", "0.333333\n", "wrong_answer"),
    ],
)
async def test_each_builtin_checker(
    client: httpx.AsyncClient, checker: str, output: str, expected: str, verdict: str
) -> None:
    code = f"import sys\nsys.stdout.write({output!r})\n"
    answer = await _judge(client, language="python", code=code, checker=checker, tests=[{"expected_output": expected}])
    assert _verdicts(answer) == [verdict]


async def test_a_custom_checker_accepts_any_valid_answer(client: httpx.AsyncClient, stages: list[str]) -> None:
    checker = {"language": "python", "code": programs.PY_DIVISOR_CHECKER}
    tests = [{"stdin": f"{n}\n", "expected_output": f"{n // 2}\n"} for n in (12, 35, 49, 91)]  # other divisors
    good = await _judge(client, language="cpp", code=programs.CPP_SMALLEST_DIVISOR, checker=checker, tests=tests)
    assert _verdicts(good) == ["accepted"] * 4
    assert stages.count("compile") == 1  # the solution's; the Python checker has nothing to compile
    bad = await _judge(client, language="cpp", code=programs.CPP_NOT_A_DIVISOR, checker=checker, tests=tests)
    assert _verdicts(bad) == ["wrong_answer"] * 4
    assert bad["tests"][0]["comment"] == "12 is not a proper divisor of 12"


@pytest.mark.parametrize(
    ("checker_code", "why"),
    [
        (programs.PY_CRASHING_CHECKER, "the checker failed (exit code 7)"),
        (programs.PY_SLOW_CHECKER, "the checker failed: "),
    ],
)
async def test_a_checker_that_crashes_or_times_out_is_a_judge_error(
    client: httpx.AsyncClient, checker_code: str, why: str
) -> None:
    checker = {"language": "python", "code": checker_code}
    answer = await _judge(client, language="python", code="print(1)", checker=checker, tests=[{"expected_output": "1"}])
    assert answer["verdict"] == "judge_error"
    assert answer["tests"][0]["comment"].startswith(why)


async def test_a_checker_that_does_not_compile_is_a_judge_error_naming_it(client: httpx.AsyncClient) -> None:
    checker = {"language": "cpp", "code": "int main( {"}
    answer = await _judge(client, language="python", code="print(1)", checker=checker, tests=[{}, {}])
    assert _verdicts(answer) == ["judge_error", "judge_error"]
    assert answer["tests"][0]["comment"].startswith("the checker failed to compile")


async def test_a_compile_error_fails_every_test_and_runs_nothing(client: httpx.AsyncClient, stages: list[str]) -> None:
    answer = await _judge(client, language="cpp", code="int main() { return x; }", tests=_sum_tests(3))
    assert _verdicts(answer) == ["compile_error"] * 3
    assert "x" in answer["compile_output"] and answer["verdict"] == "compile_error"
    assert stages == ["compile"]


async def test_timeout_memory_and_runtime_errors_on_single_tests_while_the_others_pass(
    client: httpx.AsyncClient,
) -> None:
    inputs = ["ok", "loop", "ok", "memory", "crash", "ok"]
    tests = [{"stdin": what, "expected_output": f"{what}\n", "limits": _FAILING} for what in inputs]
    answer = await _judge(client, language="python", code=programs.PY_MISBEHAVES, tests=tests)
    assert _verdicts(answer) == ["accepted", "timeout", "accepted", "memory_limit", "runtime_error", "accepted"]
    assert (answer["verdict"], answer["first_failure"], answer["passed"]) == ("timeout", 2, 3)
    assert answer["tests"][4]["exit_code"] == 3


async def test_stop_on_first_failure_skips_the_tests_after_it(
    client: httpx.AsyncClient, service: Service, stages: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One test at a time: the tests after the failing one never start, and are reported skipped."""
    one_at_a_time = dataclasses.replace(service.engine.settings, judge_parallel_tests=1)
    monkeypatch.setattr(service.engine, "settings", one_at_a_time)
    answer = await _judge(
        client, language="python", code=programs.PY_SUM_WRONG, tests=_sum_tests(12), stop_on_first_failure=True
    )
    assert _verdicts(answer) == ["accepted"] * 7 + ["wrong_answer"] + ["skipped"] * 4
    assert answer["verdict"] == "wrong_answer" and stages.count("run") == 8


async def test_stop_on_first_failure_with_tests_in_parallel(client: httpx.AsyncClient, stages: list[str]) -> None:
    """Two tests at once (half the pool): a later test may have run while test 8 ran (the other slot), and
    keeps its verdict; one not done when test 8 failed is skipped. The summary is test 8's either way."""
    answer = await _judge(
        client, language="python", code=programs.PY_SUM_WRONG, tests=_sum_tests(12), stop_on_first_failure=True
    )
    verdicts = _verdicts(answer)
    assert verdicts[:8] == ["accepted"] * 7 + ["wrong_answer"]
    assert set(verdicts[8:]) <= {"accepted", "skipped"}
    ran_after = sum(v == "accepted" for v in verdicts[8:])
    assert stages.count("run") >= 8 + ran_after
    assert (answer["verdict"], answer["first_failure"]) == ("wrong_answer", 8)


async def test_an_interactive_guessing_game(client: httpx.AsyncClient, stages: list[str]) -> None:
    interactor = {"language": "python", "code": programs.PY_GUESS_INTERACTOR}
    tests = [{"stdin": f"{secret}\n"} for secret in (1, 500000, 999999, 123457)]
    good = await _judge(client, language="cpp", code=programs.CPP_BINARY_SEARCH, interactor=interactor, tests=tests)
    assert _verdicts(good) == ["accepted"] * 4
    assert stages.count("compile") == 1 and stages.count("run") == 8  # each test: the solution and the interactor
    bad = await _judge(client, language="cpp", code=programs.CPP_LINEAR_SEARCH, interactor=interactor, tests=tests)
    assert _verdicts(bad) == ["accepted", "wrong_answer", "wrong_answer", "wrong_answer"]
    assert bad["tests"][1]["comment"] == "too many guesses"


async def test_a_solution_and_interactor_waiting_on_each_other_end_as_a_timeout(client: httpx.AsyncClient) -> None:
    interactor = {"language": "python", "code": programs.PY_GUESS_INTERACTOR}
    limits = {"wall_time_limit": 3}
    tests = [{"stdin": "5\n", "limits": limits}]
    answer = await _judge(client, language="python", code=programs.PY_WAITS, interactor=interactor, tests=tests)
    assert _verdicts(answer) == ["timeout"]


async def test_queued_judging_streams_one_event_per_test(client: httpx.AsyncClient) -> None:
    body = {"language": "python", "code": programs.PY_SUM, "tests": _sum_tests(5)}
    queued = await client.post("/api/v1/judge", params={"wait": "false"}, json=body)
    assert queued.status_code == 202
    task_id = queued.json()["task_id"]
    stream = await client.get(f"/api/v1/tasks/{task_id}/events", timeout=_TIMEOUT_S)
    frames = parse_sse(stream.text)
    tested = [frame["data"] for frame in frames if frame["event"] == "test_result"]
    assert sorted(t["test"] for t in tested) == [1, 2, 3, 4, 5]
    assert {t["verdict"] for t in tested} == {"accepted"} and frames[-1]["event"] == "exit"
    result = await client.get(f"/api/v1/judge/{task_id}")
    assert result.status_code == 200 and result.json()["passed"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tests": []}, "tests"),
        ({"tests": [{"stdin": "1"}]}, "tests[0].expected_output"),
        ({"tests": [{}], "checker": "nearly"}, "checker"),
        ({"tests": [{}], "interactor": {"language": "cobol", "code": "x"}}, "interactor"),
        ({"tests": [{"expected_output": ""}] * 513}, "tests"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/judge", json={"language": "python", "code": "print(1)", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_cancelling_a_judge_task_stops_its_tests(client: httpx.AsyncClient, service: Service) -> None:
    body = {
        "language": "python",
        "code": "import time\ntime.sleep(90)\n",
        "tests": [{"expected_output": ""}] * 2,
        "limits": {"wall_time_limit": 120},
    }
    queued = await client.post("/api/v1/judge", params={"wait": "false"}, json=body)
    task_id = queued.json()["task_id"]
    async with contextlib.aclosing(service.broker.subscribe("public", task_id)) as events:  # type: ignore[type-var]
        first = await anext(events)
    assert first.kind == "stage"  # its first event: a worker is judging it
    assert (await client.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
    ended = await wait_done(service, "public", task_id)
    assert ended.result.message == "cancelled by request" and ended.result.status is Status.SIGNALED


async def test_a_judge_holds_at_most_half_the_pool_at_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest stays for other jobs: 8 tests on a pool of 4 never hold more than 2 boxes together."""
    held: list[int] = [0, 0]  # now, most
    original = BoxPool.lease

    @contextlib.asynccontextmanager
    async def counting(self: BoxPool, tenant: str, session_id: str | None = None) -> AsyncIterator[Box]:
        async with original(self, tenant, session_id) as box:
            held[0] += 1
            held[1] = max(held)
            try:
                yield box
            finally:
                held[0] -= 1

    monkeypatch.setattr(BoxPool, "lease", counting)
    answer = await _judge(client, language="python", code=programs.PY_SUM, tests=_sum_tests(8))
    assert answer["passed"] == 8
    assert held[1] == 2
