"""Submit and follow: the one request flow every door calls, whatever it parses and renders.

Theory of operation
-------------------
A door turns its request into a ``TaskSpec`` and hands it to ``Core.submit``:
the spec is validated first (a caller's mistake is refused before it touches
its key's quota), the server must still be accepting, a caller who waits for
the result needs a live worker for its level (else ``NoWorker``, not a wait
with no end), and then one execution slot of the caller's key is taken and
bound to the queued task (``Authenticator.admit``; the still-running check
below frees the slots of finished tasks).

Following is reading the broker's event stream of the task (replayed, then
live): ``events`` for a door that renders every event as it comes (SSE, the
WebSocket, text), ``follow`` for one that must not leave a run behind (it
cancels the task when its reader stops before the exit event), ``wait_exit``
and ``collect`` for a door that answers once the run is over. A task whose
record vanishes before its exit event (its result expired) ends the stream
early: those return None and each door says so in its own words.

``cancel`` kills a task's run for a client that went away; it is shielded,
since a door usually gets there while being cancelled itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import anyio

from sandlot.api.common.auth import Authenticator, Principal
from sandlot.broker import Broker, TaskSpec
from sandlot.errors import Unavailable
from sandlot.models import Event, ExitEvent
from sandlot.service import Service

SHUTTING_DOWN = "the server is shutting down"


@dataclass(frozen=True)
class Core:
    """The long-lived objects of the doors of one process: the Service and the one Authenticator.

    One Authenticator per process, shared by every door, so a key's quotas are one budget.
    """

    service: Service
    auth: Authenticator

    @property
    def broker(self) -> Broker:
        return self.service.broker

    async def submit(
        self, principal: Principal, spec: TaskSpec, *, idempotency_key: str | None = None, waits: bool = False
    ) -> TaskSpec:
        """Validate, take an execution slot of the caller's key, and queue the task.

        ``waits``: the caller holds its request open for the result, so with no live worker
        for the level it is refused now (``Service.require_worker``).
        """
        service = self.service
        principal.check_environment(spec.environment)
        spec, offered_there = await service.resolve_environment(spec)
        spec = service.validate(spec, min_isolation=principal.min_isolation, offered_there=offered_there)
        if not service.accepting:
            raise Unavailable(SHUTTING_DOWN)
        if waits:
            await service.require_worker(spec)
        running = functools.partial(self.still_running, spec.tenant)
        async with await self.auth.admit(principal, running) as slot:
            submitted = await service.enqueue(spec, idempotency_key=idempotency_key)
            slot.bind(submitted.id)
        return submitted

    async def still_running(self, tenant: str, task_id: str) -> bool:
        """Whether the task is queued or running (what a key's execution slot is held for)."""
        state = await self.broker.get(tenant, task_id)
        return state is not None and state.status != "done"

    async def events(self, tenant: str, task_id: str) -> AsyncGenerator[Event, None]:
        """The task's events (replayed, then live); closing this closes the broker's subscription."""
        inner = self.broker.subscribe(tenant, task_id)
        try:
            async for event in inner:
                yield event
        finally:
            close = getattr(inner, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):  # we are often here because the reader was cancelled
                    await close()

    async def follow(self, tenant: str, task_id: str) -> AsyncGenerator[Event, None]:
        """The events up to the exit event; a reader that stops before it (or fails) cancels the task."""
        finished = False
        try:
            async with contextlib.aclosing(self.events(tenant, task_id)) as events:
                async for event in events:
                    finished = isinstance(event, ExitEvent)
                    yield event
                    if finished:
                        return
        finally:
            if not finished:
                with contextlib.suppress(Exception):  # what ended the follow matters more than this
                    await self.cancel(tenant, task_id)

    async def wait_exit(self, tenant: str, task_id: str) -> ExitEvent | None:
        """The task's exit event; None when its record vanished first."""
        async with contextlib.aclosing(self.events(tenant, task_id)) as events:
            async for event in events:
                if isinstance(event, ExitEvent):
                    return event
        return None

    async def collect(self, tenant: str, task_id: str) -> list[Event] | None:
        """The task's events through its exit event; None when its record vanished first."""
        collected: list[Event] = []
        async with contextlib.aclosing(self.events(tenant, task_id)) as events:
            async for event in events:
                collected.append(event)
                if isinstance(event, ExitEvent):
                    return collected
        return None

    async def cancel(self, tenant: str, task_id: str) -> None:
        """Kill the task's run (nothing when it had finished already), even while the caller is being cancelled.

        Both shields: anyio's keeps an anyio cancel scope from interrupting the call, asyncio's keeps
        the call going when the task itself is cancelled natively (a gRPC handler's is).
        """
        with anyio.CancelScope(shield=True):
            await asyncio.shield(self.broker.cancel(tenant, task_id))
