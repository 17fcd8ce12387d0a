"""The MCP door: ``sandlot mcp`` over stdio, and streamable HTTP at ``/mcp``, with real sandboxes.

The stdio tests launch the real console script as a subprocess (test state
dirs through SANDLOT_* variables) and talk to it with the SDK's own client;
each launch starts a Service, so one test covers a whole conversation. The
HTTP tests serve ``create_app`` + ``install`` with uvicorn, as ``sandlot
serve`` does (lifespan off), and connect with the SDK's streamable HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent

from sandlot.api.http.app import create_app
from sandlot.api.mcp.server import shutdown
from sandlot.config import ApiKey
from sandlot.service import Service
from tests.api.http.test_http import live_server, note_submits, running_service, wait_running
from tests.conftest import TEST_CGROUP, TEST_RUN_DIR, TEST_STATE_DIR, TEST_UID_BASE

SANDLOT = str(Path(sys.executable).with_name("sandlot"))
ENV = {
    "SANDLOT_STATE_DIR": str(TEST_STATE_DIR),
    "SANDLOT_RUN_DIR": str(TEST_RUN_DIR),
    "SANDLOT_CGROUP_NAME": TEST_CGROUP,
    "SANDLOT_BOX_UID_BASE": str(TEST_UID_BASE),
}
# Four lines, apart in time: each reaches the client as its own progress notification.
LINES = "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(0.15)\n"
SESSION_PROGRAM = """\
n = int(open('data.txt').read())
open('out.txt', 'w').write(f'answer {n + 1}\\n')
open('out.bin', 'wb').write(bytes([0xff, 0x00, n]))
print('wrote', n + 1)
"""
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


# ------------------------------------------------------------------ helpers


def _stdio(mode: str = "legacy") -> Client:
    params = StdioServerParameters(command=SANDLOT, args=["mcp"], env=ENV)
    return Client(params, mode=mode)


def _structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def _error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """The message of a call that must fail as a tool error (isError), not as a protocol error."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return _text(result)


class _Progress:
    """A progress callback recording every notification."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, str]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.updates.append((progress, message or ""))

    def check(self, stdout: str) -> None:
        """Several notifications, increasing, whose messages are the program's output, in order."""
        assert len(self.updates) >= 2, self.updates
        values = [value for value, _ in self.updates]
        assert values == sorted(set(values)), values
        assert values[-1] == len(stdout.encode())
        assert "".join(message for _, message in self.updates) == stdout


async def _run_with_progress(client: Client) -> None:
    progress = _Progress()
    result = await client.call_tool("run_code", {"language": "python", "code": LINES}, progress_callback=progress)
    data = _structured(result)
    assert data["status"] == "ok", data
    assert data["stdout"] == "".join(f"line {i}\n" for i in range(4))
    progress.check(data["stdout"])


async def _started_stdio(**kwargs: Any) -> asyncio.subprocess.Process:
    """`sandlot mcp` with raw pipes, initialized by hand (for the tests that stop it themselves)."""
    process = await asyncio.create_subprocess_exec(
        SANDLOT,
        "mcp",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **ENV},
        **kwargs,
    )
    await _send(process, INITIALIZE)
    answer = await _receive(process)
    assert answer["result"]["serverInfo"]["name"] == "sandlot", answer
    await _send(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return process


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _send(process: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(message).encode() + b"\n")
    await process.stdin.drain()


async def _receive(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    message = json.loads(line)
    assert isinstance(message, dict)
    return message


async def _exit_code(process: asyncio.subprocess.Process, timeout_s: float) -> tuple[int, str]:
    assert process.stderr is not None
    stderr = await asyncio.wait_for(process.stderr.read(), timeout_s)
    return await asyncio.wait_for(process.wait(), timeout_s), stderr.decode()


@contextlib.asynccontextmanager
async def _mcp_app(service: Service) -> AsyncIterator[str]:
    """create_app + install served by uvicorn as `sandlot serve` does; yields the /mcp URL."""
    app = create_app(service)
    try:
        async with live_server(app) as address:
            yield f"http://{address}/mcp"
    finally:
        await shutdown(app)


@contextlib.asynccontextmanager
async def _http_client(url: str, **headers: str) -> AsyncIterator[Client]:
    """The handshake era over streamable HTTP, with these headers (the transport leaves closing http to us)."""
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


# -------------------------------------------------------------------- stdio


@pytest.mark.root
async def test_stdio_conversation() -> None:
    async with _stdio() as client:
        assert client.server_info is not None and client.server_info.name == "sandlot"
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {
            "run_code",
            "judge",
            "list_languages",
            "open_session",
            "close_session",
            "create_session",
            "end_session",
            "write_file",
            "read_file",
            "list_files",
        }
        assert tools["run_code"].input_schema["required"] == ["language", "code"]

        hello = await client.call_tool("run_code", {"language": "python", "code": "print('hello')"})
        data = _structured(hello)
        assert (data["status"], data["exit_code"], data["stdout"]) == ("ok", 0, "hello\n")
        assert data["wall_time"] > 0 and data["memory_peak"] > 0 and data["truncated"] is False
        assert "status: ok" in _text(hello) and "hello" in _text(hello)

        languages = _structured(await client.call_tool("list_languages", {}))["languages"]
        python = next(row for row in languages if row["name"] == "python")
        assert python["version"] != "unknown" and "py" in python["aliases"]

        broken = _structured(await client.call_tool("run_code", {"language": "c", "code": "int main( { return 0; }"}))
        assert broken["status"] == "compile_error" and "error" in broken["compile_output"], broken

        await _run_with_progress(client)

        assert "unknown language 'brainfudge'" in await _error(
            client, "run_code", {"language": "brainfudge", "code": "+"}
        )
        assert (await _error(client, "run_code", {"language": "python"})).startswith("code: required")
        assert (await _error(client, "run_code", {"language": "python", "code": "", "colour": "red"})).startswith(
            "colour: unknown argument"
        )
        assert (await _error(client, "run_code", {"language": "python", "code": "", "time_limit": "fast"})).startswith(
            "time_limit: must be a number"
        )
        assert "exceeds the maximum" in await _error(
            client, "run_code", {"language": "python", "code": "pass", "memory_limit": 10**6}
        )
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("format_disk", {})


@pytest.mark.root
async def test_stdio_session_round_trip() -> None:
    async with _stdio() as client:
        session_id = _structured(await client.call_tool("create_session", {}))["session_id"]
        in_session: dict[str, Any] = {"session_id": session_id}

        written = await client.call_tool("write_file", {**in_session, "path": "data.txt", "content": "41\n"})
        assert _structured(written) == {"path": "data.txt", "size": 3}
        run = await client.call_tool("run_code", {**in_session, "language": "python", "code": SESSION_PROGRAM})
        assert _structured(run)["stdout"] == "wrote 42\n"

        text = _structured(await client.call_tool("read_file", {**in_session, "path": "out.txt"}))
        assert (text["encoding"], text["content"]) == ("utf8", "answer 42\n")
        binary = _structured(await client.call_tool("read_file", {**in_session, "path": "out.bin"}))
        assert binary["encoding"] == "base64" and base64.b64decode(binary["content"]) == b"\xff\x00\x29"
        copy = {**in_session, "path": "sub/copy.bin", "content": binary["content"], "encoding": "base64"}
        assert _structured(await client.call_tool("write_file", copy))["size"] == 3

        files = _structured(await client.call_tool("list_files", in_session))["files"]
        sizes = {row["path"]: row["size"] for row in files}
        assert {"data.txt": 3, "out.txt": 10, "out.bin": 3, "sub/copy.bin": 3}.items() <= sizes.items()

        assert "no such file" in await _error(client, "read_file", {**in_session, "path": "missing.txt"})
        assert (await _error(client, "write_file", {**in_session, "path": "../escape", "content": ""})).startswith(
            "path"
        )
        assert "invalid base64" in await _error(client, "write_file", {**copy, "content": "@@@"})

        assert _structured(await client.call_tool("end_session", in_session))["ended"] is True
        assert "not found or expired" in await _error(client, "list_files", in_session)
        assert "not found or expired" in await _error(
            client, "run_code", {**in_session, "language": "python", "code": "pass"}
        )


@pytest.mark.root
async def test_stdio_modern_protocol_reports_progress() -> None:
    """The 2026-07-28 era (no initialize handshake) reaches the same tools, progress included."""
    async with _stdio(mode="auto") as client:
        assert client.protocol_version != "2025-11-25"
        await _run_with_progress(client)


@pytest.mark.root
async def test_stdio_stops_on_eof() -> None:
    process = await _started_stdio()
    assert process.stdin is not None
    process.stdin.close()
    code, stderr = await _exit_code(process, 20)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert process.stdout is not None and await process.stdout.read() == b""  # nothing but the protocol


@pytest.mark.root
async def test_stdio_stops_on_sigterm_killing_running_code() -> None:
    process = await _started_stdio()
    sleeper = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    call = {"name": "run_code", "arguments": {"language": "python", "code": sleeper}, "_meta": {"progressToken": 7}}
    await _send(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
    output = ""
    while output != "started\n":  # the program's first line, as progress: it is running
        notification = await _receive(process)
        assert notification["method"] == "notifications/progress", notification
        output += notification["params"]["message"]
    process.send_signal(signal.SIGTERM)
    code, stderr = await _exit_code(process, 20)  # far less than the program's 60 s: it was killed
    assert code == 0, stderr
    assert "stopping on a signal" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------- HTTP


async def test_http_tools() -> None:
    async with running_service() as service, _mcp_app(service) as url:
        # The handshake era runs in the session manager, which the endpoint starts on first use.
        async with _http_client(url) as client:
            assert client.server_info is not None and client.server_info.name == "sandlot"
            languages = _structured(await client.call_tool("list_languages", {}))["languages"]
            assert "python" in {row["name"] for row in languages}
            await _run_with_progress(client)
            session_id = _structured(await client.call_tool("create_session", {}))["session_id"]
            service.pool.get_session("public", session_id)  # no keys: the tenant is public
        async with Client(url) as client:  # 2026-07-28: one HTTP exchange per request
            assert client.protocol_version != "2025-11-25"
            data = _structured(await client.call_tool("run_code", {"language": "python", "code": "print(6 * 7)"}))
            assert data["stdout"] == "42\n"


async def test_http_run_code_answers_the_whole_output_of_a_cancelled_task(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
    async with running_service() as service, _mcp_app(service) as url, _http_client(url) as client:
        submitted = note_submits(service, monkeypatch)
        call = asyncio.create_task(client.call_tool("run_code", {"language": "python", "code": code}))
        task_id = await submitted.get()
        await wait_running(service, "public", task_id)  # its whole first line is out
        assert await service.broker.cancel("public", task_id)  # as another door's cancel does
        async with asyncio.timeout(30):
            answer = await call
    data = _structured(answer)
    assert data["stdout"] == "started\n"
    assert data["status"] == "signaled" and data["message"] == "cancelled by request"
    assert _text(answer).startswith("status: cancelled (signaled)")


async def test_http_requires_a_key_when_keys_are_configured() -> None:
    keys = (ApiKey("secret-key", "alpha"), ApiKey("other-key", "beta"))
    async with running_service(api_keys=keys) as service, _mcp_app(service) as url:
        async with httpx.AsyncClient(timeout=30, headers={"Accept": "application/json, text/event-stream"}) as http:
            missing = await http.post(url, json=INITIALIZE)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["code"] == "unauthorized"
            wrong = await http.post(url, json=INITIALIZE, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            rebinding = await http.post(url, json=INITIALIZE, headers={**_bearer("secret-key"), "Host": "evil.example"})
            assert rebinding.status_code == 421  # a loopback server answers loopback names only

            # An MCP session belongs to the tenant that opened it: another key cannot use it.
            opened = await http.post(url, json=INITIALIZE, headers=_bearer("secret-key"))
            assert opened.status_code == 200, opened.text
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            assert (await http.post(url, json=ping, headers={**session, **_bearer("other-key")})).status_code == 404
            assert (await http.post(url, json=ping, headers={**session, **_bearer("secret-key")})).status_code == 200
        async with _http_client(url, Authorization="Bearer secret-key") as client:
            session_id = _structured(await client.call_tool("create_session", {}))["session_id"]
            service.pool.get_session("alpha", session_id)  # the key's tenant
            data = _structured(await client.call_tool("run_code", {"language": "python", "code": "print('hi')"}))
            assert data["stdout"] == "hi\n"
