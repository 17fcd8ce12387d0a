"""The HTTP door in-process: JSON routes, SSE replay, the text runner, backpressure, metrics.

Every test runs real sandboxes through a real Service (pool, broker, worker);
the app is called through httpx's ASGI transport. Tests that need a live
connection (streaming as it happens, WebSockets, disconnects) are in
``test_http_live.py``, auth and sessions in ``test_http_tenants.py``, bad
input in ``test_http_errors.py``. The helpers here are shared by those modules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from sandlot.api.common.render import OutputDecoder
from sandlot.api.http.app import create_app
from sandlot.api.http.render import event_data, ws_message
from sandlot.broker import Broker, TaskSpec
from sandlot.config import ServerSettings
from sandlot.models import NOTICE_SESSION_RESET, ExitEvent, NoticeEvent, OutputEvent
from sandlot.service import Service
from tests.conftest import make_settings
from tests.root import require_root

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\nprint('finished')\n"
LONG_LIMITS = {"wall_time_limit": 60, "time_limit": 10}


# ------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def running_service(*, broker: Broker | None = None, **server: Any) -> AsyncIterator[Service]:
    """A started Service with test state dirs; a short drain so a test's leftover sleeps die fast."""
    require_root()
    settings = ServerSettings(**{"pool_size": 2, "gvisor_pool_size": 0, "drain_deadline_s": 2.0, **server})
    service = await Service.start(make_settings(), settings, broker=broker)
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandlot", headers=headers) as client:
        yield client


@contextlib.asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve app with uvicorn on a free loopback port for the duration; yields host:port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as sandlot serve does
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue from now on, so nothing needs to wait for start-up
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", ws="websockets-sansio", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """For state no event announces (a box going free): check until true or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def wait_running(service: Service, tenant: str, task_id: str) -> bytes:
    """Until the task's program has printed a whole first line (returned): it runs inside its box.

    A whole line, not the first output event: ``print`` in ``python -u`` writes the
    text and its newline with two writes, and a cancel that lands between them would
    rightly keep the text without its newline, which a test must not mistake for loss.
    (Not the run StageEvent either: it comes just before the launch.)
    """
    stdout = b""
    async for event in service.broker.subscribe(tenant, task_id):
        if isinstance(event, OutputEvent) and event.stage == "run" and event.stream == "stdout":
            stdout += event.data
            if b"\n" in stdout:
                return stdout
        assert not isinstance(event, ExitEvent), event
    pytest.fail("the task never started")


def note_submits(service: Service, monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[str]:
    """The ids of the tasks submitted from now on (routes that do not tell the client theirs)."""
    submitted: asyncio.Queue[str] = asyncio.Queue()
    submit = service.broker.submit

    async def noting_submit(spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec:
        submitted.put_nowait(spec.id)
        return await submit(spec, idempotency_key=idempotency_key)

    monkeypatch.setattr(service.broker, "submit", noting_submit)
    return submitted


async def wait_done(service: Service, tenant: str, task_id: str) -> ExitEvent:
    async for event in service.broker.subscribe(tenant, task_id):
        if isinstance(event, ExitEvent):
            return event
    pytest.fail("the task never finished")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Frames as {"id", "event", "data"} dicts; comments (keep-alives) skipped."""
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ": " not in line:
                continue
            name, value = line.split(": ", 1)
            fields[name] = json.loads(value) if name == "data" else value
        if fields:
            frames.append(fields)
    return frames


def executions(service: Service, language: str, status: str) -> float:
    labels = {"language": language, "status": status}
    return service.metrics.registry.get_sample_value("sandlot_executions_total", labels) or 0.0


@pytest.fixture(name="service")
async def service_fixture() -> AsyncIterator[Service]:
    async with running_service() as service:
        yield service


@pytest.fixture(name="client")
async def client_fixture(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(service)) as client:
        yield client


# --------------------------------------------------------------- /api/v1/run


async def test_run_returns_the_result(client: httpx.AsyncClient) -> None:
    code = "import sys\nprint(input()[::-1])\nprint('err', file=sys.stderr)\nopen('out.txt', 'w').write('x' * 3)\n"
    body = {"language": "python", "code": code, "stdin": "abc\n", "fetch_files": ["out.txt"]}
    response = await client.post("/api/v1/run", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["status"] == "ok"
    assert data["stdout"] == "cba\n"
    assert data["stderr"] == "err\n"
    assert len(data["task_id"]) == 32
    assert data["files"] == [{"name": "out.txt", "content": base64.b64encode(b"xxx").decode()}]
    assert data["stages"] == []


async def test_run_reports_compile_stage_and_program_failures(client: httpx.AsyncClient) -> None:
    broken = await client.post("/api/v1/run", json={"language": "go", "code": "package main\nfunc main() { x }\n"})
    assert broken.status_code == 200  # the program's failure, not ours
    data = broken.json()
    assert data["status"] == "compile_error"
    assert "main.go:2" in data["compile_output"]
    assert [s["name"] for s in data["stages"]] == ["compile"]
    failing = await client.post("/api/v1/run", json={"language": "bash", "code": "exit 3"})
    assert failing.json()["status"] == "runtime_error"
    assert failing.json()["exit_code"] == 3


async def test_a_run_without_session_gets_a_fresh_box(client: httpx.AsyncClient) -> None:
    code = "import os\nprint(os.path.exists('marker'))\nopen('marker', 'w').write('1')\n"
    first = await client.post("/api/v1/run", json={"language": "python", "code": code})
    second = await client.post("/api/v1/run", json={"language": "python", "code": code})
    assert first.json()["stdout"] == "False\n"
    assert second.json()["stdout"] == "False\n"


# ---------------------------------------------------- execute, tasks, events


async def test_execute_then_poll_and_replay_events(service: Service, client: httpx.AsyncClient) -> None:
    # "é" is written in two flushes, so its two bytes arrive in two output chunks.
    code = (
        "import sys, time\nprint('one', flush=True)\n"
        "sys.stdout.buffer.write(b'\\xc3'); sys.stdout.flush(); time.sleep(0.2)\n"
        "sys.stdout.buffer.write(b'\\xa9\\n'); sys.stdout.flush()\n"
    )
    response = await client.post("/api/v1/execute", json={"language": "python", "code": code})
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert response.json()["status"] in ("queued", "running")
    await wait_done(service, "public", task_id)

    state = await client.get(f"/api/v1/tasks/{task_id}")
    assert state.json()["status"] == "done"
    assert state.json()["result"]["stdout"] == "one\né\n"

    events = await client.get(f"/api/v1/tasks/{task_id}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(events.text)
    kinds = [f["event"] for f in frames]
    assert kinds[0] == "stage" and kinds[-1] == "exit"
    assert set(kinds[1:-1]) == {"output"}
    ids = [int(f["id"]) for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    text = "".join(f["data"]["data"] for f in frames if f["event"] == "output")
    assert text == "one\né\n"  # no U+FFFD: the split character survived
    assert frames[-1]["data"]["status"] == "ok"
    assert frames[-1]["data"]["stdout"] == "one\né\n"

    resumed = parse_sse((await client.get(f"/api/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "2"})).text)
    assert [int(f["id"]) for f in resumed] == ids[2:]


async def test_execute_accepts_a_raw_text_body(service: Service, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/execute", params={"language": "bash"}, content="echo raw", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 202
    exit_event = await wait_done(service, "public", response.json()["task_id"])
    assert exit_event.result.stdout == b"raw\n"
    assert exit_event.result.language == "bash"
    default = await client.post("/api/v1/execute", content="print('py')")
    assert (await wait_done(service, "public", default.json()["task_id"])).result.stdout == b"py\n"


async def test_idempotency_key_returns_the_same_task(client: httpx.AsyncClient) -> None:
    body = {"language": "python", "code": "print(1)"}
    first = await client.post("/api/v1/execute", json=body, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/api/v1/execute", json=body, headers={"Idempotency-Key": "k-1"})
    other = await client.post("/api/v1/execute", json=body, headers={"Idempotency-Key": "k-2"})
    assert first.json()["task_id"] == again.json()["task_id"]
    assert other.json()["task_id"] != first.json()["task_id"]


async def test_cancel_kills_a_running_task(service: Service, client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/execute", json={"language": "python", "code": SLEEPER, "limits": LONG_LIMITS})
    task_id = response.json()["task_id"]
    await wait_running(service, "public", task_id)
    assert (await client.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "running"

    cancelled = await client.delete(f"/api/v1/tasks/{task_id}")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"task_id": task_id, "cancelled": True}
    result = (await wait_done(service, "public", task_id)).result
    assert result.status.value == "signaled"
    assert result.cancelled
    assert result.wall_time < 30  # killed, not finished
    # What it printed before the cancel is all there, in the task's result as the door shows it.
    shown = (await client.get(f"/api/v1/tasks/{task_id}")).json()
    assert shown["result"]["stdout"] == "started\n"
    assert shown["result"]["message"] == "cancelled by request"

    assert (await client.delete(f"/api/v1/tasks/{task_id}")).status_code == 409
    missing = await client.delete("/api/v1/tasks/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "task_id"
    assert (await client.get("/api/v1/tasks/nope")).status_code == 404
    assert (await client.get("/api/v1/tasks/nope/events")).status_code == 404


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    async with running_service(pool_size=1, max_queued=1) as service, asgi_client(create_app(service)) as client:
        body = {"language": "python", "code": SLEEPER, "limits": LONG_LIMITS}
        holding = (await client.post("/api/v1/execute", json=body)).json()["task_id"]
        await wait_running(service, "public", holding)  # the only worker box is busy
        queued = await client.post("/api/v1/execute", json=body)
        assert queued.status_code == 202
        refused = await client.post("/api/v1/execute", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        also_refused = await client.post("/api/v1/run", json=body)
        assert also_refused.status_code == 429
        for task_id in (holding, queued.json()["task_id"]):
            assert (await client.delete(f"/api/v1/tasks/{task_id}")).status_code == 200


# ---------------------------------------------------------------- POST /run


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("go", 1+1) }\n', "go 2\n"),
        ('// a licence header\npackage main\nimport "fmt"\nfunc main() { fmt.Println("go") }\n', "go\n"),
        ('#!/bin/bash\necho "bash ${BASH_VERSION:+yes}"\n', "bash yes\n"),
        ("#!/usr/bin/env python3\nimport sys\nprint(sys.version_info[0])\n", "3\n"),
        ("#!/usr/bin/env node\nconsole.log('js')\n", "js\n"),
        ("print('plain python')\n", "plain python\n"),
    ],
)
async def test_run_text_detects_the_language(client: httpx.AsyncClient, source: str, expected: str) -> None:
    response = await client.post("/run", content=source)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == expected


async def test_run_text_interleaves_streams_and_shows_failures(client: httpx.AsyncClient) -> None:
    # The pauses only keep the two pipes' chunks apart; ordering is what is checked.
    code = (
        "import sys, time\nprint('a', flush=True); time.sleep(0.1)\n"
        "print('b', file=sys.stderr, flush=True); time.sleep(0.1)\nprint('c', flush=True)\nsys.exit(4)\n"
    )
    response = await client.post("/run", params={"language": "python"}, content=code)
    assert response.text == "a\nb\nc\nexit status 4\n"
    compile_error = await client.post("/run", content="package main\nfunc main() { undefined_name() }\n")
    assert compile_error.status_code == 200
    assert "main.go:2" in compile_error.text and "undefined" in compile_error.text


async def test_run_text_errors_are_text_with_a_status(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/run", params={"language": "cobol"}, content="x")
    assert unknown.status_code == 400
    assert unknown.headers["content-type"].startswith("text/plain")
    assert "unknown language" in unknown.text
    perl = await client.post("/run", content="#!/usr/bin/perl\nprint 1;\n")
    assert perl.status_code == 400
    assert "perl" in perl.text
    binary = await client.post("/run", content=b"print('\xff')")
    assert binary.status_code == 400
    assert "UTF-8" in binary.text


# ------------------------------------------------------------------ service


async def test_languages_health_readiness(service: Service, client: httpx.AsyncClient) -> None:
    languages = {lang["name"]: lang for lang in (await client.get("/api/v1/languages")).json()["languages"]}
    assert languages["python"]["version"] == service.versions()["python"]
    assert languages["python"]["compiled"] is False
    assert languages["go"]["compiled"] is True
    assert "py" in languages["python"]["aliases"]
    assert ".go" in languages["go"]["extensions"]
    assert languages["go"]["sample"]
    assert set(languages["c"]) == {"name", "display_name", "version", "aliases", "extensions", "compiled", "sample"}

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    service.accepting = False
    assert (await client.get("/readyz")).status_code == 503
    refused = await client.post("/api/v1/execute", content="print(1)")
    assert refused.status_code == 503
    assert "Retry-After" in refused.headers
    service.accepting = True


async def test_metrics_count_executions_and_responses(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/run", json={"language": "python", "code": "print(1)"})
    await client.post("/run", content="print(1)")
    await client.post("/api/v1/run", content=b"{")
    text = (await client.get("/metrics")).text
    assert 'sandlot_executions_total{language="python",status="ok"} 2.0' in text
    assert 'sandlot_requests_total{code="200",door="http"} 1.0' in text
    assert 'sandlot_requests_total{code="200",door="run_text"} 1.0' in text
    assert 'sandlot_requests_total{code="400",door="http"} 1.0' in text


async def test_openapi_lists_the_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/run",
        "/api/v1/execute",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}/events",
        "/run",
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/files",
        "/api/v1/sessions/{session_id}/files/{path}",
        "/api/v1/languages",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert "delete" in paths["/api/v1/tasks/{task_id}"]
    assert "application/json" in paths["/api/v1/run"]["post"]["requestBody"]["content"]
    # The document is checked against live answers in test_openapi.py, the /docs page in test_docs_page.py.


def test_a_notice_renders_as_its_own_sse_and_websocket_message() -> None:
    notice = NoticeEvent(NOTICE_SESSION_RESET, "a fresh box", seq=2, time=1.5)
    assert event_data(notice, OutputDecoder()) == {"code": "session_reset", "message": "a fresh box", "time": 1.5}
    assert ws_message(notice, OutputDecoder()) == {"type": "notice", "code": "session_reset", "message": "a fresh box"}
