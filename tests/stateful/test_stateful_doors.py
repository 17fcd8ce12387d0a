"""Stateful sessions through the other doors: MCP (streamable HTTP), gRPC sandlot.v1, the WebSocket.

One session is opened per test (MCP's own tool, else ``POST /api/v1/sessions``)
and cells go through the door under test; real Service, real boxes (jail).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect

from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.http.app import create_app
from sandlot.config import ApiKey, ServerSettings
from sandlot.stateful.session import SESSION_ENDED_MID_CELL
from tests.api.grpc.test_grpc import grpc_serving
from tests.api.http.test_http import asgi_client, live_server, running_service
from tests.api.mcp.test_mcp import _error, _http_client, _mcp_app, _structured

pytestmark = pytest.mark.root
_BOUND_S = 60.0  # only turns a hang into a failure


async def test_mcp_open_session_then_run_code_keeps_state() -> None:
    async with running_service() as service, _mcp_app(service) as url, _http_client(url) as client:
        opened = _structured(await client.call_tool("open_session", {"memory_limit": 128}))
        assert (opened["language"], opened["isolation"]) == ("python", "jail")
        in_session = {"session_id": opened["session_id"], "language": "python"}
        first = _structured(await client.call_tool("run_code", {**in_session, "code": "import math\nr = 2"}))
        assert (first["status"], first["value"]) == ("ok", None)
        second = await client.call_tool("run_code", {**in_session, "code": "math.pi * r ** 2"})
        assert _structured(second)["value"] == repr(3.141592653589793 * 4)
        assert "value: 12.566" in "\n".join(getattr(block, "text", "") for block in second.content)
        plain = _structured(await client.call_tool("run_code", {"language": "python", "code": "print(1)"}))
        assert plain["value"] is None  # a run outside the session: no value, no state
        closed = _structured(await client.call_tool("close_session", {"session_id": opened["session_id"]}))
        assert closed["ended"] is True
        assert "not found or expired" in await _error(client, "run_code", {**in_session, "code": "r"})


async def test_grpc_execute_runs_a_cell_and_returns_its_value() -> None:
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=2)) as env:
        assert env.service.stateful is not None
        session = await env.service.stateful.create("public", language="python", isolation="jail", limits=None)

        async def execute(code: str, language: str = "") -> list[pb.Event]:
            request = pb.ExecuteRequest(language=language, code=code, session_id=session.id)
            async with asyncio.timeout(_BOUND_S):
                return [event async for event in env.sandlot.Execute(request)]

        await execute("total = 40")
        events = await execute("print('adding')\ntotal + 2", language="python")
        exit_ = events[-1].exit
        assert (exit_.result.stdout, exit_.value) == (b"adding\n", "42")
        statement = (await execute("total += 1"))[-1].exit
        assert not statement.HasField("value")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await execute("1", language="bash")
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_websocket_cell_streams_and_sigint_interrupts_only_the_cell() -> None:
    async with running_service() as service, live_server(create_app(service)) as base:
        async with asgi_client(create_app(service)) as http:
            created = await http.post("/api/v1/sessions", json={"stateful": True})
            assert created.status_code == 201, created.text
            session_id = created.json()["session_id"]

        async def ws_cell(code: str, *, interrupt: bool = False) -> dict[str, Any]:
            async with asyncio.timeout(_BOUND_S), connect(f"ws://{base}/api/v1/ws") as ws:
                await ws.send(json.dumps({"type": "run", "session_id": session_id, "code": code}))
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "stdout" and interrupt:
                        await ws.send(json.dumps({"type": "signal", "signal": "SIGINT"}))
                    if message["type"] == "exit":
                        result: dict[str, Any] = message["result"]
                        return result

        waiting = await ws_cell("import time\nn = 7\nprint('waiting', flush=True)\ntime.sleep(60)", interrupt=True)
        assert waiting["status"] == "runtime_error" and "KeyboardInterrupt" in waiting["message"], waiting
        after = await ws_cell("n * 6")
        assert (after["status"], after["value"]) == ("ok", "42")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"stateful": "yes"}, 400, "stateful"),
        ({"stateful": True, "language": "bash"}, 400, "language"),
        ({"stateful": True, "language": "cobol"}, 400, "language"),
        ({"stateful": True, "colour": "red"}, 400, "colour"),
        ({"stateful": True, "limits": {"memory_limit": 10**6}}, 400, "limits.memory_limit"),
        ({"stateful": True, "limits": 5}, 400, "limits"),
        ({"stateful": True, "environment": "no-such-env"}, 404, None),
        ({"language": "python"}, 400, "language"),  # a file session takes no language
    ],
)
async def test_bad_session_requests_are_refused_naming_the_field(
    body: dict[str, Any], status: int, field: str | None
) -> None:
    async with running_service() as service, asgi_client(create_app(service)) as http:
        reply = await http.post("/api/v1/sessions", json=body)
        assert reply.status_code == status, reply.text
        if field is not None:
            assert reply.json()["error"]["field"] == field
        assert service.stateful is not None and service.stateful.count == 0


async def test_a_cell_takes_code_only() -> None:
    async with running_service() as service, asgi_client(create_app(service)) as http:
        session_id = (await http.post("/api/v1/sessions", json={"stateful": True})).json()["session_id"]
        for extra, field in (
            ({"commands": ["ls"]}, "commands"),
            ({"fetch_files": ["a"]}, "fetch_files"),
            ({"args": ["x"]}, "args"),
        ):
            reply = await http.post("/api/v1/run", json={"session_id": session_id, "code": "1", **extra})
            assert reply.status_code == 400 and reply.json()["error"]["field"] == field, reply.text
        files = [{"name": "a.py", "content": "1"}, {"name": "b.py", "content": "2"}]
        two = await http.post("/api/v1/run", json={"session_id": session_id, "files": files})
        assert two.status_code == 400 and two.json()["error"]["field"] == "files", two.text
        no_language = await http.post("/api/v1/run", json={"code": "1"})
        assert no_language.status_code == 400 and no_language.json()["error"]["field"] == "language"
        fine = await http.post("/api/v1/run", json={"session_id": session_id, "code": "6 * 7"})
        assert fine.json()["value"] == "42"


async def test_the_absolute_expiry_ends_a_session_in_use() -> None:
    async with running_service(session_ttl_s=2.0) as service, asgi_client(create_app(service)) as http:
        created = await http.post("/api/v1/sessions", json={"stateful": True})
        assert created.json()["expires_in_s"] == 2.0
        session_id = created.json()["session_id"]
        # Busy past its lifetime: the session ends under the cell, which says so.
        cell = {"session_id": session_id, "code": "import time\ntime.sleep(30)", "limits": {"wall_time_limit": 60}}
        ended = (await http.post("/api/v1/run", json=cell)).json()
        assert (ended["status"], ended["message"]) == ("signaled", SESSION_ENDED_MID_CELL), ended
        assert service.stateful is not None and service.stateful.count == 0
        gone = await http.post("/api/v1/run", json={"session_id": session_id, "code": "1"})
        assert gone.status_code == 404, gone.text


async def test_sessions_never_wait_for_a_box_that_sessions_hold() -> None:
    async with (
        running_service(pool_size=2, max_stateful_sessions=5) as service,
        asgi_client(create_app(service)) as http,
    ):
        for _ in range(2):
            assert (await http.post("/api/v1/sessions", json={"stateful": True})).status_code == 201
        async with asyncio.timeout(_BOUND_S):  # a wait here would last a session's lifetime
            third = await http.post("/api/v1/sessions", json={"stateful": True})
        assert third.status_code == 429, third.text
        assert "every jail box (2) is held by a stateful session" in third.json()["error"]["message"]
        assert third.headers["retry-after"] == "5"


async def test_another_tenants_session_is_not_found() -> None:
    keys = (ApiKey("key-a", "a"), ApiKey("key-b", "b"))
    async with running_service(api_keys=keys) as service:
        app = create_app(service)
        async with (
            asgi_client(app, authorization="Bearer key-a") as a,
            asgi_client(app, authorization="Bearer key-b") as b,
        ):
            session_id = (await a.post("/api/v1/sessions", json={"stateful": True})).json()["session_id"]
            assert (await a.post("/api/v1/run", json={"session_id": session_id, "code": "x = 1"})).status_code == 200
            for attempt in (
                await b.post("/api/v1/run", json={"session_id": session_id, "code": "x"}),
                await b.delete(f"/api/v1/sessions/{session_id}"),
            ):
                assert attempt.status_code == 404, attempt.text
            mine = await a.post("/api/v1/run", json={"session_id": session_id, "code": "x"})
            assert mine.json()["value"] == "1"
