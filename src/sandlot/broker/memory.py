"""The embedded broker: everything in this process, no Redis needed.

Queued tasks wait in per-tenant FIFOs served in rotation; each task keeps its
event history (for replay) and a condition that wakes subscribers; results are
dropped ``result_ttl_s`` after the task ends, by one timer per task.

Finished tasks' output in memory is bounded by ``max_result_bytes``: past it
the oldest finished tasks' events go to disk (``spill.SpillDir``) and are read
back from there by ``get`` and ``subscribe`` until their TTL ends. Without a
spill directory they are dropped early instead (a door then answers 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sandlot.broker import (
    Control,
    TaskSpec,
    TaskState,
    TaskStatus,
    cancelled_before_start,
)
from sandlot.broker.spill import SpillDir, payload_bytes
from sandlot.config import SERVER_DEFAULTS
from sandlot.errors import AtCapacity
from sandlot.fairness import TenantRotation
from sandlot.models import Event, ExitEvent

_log = logging.getLogger(__name__)


@dataclass
class _Task:
    spec: TaskSpec
    status: TaskStatus = "queued"
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    controls: asyncio.Queue[Control] = field(default_factory=asyncio.Queue)
    exit: ExitEvent | None = None
    idempotency_key: str | None = None
    spilled: bool = False  # events and exit are on disk, not here


class MemoryBroker:
    def __init__(
        self,
        *,
        max_queued: int,
        result_ttl_s: float = SERVER_DEFAULTS.result_ttl_s,
        max_result_bytes: int = SERVER_DEFAULTS.result_memory_bytes,
        spill_dir: Path | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.result_ttl_s = result_ttl_s
        self.max_result_bytes = max_result_bytes
        self._spill = SpillDir(spill_dir) if spill_dir is not None else None
        self._retained: dict[str, int] = {}  # finished tasks whose output is in memory, oldest first: bytes
        self.retained_bytes = 0
        self._spilling = asyncio.Lock()
        self._tasks: dict[str, _Task] = {}
        self._queue: TenantRotation[str] = TenantRotation()  # task ids
        self._available = asyncio.Condition()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    # ------------------------------------------------------------ doors

    async def submit(self, spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec:
        if idempotency_key is not None:
            earlier = self._idempotency.get((spec.tenant, idempotency_key))
            if earlier is not None and earlier in self._tasks:
                return self._tasks[earlier].spec
        if len(self._queue) >= self.max_queued:
            raise AtCapacity("queue", f"{len(self._queue)} executions are already queued")
        task = _Task(spec, idempotency_key=idempotency_key)
        self._tasks[spec.id] = task
        if idempotency_key is not None:
            self._idempotency[(spec.tenant, idempotency_key)] = spec.id
        self._queue.push(spec.tenant, spec.id)
        async with self._available:
            self._available.notify()
        return spec

    async def get(self, tenant: str, task_id: str) -> TaskState | None:
        task = self._tasks.get(task_id)
        if task is None or task.spec.tenant != tenant:
            return None
        exit_event = task.exit
        if task.spilled:
            events = await self._read_spilled(task_id)
            exit_event = events[-1] if events and isinstance(events[-1], ExitEvent) else None
            if exit_event is None:
                return None  # its file is gone: as good as expired
        return TaskState(task.spec.id, tenant, task.status, task.spec.created, exit_event, task.spec)

    async def subscribe(self, tenant: str, task_id: str) -> AsyncIterator[Event]:
        """Replay from the first event, then follow live until the exit event."""
        task = self._tasks.get(task_id)
        if task is None or task.spec.tenant != tenant:
            return
        sent = 0
        while True:
            async with task.changed:
                await task.changed.wait_for(functools.partial(_has_more, task, sent))
                batch = None if task.spilled else task.events[sent:]
            if batch is None:  # finished and moved to disk meanwhile: the rest is there
                for event in (await self._read_spilled(task_id))[sent:]:
                    yield event
                return
            for event in batch:
                yield event
                if isinstance(event, ExitEvent):
                    return
            sent += len(batch)

    async def control(self, tenant: str, task_id: str, message: Control) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.spec.tenant != tenant or task.status == "done":
            return False
        task.controls.put_nowait(message)
        return True

    async def cancel(self, tenant: str, task_id: str) -> bool:
        """Cancel a queued task at once, or ask the worker to kill a running one."""
        task = self._tasks.get(task_id)
        if task is None or task.spec.tenant != tenant or task.status == "done":
            return False
        if task.status == "queued":
            self._queue.remove(tenant, task_id)
            await self.finish(task_id, cancelled_before_start(task.spec))
            return True
        task.controls.put_nowait(Control("cancel"))
        return True

    def queue_depth(self) -> int:
        return len(self._queue)

    # ----------------------------------------------------------- workers

    async def claim(self) -> TaskSpec:
        async with self._available:
            await self._available.wait_for(lambda: len(self._queue) > 0)
            task = self._tasks[self._queue.pop()]
            task.status = "running"  # claimed: from now on a cancel goes to the worker
            return task.spec

    async def mark_running(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            task.status = "running"

    async def publish(self, task_id: str, event: Event) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        async with task.changed:
            task.events.append(event)
            task.changed.notify_all()

    async def finish(self, task_id: str, exit_event: ExitEvent) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.status == "done":
            return  # exactly one terminal result per task
        last = task.events[-1].seq if task.events else 0
        if exit_event.seq <= last:  # built outside the engine (a failure): it still comes last
            exit_event = dataclasses.replace(exit_event, seq=last + 1)
        task.exit = exit_event
        task.status = "done"
        async with task.changed:
            task.events.append(exit_event)
            task.changed.notify_all()
        loop = asyncio.get_running_loop()
        self._expiry[task_id] = loop.call_later(self.result_ttl_s, self._forget, task_id)
        size = payload_bytes(task.events)
        self._retained[task_id] = size
        self.retained_bytes += size
        await self._keep_within_budget()

    async def _keep_within_budget(self) -> None:
        """Spill (or drop) the oldest finished tasks' output until what stays in memory fits the budget.

        A subscriber already replaying a task keeps the events it holds; later
        readers read them from disk. One spill at a time, oldest first; until it is
        written, memory holds up to one result more than the budget.
        """
        async with self._spilling:
            await self._spill_oldest()

    async def wait_spills(self) -> None:
        """Return once no spill is under way (what is in memory is then within the budget)."""
        async with self._spilling:
            pass

    async def _spill_oldest(self) -> None:
        while self.retained_bytes > self.max_result_bytes and self._retained:
            task_id = next(iter(self._retained))
            self.retained_bytes -= self._retained.pop(task_id)
            task = self._tasks.get(task_id)
            if task is None:
                continue
            if self._spill is None or not self._spill.can_hold(task_id):
                self._forget(task_id)
                continue
            try:
                await asyncio.to_thread(self._spill.write, task_id, list(task.events))
            except OSError as exc:  # a full or broken disk: the budget still holds, this result goes early
                _log.warning("result of %s not spilled, dropped before its TTL: %s", task_id, exc)
                self._forget(task_id)
                continue
            if self._tasks.get(task_id) is not task:  # expired while we wrote
                await asyncio.to_thread(self._spill.remove, task_id)
                continue
            async with task.changed:
                task.spilled = True
                task.events = []
                task.exit = None
                task.changed.notify_all()

    async def _read_spilled(self, task_id: str) -> list[Event]:
        assert self._spill is not None
        return await asyncio.to_thread(self._spill.read, task_id) or []

    async def controls(self, task_id: str) -> AsyncIterator[Control]:
        task = self._tasks.get(task_id)
        if task is None:
            return
        while True:
            yield await task.controls.get()

    def _forget(self, task_id: str) -> None:
        self._expiry.pop(task_id, None)
        self.retained_bytes -= self._retained.pop(task_id, 0)
        task = self._tasks.pop(task_id, None)
        if task is not None and task.spilled and self._spill is not None:
            self._spill.remove(task_id)  # one unlink: cheap enough for a timer callback
        if task is not None and task.idempotency_key is not None:
            self._idempotency.pop((task.spec.tenant, task.idempotency_key), None)

    async def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        if self._spill is not None:
            self._spill.close()
        with contextlib.suppress(Exception):
            async with self._available:
                self._available.notify_all()


def _has_more(task: _Task, sent: int) -> bool:
    return task.spilled or len(task.events) > sent
