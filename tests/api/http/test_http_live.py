"""The HTTP door over a real socket (uvicorn): live streaming, WebSockets, and clients that hang up.

httpx's ASGI transport buffers whole responses and cannot hang up, so these
tests serve the app with uvicorn on a loopback port and talk to it with httpx
and the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from sandlot.api.common.auth import PUBLIC_TENANT
from sandlot.api.http.app import create_app
from sandlot.broker import Control
from sandlot.service import Service
from tests.api.http.test_http import (
    LONG_LIMITS,
    SLEEPER,
    executions,
    live_server,
    note_submits,
    parse_sse,
    service_fixture,
    wait_done,
    wait_running,
    wait_until,
)

__all__ = ["service_fixture"]  # a fixture, used by name

# Prints, waits for SIGUSR1 (which the test sends once the first line is here), prints. Blocked before the
# first line, so the signal can neither come too early nor kill it; sigwait then takes it.
SIGNAL_GATED = (
    "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\nprint('first', flush=True)\n"
    "signal.sigwait({signal.SIGUSR1})\nprint('second', flush=True)\n"
)
# Prints, waits in its session's workdir for the file "go" (which the test puts there), prints.
GATED = (
    "import os, time\nprint('first', flush=True)\n"
    "while not os.path.exists('go'):\n    time.sleep(0.01)\nprint('second', flush=True)\n"
)


@pytest.fixture(name="base")
async def base_fixture(service: Service) -> AsyncIterator[str]:
    async with live_server(create_app(service)) as address:
        yield address


@pytest.fixture(name="http")
async def http_fixture(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{base}", timeout=30) as client:
        yield client


async def _receive(ws: ClientConnection) -> dict[str, Any]:
    message = json.loads(await ws.recv())
    assert isinstance(message, dict)
    return message


async def _until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """Messages up to the first of this type, which is returned; an exit or error before it fails."""
    while True:
        message = await _receive(ws)
        if message["type"] == kind:
            return message
        assert message["type"] not in ("exit", "error"), message


async def _stdout(ws: ClientConnection, expected: str) -> None:
    """Read stdout messages until they add up to expected (a line may come in several chunks)."""
    text = ""
    while len(text) < len(expected):
        text += (await _until(ws, "stdout"))["data"]
    assert text == expected


# --------------------------------------------------------------------- SSE


async def test_sse_streams_output_while_the_program_runs(http: httpx.AsyncClient) -> None:
    # The program waits, after its first line, for a file the test puts in its session: "running"
    # below is then certain however slow the machine is, never a guess about a sleep's length.
    session = (await http.post("/api/v1/sessions", json={})).json()["session_id"]
    body = {"language": "python", "code": GATED, "session_id": session, "limits": LONG_LIMITS}
    task_id = (await http.post("/api/v1/execute", json=body)).json()["task_id"]
    frames: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        frame_lines = _frames(response.aiter_lines())
        async for frame in frame_lines:
            frames.append(frame)
            if _output(frames) == "first\n":
                break
        # The first line is here and the program has not ended: this is live, not a replay.
        assert (await http.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "running"
        assert (await http.put(f"/api/v1/sessions/{session}/files/go", content=b"")).status_code == 201
        frames += [frame async for frame in frame_lines]
    kinds = [f["event"] for f in frames]
    assert kinds[0] == "stage" and kinds[-1] == "exit"
    assert _output(frames) == "first\nsecond\n"
    assert frames[-1]["data"]["stdout"] == "first\nsecond\n"


async def _frames(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """SSE frames as they complete (a blank line ends one)."""
    block: list[str] = []
    async for line in lines:
        if line:
            block.append(line)
            continue
        for frame in parse_sse("\n".join(block)):
            yield frame
        block = []


def _output(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["data"] for f in frames if f["event"] == "output")


async def test_run_text_streams_while_the_program_runs(http: httpx.AsyncClient, service: Service) -> None:
    # /run has neither stdin nor a session: the program's gate is a signal, sent through the task's control
    # channel (as the WebSocket door's "signal" message is) once the first line is here, so "running"
    # below is certain however slow the machine is.
    async with http.stream("POST", "/run", content=SIGNAL_GATED) as response:
        assert response.status_code == 200
        chunks = response.aiter_text()
        first = ""
        while not first.endswith("\n"):
            first += await anext(chunks)
        assert first == "first\n"
        task_id = response.headers["X-Sandlot-Task-Id"]
        assert (await http.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "running"
        assert await service.broker.control(PUBLIC_TENANT, task_id, Control("signal", signal=signal.SIGUSR1))
        rest = "".join([chunk async for chunk in chunks])
    assert rest == "second\n"


# ------------------------------------------- a cancelled task's output, whole


async def test_sse_follower_gets_the_whole_output_of_a_cancelled_task(http: httpx.AsyncClient) -> None:
    body = {"language": "python", "code": SLEEPER, "limits": LONG_LIMITS}
    task_id = (await http.post("/api/v1/execute", json=body)).json()["task_id"]
    frames: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        frame_lines = _frames(response.aiter_lines())
        async for frame in frame_lines:
            frames.append(frame)
            if _output(frames) == "started\n":
                break
        assert (await http.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
        frames += [frame async for frame in frame_lines]
    assert _output(frames) == "started\n"
    assert frames[-1]["event"] == "exit"
    assert frames[-1]["data"]["stdout"] == "started\n"
    assert frames[-1]["data"]["message"] == "cancelled by request"


async def test_websocket_gets_the_whole_output_of_a_cancelled_task(
    service: Service, base: str, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = note_submits(service, monkeypatch)
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "run", "language": "python", "code": SLEEPER, "limits": LONG_LIMITS}))
        await _stdout(ws, "started\n")
        assert (await http.delete(f"/api/v1/tasks/{await submitted.get()}")).status_code == 200
        ended = await _until(ws, "exit")
    assert ended["result"]["stdout"] == "started\n"
    assert ended["result"]["status"] == "signaled"
    assert ended["result"]["message"] == "cancelled by request"


# ------------------------------------------------------- clients that leave


async def test_hanging_up_on_run_kills_the_run(
    service: Service, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = note_submits(service, monkeypatch)  # the synchronous route does not tell the client its id
    body = {"language": "python", "code": SLEEPER, "limits": LONG_LIMITS}
    request = asyncio.create_task(http.post("/api/v1/run", json=body))
    task_id = await submitted.get()
    await wait_running(service, "public", task_id)
    request.cancel()  # httpx closes the connection
    with pytest.raises(asyncio.CancelledError):
        await request
    result = (await wait_done(service, "public", task_id)).result
    assert result.status.value == "signaled"
    assert "cancelled" in result.message
    await wait_until(lambda: service.pool.busy == 0 and service.pool.available == 2)


async def test_hanging_up_on_run_text_kills_the_run(service: Service, http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/run", content=SLEEPER) as response:
        assert (await anext(response.aiter_text())).startswith("started")
    await wait_until(lambda: executions(service, "python", "signaled") == 1)
    await wait_until(lambda: service.pool.busy == 0)


# --------------------------------------------------------------- WebSocket


async def test_websocket_stdin_round_trip(base: str) -> None:
    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('eof')\n"
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "run", "language": "python", "code": code}))
        assert (await _until(ws, "stage"))["stage"] == "run"
        await ws.send(json.dumps({"type": "stdin", "data": "hello\n"}))
        echoed = await _until(ws, "stdout")
        assert echoed["stage"] == "run"
        assert "HELLO\n".startswith(echoed["data"])
        await _stdout(ws, "HELLO\n"[len(echoed["data"]) :])
        await ws.send(json.dumps({"type": "stdin", "data": "wörld\n"}))
        await _stdout(ws, "WÖRLD\n")
        await ws.send(json.dumps({"type": "close_stdin"}))
        await _stdout(ws, "eof\n")
        exit_message = await _until(ws, "exit")
        assert exit_message["result"]["status"] == "ok"
        assert exit_message["result"]["stdout"] == "HELLO\nWÖRLD\neof\n"
        await ws.wait_closed()
        assert ws.close_code == 1000


async def test_websocket_stdin_in_the_run_message_is_sent_and_closed(base: str) -> None:
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        run = {"type": "run", "language": "python", "code": "import sys\nprint(len(sys.stdin.read()))", "stdin": "abc"}
        await ws.send(json.dumps(run))
        assert (await _until(ws, "exit"))["result"]["stdout"] == "3\n"


async def test_websocket_sigint(base: str) -> None:
    code = (
        "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(30)\n"
        "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n    raise SystemExit(3)\n"
    )
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "run", "language": "python", "code": code, "limits": LONG_LIMITS}))
        await _stdout(ws, "ready\n")
        await ws.send(json.dumps({"type": "signal", "signal": "SIGINT"}))
        await _stdout(ws, "interrupted\n")
        result = (await _until(ws, "exit"))["result"]
        assert result["status"] == "runtime_error"
        assert result["exit_code"] == 3


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("not json", "message"),
        ({"type": "stdin", "data": "x"}, "type"),
        ({"type": "run", "language": "cobol", "code": "x"}, "language"),
        ({"type": "run", "language": "python", "code": "x", "limits": {"time_limit": 1000}}, "limits.time_limit"),
        ({"type": "run", "language": "python", "code": "x", "extra": 1}, "extra"),
    ],
)
async def test_websocket_bad_first_message_closes_with_1008(base: str, message: Any, field: str) -> None:
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(message if isinstance(message, str) else json.dumps(message))
        error = await _until(ws, "error")
        assert error["error"]["field"] == field
        await ws.wait_closed()
        assert ws.close_code == 1008


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "signal", "signal": "SIGSEGV"}, "signal"),
        ({"type": "stdin", "data": 5}, "data"),
        ({"type": "dance"}, "type"),
        (["a list"], "message"),
    ],
)
async def test_websocket_bad_message_mid_run_cancels_it(service: Service, base: str, message: Any, field: str) -> None:
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "run", "language": "python", "code": SLEEPER, "limits": LONG_LIMITS}))
        await _stdout(ws, "started\n")
        await ws.send(json.dumps(message))
        error = await _until(ws, "error")
        assert error["error"]["field"] == field
        await ws.wait_closed()
        assert ws.close_code == 1008
    await wait_until(lambda: executions(service, "python", "signaled") == 1)  # killed, not left to its 30 s
    await wait_until(lambda: service.pool.busy == 0)


async def test_websocket_disconnect_cancels_the_run(service: Service, base: str, http: httpx.AsyncClient) -> None:
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "run", "language": "python", "code": SLEEPER, "limits": LONG_LIMITS}))
        await _stdout(ws, "started\n")
    await wait_until(lambda: executions(service, "python", "signaled") == 1)
    await wait_until(lambda: service.pool.busy == 0)
    text = (await http.get("/metrics")).text
    assert 'sandlot_requests_total{code="1000",door="ws"}' in text
