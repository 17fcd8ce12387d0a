"""What both gRPC doors share: who is calling, how errors become statuses, and following a task.

Every RPC runs inside ``Door.call``: it authenticates the caller with the
shared ``api.auth`` rules (the tenant is the API key's, else "public"; per-key
request rate), turns a ``SandlotError`` raised by the handler into
the matching gRPC status, and counts the request in ``sandlot_requests_total``
with the status it ended with, whatever path it took.

A door runs nothing itself: ``Door.submit`` takes an execution slot of the
caller's key and submits the TaskSpec, ``Door.follow`` relays the broker's
events. If the caller goes away before the exit event (the RPC was cancelled or
its deadline passed), the task is cancelled so its run is killed rather than
left to burn its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from sandlot.api.common.auth import PUBLIC_TENANT, Authenticator, Principal
from sandlot.api.common.errors import Kind, classify
from sandlot.broker import TaskSpec
from sandlot.errors import RejectedError, SandlotError
from sandlot.models import Event, ExitEvent
from sandlot.service import Service

FIELD_METADATA_KEY = "sandlot-field"  # trailing metadata naming the rejected request field
TASK_ID_METADATA_KEY = "sandlot-task-id"  # initial metadata naming the task

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# The caller's mistakes and the server's troubles never share a status.
STATUS = {
    Kind.REJECTED: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.CONFLICT: grpc.StatusCode.ABORTED,
    Kind.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Kind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


class Refused(SandlotError):
    """The door refuses the call itself (e.g. while shutting down): a status, never an event."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Call:
    """One RPC in progress: who calls, and the status code it will be counted with."""

    principal: Principal
    code: grpc.StatusCode = grpc.StatusCode.OK

    @property
    def tenant(self) -> str:
        return self.principal.tenant


def status_for(exc: SandlotError) -> grpc.StatusCode:
    """The gRPC status of an error (``Refused`` names its own)."""
    return exc.code if isinstance(exc, Refused) else STATUS[classify(exc).kind]


def _details(exc: SandlotError) -> str:
    message = str(exc)
    field = exc.field if isinstance(exc, RejectedError) else None
    if field and field not in message:
        return f"{field}: {message}"
    return message


def _bearer(context: Context) -> str | None:
    """The KEY of "authorization: Bearer KEY", or None when there is none."""
    header = next((value for key, value in context.invocation_metadata() or () if key == "authorization"), None)
    scheme, _, token = str(header or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Door:
    """What the gRPC servicers share: the Service and the API-key state."""

    def __init__(self, service: Service, authenticator: Authenticator | None = None) -> None:
        self.service = service
        self._auth = authenticator or Authenticator(service.server.api_keys)

    @contextlib.asynccontextmanager
    async def call(self, context: Context, door: str) -> AsyncIterator[Call]:
        """Authenticate, map errors to statuses, and count the request once, however it ends."""
        current = Call(Principal(PUBLIC_TENANT))
        try:
            current.principal = self._auth.authenticate(_bearer(context))
            yield current
        except SandlotError as exc:
            current.code = status_for(exc)
            field = exc.field if isinstance(exc, RejectedError) else None
            if field:
                context.set_trailing_metadata(((FIELD_METADATA_KEY, field),))
            await context.abort(current.code, _details(exc))
        except (asyncio.CancelledError, GeneratorExit):
            current.code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            current.code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self.service.metrics.requests.labels(door=door, code=current.code.name).inc()

    async def submit(self, current: Call, spec: TaskSpec) -> TaskSpec:
        """Queue spec, within the caller's quota of executions in flight."""
        service = self.service
        # INVALID_ARGUMENT now, before the call touches its key's quota.
        spec = service.validate(spec, min_isolation=current.principal.min_isolation)
        if not service.accepting:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        await service.require_worker(spec)  # every RPC here follows its task: with no live worker, UNAVAILABLE
        async with await self._auth.admit(current.principal, functools.partial(self._running, spec.tenant)) as slot:
            spec = await service.enqueue(spec)
            slot.bind(spec.id)
        return spec

    async def follow(self, spec: TaskSpec) -> AsyncIterator[Event]:
        """The events of a submitted task up to its exit event; leaving early cancels the task."""
        service = self.service
        finished = False
        try:
            async for event in service.broker.subscribe(spec.tenant, spec.id):
                finished = isinstance(event, ExitEvent)
                yield event
        finally:
            if not finished:
                # Shielded: we are usually here because this RPC was cancelled.
                with contextlib.suppress(Exception):
                    await asyncio.shield(service.broker.cancel(spec.tenant, spec.id))

    async def _running(self, tenant: str, task_id: str) -> bool:
        state = await self.service.broker.get(tenant, task_id)
        return state is not None and state.status != "done"
