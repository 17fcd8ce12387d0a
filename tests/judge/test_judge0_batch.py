"""A Judge0 batch of one program (one submission per test) compiles once, with the answers it always had."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.judge0.test_judge0 import ACCEPTED, COMPILE_ERROR, WRONG_ANSWER, Live, live_fixture
from tests.judge import programs

pytestmark = pytest.mark.asyncio(loop_scope="module")
live = live_fixture  # the Judge0 tests' live server (module-scoped here too)
CPP = 54  # Judge0's C++ (GCC 9.2.0) id


async def _batch(live: Live, code: str, count: int) -> list[dict[str, Any]]:
    batch = [
        {"source_code": code, "language_id": CPP, "stdin": f"{i} 1\n", "expected_output": f"{i + 1}\n"}
        for i in range(count)
    ]
    created = await live.http.post("/submissions/batch", json={"submissions": batch})
    assert created.status_code == 201, created.text
    tokens = [item["token"] for item in created.json()]
    async with asyncio.timeout(300):  # a bound on a hang, not a measurement
        for token in tokens:
            async for event in live.service.broker.subscribe("public", token):
                if event.kind == "exit":
                    break
    fields = "status,stdout,compile_output"
    shown = await live.http.get("/submissions/batch", params={"tokens": ",".join(tokens), "fields": fields})
    submissions: list[dict[str, Any]] = shown.json()["submissions"]
    return submissions


async def test_a_batch_of_one_program_compiles_once(live: Live, stages: list[str]) -> None:
    shown = await _batch(live, programs.CPP_SUM_WRONG, 10)
    assert [s["status"]["id"] for s in shown] == [ACCEPTED] * 7 + [WRONG_ANSWER] + [ACCEPTED] * 2
    assert [s["stdout"] for s in shown] == [f"{i + 1 + (i == 7)}\n" for i in range(10)]
    assert stages.count("compile") == 1 and stages.count("run") == 10


async def test_a_batch_that_does_not_compile_is_a_compile_error_each_from_one_compile(
    live: Live, stages: list[str]
) -> None:
    shown = await _batch(live, "int main() { return x; }", 4)
    assert [s["status"]["id"] for s in shown] == [COMPILE_ERROR] * 4
    assert len({s["compile_output"] for s in shown}) == 1 and "x" in shown[0]["compile_output"]
    assert stages == ["compile"]
