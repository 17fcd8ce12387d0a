"""A lone surrogate ("\\ud800" in JSON) is refused as bad input at every JSON door, never a 500.

No UTF-8 text can carry one: passed on, it failed when encoded for the program,
a file name or the reply. gRPC strings cannot carry one at all (protobuf
rejects them), so the doors checked here are the JSON ones.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from sandlot.api.http.app import create_app
from tests.api.http.test_http import client_fixture, live_server, running_service, service_fixture
from tests.api.mcp.test_mcp import INITIALIZE, _mcp_app

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name

LONE = "\ud800"
BASE = {"language": "bash", "code": "echo hi"}
CASES = {
    "code": {**BASE, "code": f"echo {LONE}"},
    "args": {**BASE, "args": [LONE]},
    "stdin": {**BASE, "stdin": LONE},
    "files[1].name": {**BASE, "files": [{"name": "main.sh", "content": "true"}, {"name": LONE, "content": "x"}]},
    "fetch_files[0]": {**BASE, "fetch_files": [LONE]},
    "commands[0]": {**BASE, "commands": [f"echo {LONE}"]},
}


def _body(data: object) -> bytes:
    return json.dumps(data).encode()  # ensure_ascii: the surrogate travels as the escape \\ud800


@pytest.mark.parametrize("where", list(CASES))
async def test_http_json_routes_refuse_a_lone_surrogate(client: httpx.AsyncClient, where: str) -> None:
    for path in ("/api/v1/run", "/api/v1/execute"):
        response = await client.post(path, content=_body(CASES[where]), headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["field"].startswith(where.split("[", maxsplit=1)[0]), response.text


async def test_piston_and_judge0_refuse_a_lone_surrogate(client: httpx.AsyncClient) -> None:
    piston = {"language": "bash", "version": "*", "files": [{"content": f"echo {LONE}"}]}
    answer = await client.post("/api/v2/execute", content=_body(piston), headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    judge0 = {"language_id": 46, "source_code": f"echo {LONE}"}
    answer = await client.post(
        "/judge0/submissions", content=_body(judge0), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text


async def test_websocket_refuses_a_lone_surrogate_in_run_and_stdin() -> None:
    async with running_service() as service, live_server(create_app(service)) as address:
        async with connect(f"ws://{address}/api/v1/ws") as ws:
            await ws.send(_body(CASES["code"]).decode())
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["error"]["field"] == "code"
        assert ws.close_code == 1008
        async with connect(f"ws://{address}/api/v1/ws") as ws:
            await ws.send(json.dumps({"type": "run", "language": "bash", "code": "cat"}))
            await ws.send(json.dumps({"type": "stdin", "data": LONE}))
            messages = []
            with pytest.raises(ConnectionClosedError):  # closed with 1008, not normally
                while True:
                    messages.append(json.loads(await ws.recv()))
            assert messages[-1]["type"] == "error" and messages[-1]["error"]["field"] == "data", messages
        assert ws.close_code == 1008


async def test_mcp_refuses_a_lone_surrogate() -> None:
    """The MCP library parses its own bodies: a lone surrogate is its JSON-RPC parse error, a 400."""
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with running_service() as service, _mcp_app(service) as url, httpx.AsyncClient(timeout=30) as http:
        opened = await http.post(url, content=_body(INITIALIZE), headers=accept)
        session = {**accept, "Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await http.post(url, content=_body(initialized), headers=session)
        for arguments in (
            {"language": "bash", "code": f"echo {LONE}"},
            {"language": "bash", "code": "cat", "stdin": LONE},
        ):
            params = {"name": "run_code", "arguments": arguments}
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
            answer = await http.post(url, content=_body(call), headers=session)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == -32700  # JSON-RPC's parse error
