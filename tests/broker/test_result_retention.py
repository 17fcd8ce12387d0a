"""Finished tasks' output kept in memory stays within ``result_memory_bytes``; older results come from disk."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import httpx
import pytest

from sandlot.api.http.app import create_app
from sandlot.broker.memory import MemoryBroker
from sandlot.broker.spill import SpillDir, payload_bytes
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, parse_sse, running_service

_BUDGET = 1024 * 1024
_OUTPUT = 400_000  # bytes of stdout per run: five runs are twice the budget
_PRINTER = f"import sys\nsys.stdout.write(sys.argv[1] * {_OUTPUT})\n"


async def _runs(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for i in range(count):
        run = {"language": "python", "code": _PRINTER, "args": [str(i)], "limits": {"max_output": 1024}}
        answer = (await client.post("/api/v1/run", json=run)).json()
        assert answer["status"] == "ok" and len(answer["stdout"]) == _OUTPUT, answer.get("message")
        ids.append(answer["task_id"])
    return ids


def _held(broker: MemoryBroker) -> int:
    """Output bytes the broker's tasks hold in memory, counted from the tasks themselves."""
    return sum(payload_bytes(task.events) for task in broker._tasks.values())


def _broker(service: Service) -> MemoryBroker:
    assert isinstance(service.broker, MemoryBroker)
    return service.broker


async def test_results_past_the_budget_are_spilled_and_still_readable() -> None:
    async with running_service(result_memory_bytes=_BUDGET) as service, asgi_client(create_app(service)) as client:
        ids = await _runs(client, 5)
        broker = _broker(service)
        await broker.wait_spills()  # the last answer went out before its finish made room
        assert _held(broker) <= _BUDGET < 5 * _OUTPUT
        assert broker.retained_bytes == _held(broker)
        spilled = sorted(p.name for p in (broker._spill.path if broker._spill else Path()).glob("*.jsonl"))
        assert spilled and f"{ids[0]}.jsonl" in spilled  # the oldest went first
        for i, task_id in enumerate(ids):  # every result whole, from memory or from disk
            body = (await client.get(f"/api/v1/tasks/{task_id}")).json()
            assert body["result"]["stdout"] == str(i) * _OUTPUT
        replay = parse_sse((await client.get(f"/api/v1/tasks/{ids[0]}/events")).text)
        assert "".join(e["data"]["data"] for e in replay if e["event"] == "output") == "0" * _OUTPUT
        spill_dir = broker._spill.path if broker._spill else None
    assert spill_dir is not None and not spill_dir.exists()  # removed with the broker


async def test_without_a_spill_directory_old_results_expire_as_404() -> None:
    broker = MemoryBroker(max_queued=8, max_result_bytes=_BUDGET)
    async with running_service(broker=broker) as service, asgi_client(create_app(service)) as client:
        ids = await _runs(client, 5)
        await broker.wait_spills()
        assert _held(broker) <= _BUDGET
        gone = await client.get(f"/api/v1/tasks/{ids[0]}")
        assert gone.status_code == 404
        assert ids[0] in gone.json()["error"]["message"]
        assert (await client.get(f"/api/v1/tasks/{ids[-1]}")).json()["result"]["stdout"] == "4" * _OUTPUT


def test_a_dead_brokers_spill_directory_is_swept(tmp_path: Path) -> None:
    dead = SpillDir(tmp_path)
    dead_path = dead.path
    dead.close()
    dead_path.mkdir()  # as a crashed process leaves it: files, and a lock nobody holds
    (dead_path / ".lock").touch()
    (dead_path / "x.jsonl").write_text(json.dumps({}))
    live = SpillDir(tmp_path)
    other = SpillDir(tmp_path)  # a second live one does not sweep the first
    assert not dead_path.exists()
    assert live.path.exists() and other.path.exists()
    live.close()
    other.close()


async def test_a_disk_that_cannot_take_a_spill_drops_the_result_not_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: SpillDir, task_id: str, events: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpillDir, "write", full_disk)  # the disk is the collaborator here; the budget is tested
    async with running_service(result_memory_bytes=_BUDGET) as service, asgi_client(create_app(service)) as client:
        ids = await _runs(client, 5)  # every run still answers whole
        broker = _broker(service)
        await broker.wait_spills()
        assert _held(broker) <= _BUDGET
        assert (await client.get(f"/api/v1/tasks/{ids[0]}")).status_code == 404
        assert (await client.get(f"/api/v1/tasks/{ids[-1]}")).json()["result"]["stdout"] == "4" * _OUTPUT
