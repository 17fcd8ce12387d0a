"""A WebSocket's stdin is bounded per connection: a program that never reads cannot make the server hoard it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sandlot.api.http.app import create_app
from sandlot.broker import Control
from tests.api.http.test_http import live_server, running_service, wait_done

_CHUNK = "x" * 65536
_BOUND = 1024 * 1024


async def test_stdin_past_the_bound_closes_1009_and_nothing_more_is_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_service(ws_max_stdin_bytes=_BOUND) as service, live_server(create_app(service)) as address:
        queued: list[int] = []
        relay = service.broker.control

        async def counting_control(tenant: str, task_id: str, message: Control) -> Any:
            queued.append(len(message.data))  # what reached the broker, to wait there until the program reads
            return await relay(tenant, task_id, message)

        monkeypatch.setattr(service.broker, "control", counting_control)
        async with connect(f"ws://{address}/api/v1/ws", max_size=None) as ws:
            await ws.send(json.dumps({"type": "run", "language": "bash", "code": "sleep 60"}))
            started = json.loads(await ws.recv())
            assert started == {"type": "stage", "stage": "run"}
            reader = asyncio.create_task(_read_until_closed(ws))
            with contextlib.suppress(ConnectionClosed):  # the close may come while we still send
                for _ in range(16 * _BOUND // len(_CHUNK)):  # 16 times the bound
                    await ws.send(json.dumps({"type": "stdin", "data": _CHUNK}))
            messages = await reader
        assert ws.close_code == 1009
        assert messages[-1]["type"] == "error"
        assert f"over {_BOUND} bytes" in messages[-1]["error"]["message"]
        assert sum(queued) <= _BOUND
        task_id = next(iter(service.broker._tasks))  # type: ignore[attr-defined]
        exit_event = await wait_done(service, "public", task_id)
        assert exit_event.result.message.startswith("cancelled")


async def _read_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            messages.append(json.loads(await ws.recv()))
    return messages
