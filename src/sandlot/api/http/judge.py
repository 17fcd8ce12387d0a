"""Judge mode over HTTP: ``POST /api/v1/judge`` (wait for the verdict, or queue) and ``GET /api/v1/judge/{id}``.

A judge request is a task like any other (``sandlot.judge.parse``): queued, run by a
worker, its events on the broker. Waiting, the route collects the events through the
exit (a client that gives up has its task cancelled) and answers with the summary and
one entry per test. ``?wait=false`` answers 202 at once; the task's per-test events
then stream from ``GET /api/v1/tasks/{id}/events`` (SSE, kind ``test_result``) or the
WebSocket, and ``GET /api/v1/judge/{id}`` gives the same answer as waiting once done.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST, race_disconnect, read_json
from sandlot.api.http.door import CallerDep
from sandlot.api.http.errors import ApiError
from sandlot.api.http.schemas import AUTH, SUBMIT, Queued, answers, json_body
from sandlot.judge.model import JudgeSpec, render_test_result, summarize, summary_dict
from sandlot.judge.parse import parse_judge
from sandlot.models import Event, ExitEvent, StageResultEvent, Status, TestResultEvent

router = APIRouter(prefix="/api/v1", tags=["judge"])


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeTestAnswer(_Closed):
    test: int = Field(description="1-based, the test's place in the request")
    name: str
    verdict: str = Field(
        description="accepted, wrong_answer, presentation_error, timeout, memory_limit, runtime_error, "
        "output_limit, compile_error, judge_error, skipped"
    )
    time: float = Field(description="seconds of CPU, from the test's cgroup")
    wall_time: float = Field(description="seconds")
    memory: int = Field(description="bytes, the peak")
    exit_code: int | None
    signal: int | None
    comment: str = Field(description="the checker's or interactor's stderr, or why")
    stdout: str | None = Field(default=None, description="with include_output: the program's output (16 KiB)")
    stderr: str | None = Field(default=None, description="with include_output (16 KiB)")


class JudgeAnswer(_Closed):
    task_id: str
    status: str = Field(description="done")
    verdict: str = Field(description="the first failing test's (by test order), else accepted")
    passed: int
    total: int
    max_time: float = Field(description="seconds of CPU, the slowest test's")
    max_memory: int = Field(description="bytes, the largest test's peak")
    first_failure: int | None
    compile_output: str
    message: str
    tests: list[JudgeTestAnswer]


class JudgePending(_Closed):
    task_id: str
    status: str = Field(description="queued or running")


_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["language", "tests"],
    "properties": {
        "language": {"type": "string"},
        "code": {"type": "string"},
        "files": {"type": "array", "items": {"type": "object"}},
        "environment": {"type": "string"},
        "limits": {"type": "object"},
        "compile_limits": {"type": "object"},
        "isolation": {"type": "string"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "stdin": {"type": "string"},
                    "expected_output": {"type": "string"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "limits": {"type": "object"},
                    "encoding": {"enum": ["utf8", "base64"]},
                },
            },
        },
        "checker": {"description": "exact, lines, tokens, float:EPS, or {language, code}"},
        "interactor": {"type": "object", "description": "{language, code}"},
        "stop_on_first_failure": {"type": "boolean"},
        "include_output": {"type": "boolean", "description": "each test's stdout and stderr in the answer"},
    },
}
_EXAMPLE = {
    "language": "python",
    "code": "a, b = map(int, input().split())\nprint(a + b)\n",
    "tests": [{"stdin": "1 2\n", "expected_output": "3\n"}, {"stdin": "2 2\n", "expected_output": "4\n"}],
    "checker": "tokens",
}


@router.post(
    "/judge",
    openapi_extra=json_body(_REQUEST_SCHEMA, example=_EXAMPLE),
    response_model=None,
    responses={
        **answers(200, JudgeAnswer, *SUBMIT, what="Judged (whatever the verdict)"),
        202: {"model": Queued, "description": "wait=false: queued; follow /api/v1/tasks/{task_id}/events"},
        500: {"model": JudgeAnswer, "description": "The sandbox failed (verdict judge_error), never the program"},
    },
    summary="Judge a program against many tests: one compile, checkers, interactors",
)
async def judge(request: Request, caller: CallerDep, wait: bool = True) -> Response:
    data = await read_json(request)
    include_output = False
    if isinstance(data, dict):
        include_output = data.pop("include_output", False)
        if not isinstance(include_output, bool):
            raise ApiError(400, "rejected", "include_output: must be true or false", field="include_output")
    spec = parse_judge(data, tenant=caller.tenant)
    spec = await caller.core.submit(caller.principal, spec, waits=wait)
    if not wait:
        return JSONResponse({"task_id": spec.id, "status": "queued"}, status_code=202)
    finished, events = await race_disconnect(request.receive, caller.core.collect(spec.tenant, spec.id))
    if not finished:
        await caller.core.cancel(spec.tenant, spec.id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if events is None:
        raise ApiError(404, "not_found", f"task {spec.id} vanished before it finished", field="task_id")
    return _answer(spec.id, len(_tests_of(data)), events, include_output)


@router.get(
    "/judge/{task_id}",
    response_model=None,
    responses={
        **answers(200, JudgeAnswer, *AUTH, 404, 503, what="Judged"),
        202: {"model": JudgePending, "description": "Not judged yet"},
    },
    summary="A judge task's verdict and tests",
)
async def judge_result(task_id: str, caller: CallerDep) -> Response:
    state = await caller.service.broker.get(caller.tenant, task_id)
    if state is None or state.spec is None or not state.spec.judge:
        raise ApiError(404, "not_found", f"judge task {task_id} not found", field="task_id")
    if state.status != "done":
        return JSONResponse({"task_id": task_id, "status": state.status}, status_code=202)
    events = await caller.core.collect(caller.tenant, task_id)
    if events is None:
        raise ApiError(404, "not_found", f"judge task {task_id} not found", field="task_id")
    return _answer(task_id, len(JudgeSpec.from_json(state.spec.judge).tests), events, False)


def _tests_of(data: Any) -> list[Any]:
    tests = data.get("tests") if isinstance(data, dict) else None
    return tests if isinstance(tests, list) else []


def _answer(task_id: str, total: int, events: list[Event], include_output: bool) -> JSONResponse:
    exit_event = events[-1]
    assert isinstance(exit_event, ExitEvent)
    result = exit_event.result
    if result.status is Status.REJECTED:  # refused by the worker (a spec that changed on its way)
        raise ApiError(400, "rejected", result.message)
    tests = [e for e in events if isinstance(e, TestResultEvent)]
    compiled = next((e.result for e in events if isinstance(e, StageResultEvent) and e.stage == "compile"), None)
    summary = summarize(tests, total)
    rendered = [render_test_result(test, with_output=include_output) for test in sorted(tests, key=lambda t: t.test)]
    body = {
        "task_id": task_id,
        "status": "done",
        **summary_dict(summary),
        "compile_output": (compiled or result).compile_output.decode("utf-8", "replace"),
        "message": result.message,
        "tests": rendered,
    }
    return JSONResponse(body, status_code=500 if result.status is Status.INTERNAL_ERROR else 200)
