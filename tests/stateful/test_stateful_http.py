"""Stateful sessions through the HTTP door: a real Service, real boxes, at both isolation levels.

Each test opens a session with ``POST /api/v1/sessions {"stateful": true}`` and sends
cells with ``POST /api/v1/run {"session_id", "code"}``, as a client would.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandlot.api.http.app import create_app
from sandlot.models import NOTICE_SESSION_RESET
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, running_service, wait_done, wait_running, wait_until

BOTH_LEVELS = True  # the isolation fixture runs each test at jail and gvisor
pytestmark = pytest.mark.root


@contextlib.asynccontextmanager
async def stateful(isolation: str, **server: Any) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    levels = {"gvisor_pool_size": 2 if isolation == "gvisor" else 0, **server}
    async with running_service(**levels) as service, asgi_client(create_app(service)) as client:
        yield service, client


async def open_session(client: httpx.AsyncClient, isolation: str, **extra: Any) -> str:
    reply = await client.post(
        "/api/v1/sessions", json={"stateful": True, "language": "python", "isolation": isolation, **extra}
    )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert (body["stateful"], body["language"], body["isolation"]) == (True, "python", isolation)
    assert body["expires_in_s"] > 0
    return str(body["session_id"])


async def cell(client: httpx.AsyncClient, session_id: str, code: str, **extra: Any) -> dict[str, Any]:
    reply = await client.post("/api/v1/run", json={"session_id": session_id, "code": code, **extra})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def test_variables_and_imports_survive_and_the_last_expression_is_the_value(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        first = await cell(client, sid, "import json\nx = 20\nprint('set', x)")
        assert (first["status"], first["stdout"], first["value"]) == ("ok", "set 20\n", None)
        second = await cell(client, sid, "y = x + 22\njson.dumps({'y': y})")
        assert (second["status"], second["value"]) == ("ok", repr('{"y": 42}'))
        error = await cell(client, sid, "print('before')\nundefined_name")
        assert (error["status"], error["stdout"]) == ("runtime_error", "before\n")
        assert "NameError: name 'undefined_name' is not defined" in error["stderr"]
        assert 'File "<cell>", line 2' in error["stderr"]
        after = await cell(client, sid, "x * 2", language="python")
        assert (after["status"], after["value"]) == ("ok", "40")  # the session lived on
        state = await client.get(f"/api/v1/sessions/{sid}")
        assert state.status_code == 200, state.text
        described = state.json()
        assert (described["stateful"], described["language"], described["isolation"]) == (True, "python", isolation)
        assert described["busy"] is False and described["files_used"] >= 1, described
        assert 0 < described["bytes_used"] <= described["disk_limit_bytes"], described
        assert described["created_at"] < described["expires_at"], described
        wrong = await client.post("/api/v1/run", json={"session_id": sid, "code": "1", "language": "bash"})
        assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "language"
        ended = await client.delete(f"/api/v1/sessions/{sid}")
        assert ended.status_code == 204
        gone = await client.post("/api/v1/run", json={"session_id": sid, "code": "x"})
        assert gone.status_code == 404, gone.text


async def test_an_infinite_loop_is_interrupted_and_the_session_lives_on(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        await cell(client, sid, "kept = 'still here'")
        looped = await cell(client, sid, "while True:\n    pass", limits={"wall_time_limit": 1, "time_limit": 5})
        assert looped["status"] == "timeout", looped
        assert "wall-clock time limit exceeded (1 s)" in looped["message"]
        assert "KeyboardInterrupt" not in looped["stderr"]
        after = await cell(client, sid, "kept")
        assert (after["status"], after["value"]) == ("ok", "'still here'")


async def test_a_cell_that_ignores_the_interrupt_restarts_the_interpreter_with_a_notice(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        await cell(client, sid, "kept = 1")
        stubborn = "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n"
        stubborn += "        pass\n"
        # (A sleep, not ``while True: pass``: CPython 3.11 does not catch an interrupt of that loop in its try.)
        looped = await cell(client, sid, stubborn, limits={"wall_time_limit": 1, "time_limit": 30})
        assert looped["status"] == "timeout", looped
        assert "interpreter was restarted" in looped["message"]
        after = await cell(client, sid, "'kept' in globals()")
        assert after["status"] == "ok" and after["value"] == "False"
        assert after["message"].startswith(NOTICE_SESSION_RESET)


async def test_two_sessions_never_share_state_and_the_boxes_bound_them(isolation: str) -> None:
    async with stateful(isolation, pool_size=3) as (service, client):
        a = await open_session(client, isolation)
        b = await open_session(client, isolation)
        third = await client.post("/api/v1/sessions", json={"stateful": True, "isolation": isolation})
        assert third.status_code == 429, third.text  # jail: the setting (pool - 1); gvisor: both boxes are held
        assert service.stateful is not None and service.stateful.count == 2
        metrics = await client.get("/metrics")
        assert "sandlot_stateful_sessions_active 2.0" in metrics.text
        await cell(client, a, "secret = 'a'\nopen('/box/mine', 'w').write('a')")
        in_b = await cell(client, b, "import os\n('secret' in globals(), os.path.exists('/box/mine'))")
        assert in_b["value"] == "(False, False)"


async def test_the_memory_limit_covers_the_sessions_life(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation, limits={"memory_limit": 96})
        first = await cell(client, sid, "a = bytearray(40 * 1024 * 1024)\nlen(a)")
        assert (first["status"], first["value"]) == ("ok", str(40 * 1024 * 1024))
        # Each cell alone fits; together they do not: the limit is the session's, not the cell's.
        second = await cell(client, sid, "b = bytearray(70 * 1024 * 1024)\nlen(b)")
        assert second["status"] == "memory_limit", second
        after = await cell(client, sid, "'a' in globals()")
        assert (after["status"], after["value"]) == ("ok", "False")
        assert after["message"].startswith(f"{NOTICE_SESSION_RESET}: the session's memory limit was reached")


async def test_a_cell_sees_only_its_box(isolation: str) -> None:
    probe = (
        "import os, socket\n"
        "def refused():\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', 8080), timeout=2)\n"
        "    except OSError:\n"
        "        return True\n"
        "    return False\n"
        "(os.getuid() != 0, refused(), os.path.exists('/var/lib/sandlot-test'), os.path.exists('/work'),"
        " sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1', str(os.getpid())])"
    )
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        seen = await cell(client, sid, probe)
        assert (seen["status"], seen["value"]) == ("ok", "(True, True, False, False, True)"), seen


async def test_an_idle_session_expires_and_gives_its_box_back(isolation: str) -> None:
    async with stateful(isolation, session_idle_s=0.5) as (service, client):
        sid = await open_session(client, isolation)
        pool = service.pools[isolation]
        assert pool.available == pool.size - 1
        await wait_until(lambda: service.stateful is not None and service.stateful.count == 0)
        await wait_until(lambda: pool.available == pool.size)
        gone = await client.post("/api/v1/run", json={"session_id": sid, "code": "1"})
        assert gone.status_code == 404, gone.text


async def test_a_cancelled_cell_stops_and_the_next_cell_gets_none_of_its_output(isolation: str) -> None:
    async with stateful(isolation) as (service, client):
        sid = await open_session(client, isolation)
        code = "import time\nprint('first', flush=True)\ntime.sleep(60)\nprint('late', flush=True)"
        queued = await client.post("/api/v1/execute", json={"session_id": sid, "code": code})
        task_id = queued.json()["task_id"]
        assert await wait_running(service, "public", task_id) == b"first\n"
        assert (await client.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
        result = (await wait_done(service, "public", task_id)).result
        assert (result.status.value, result.message) == ("signaled", "cancelled by request")
        after = await cell(client, sid, "print('next')\n21 * 2")
        assert (after["status"], after["stdout"], after["value"]) == ("ok", "next\n", "42")


async def test_a_node_session_keeps_its_declarations(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        reply = await client.post("/api/v1/sessions", json={"stateful": True, "language": "js", "isolation": isolation})
        assert reply.status_code == 201, reply.text
        assert reply.json()["language"] == "javascript"
        sid = reply.json()["session_id"]
        first = await cell(client, sid, "const os = require('os');\nlet n = 40;\nconsole.log('set', n)")
        assert (first["status"], first["stdout"], first["value"]) == ("ok", "set 40\n", None)
        second = await cell(client, sid, "n + 2")
        assert (second["status"], second["value"]) == ("ok", "42")
        error = await cell(client, sid, "nothing.here")
        assert error["status"] == "runtime_error" and "ReferenceError: nothing is not defined" in error["stderr"]
        assert "at <cell>:1:1" in error["stderr"] and "driver" not in error["stderr"]
        looped = await cell(client, sid, "while (true) {}", limits={"wall_time_limit": 1, "time_limit": 5})
        assert looped["status"] == "timeout", looped
        after = await cell(client, sid, "[n, typeof os.cpus]")
        assert (after["status"], after["value"]) == ("ok", "[ 40, 'function' ]")


async def test_cpu_output_and_value_caps_end_only_the_cell(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        await cell(client, sid, "kept = 5")
        spin = await cell(client, sid, "while True:\n    kept += 0", limits={"time_limit": 1, "wall_time_limit": 60})
        assert (spin["status"], spin["message"]) == ("timeout", "CPU time limit exceeded (1 s)"), spin
        flood = await cell(client, sid, "for _ in range(10**6):\n    print('x' * 99)", limits={"max_output": 64})
        assert (flood["status"], flood["truncated"]) == ("output_limit", True), flood["message"]
        assert len(flood["stdout"]) == 64 * 1024
        big = await cell(client, sid, "'y' * 100_000")
        assert big["value"].startswith("'" + "y" * 1000)
        assert big["value"].endswith("... [the value's repr is 100002 characters; cut at 65536]")
        after = await cell(client, sid, "kept")
        assert (after["status"], after["value"], after["message"]) == ("ok", "5", "")


@pytest.mark.jail_only("gVisor's sentry keeps memory the program freed: its cgroup usage stays near the peak")
async def test_a_cells_memory_peak_is_its_own(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        big = await cell(client, sid, "b = bytearray(64 * 1024 * 1024)\ndel b")
        small = await cell(client, sid, "1")
        assert big["memory_peak"] >= 64 * 1024 * 1024
        assert small["memory_peak"] < 48 * 1024 * 1024, small  # the earlier cell's 64 MiB are not counted


async def test_an_interpreter_that_exits_is_started_again_for_the_next_cell(isolation: str) -> None:
    async with stateful(isolation) as (_, client):
        sid = await open_session(client, isolation)
        await cell(client, sid, "kept = 1")
        gone = await cell(client, sid, "import os\nprint('bye', flush=True)\nos._exit(3)")
        assert (gone["status"], gone["exit_code"], gone["stdout"]) == ("runtime_error", None, "bye\n"), gone
        again = await cell(client, sid, "'kept' in globals()")
        assert (again["status"], again["value"]) == ("ok", "False")
        assert again["message"].startswith(f"{NOTICE_SESSION_RESET}: the interpreter ended")
        exited = await cell(client, sid, "raise SystemExit(4)")  # exit() ends the cell, not the session
        assert (exited["status"], exited["exit_code"]) == ("runtime_error", 4)
        assert (await cell(client, sid, "'kept' in globals()"))["message"] == ""
