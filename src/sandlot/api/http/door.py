"""What every HTTP route shares: the door context, the caller, body parsing, submitting, waiting.

Routes get the ``Door`` (the Service and the Authenticator) and the caller's
``Principal`` as FastAPI dependencies; both are ``async`` so that quota state is
only ever touched on the event loop, never from the threadpool.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import Receive

from sandlot.api.common.auth import Authenticator, Principal
from sandlot.api.http.errors import ApiError
from sandlot.broker import Broker, TaskSpec
from sandlot.errors import RejectedError
from sandlot.models import Event
from sandlot.service import Service

T = TypeVar("T")
MAX_IDEMPOTENCY_KEY_CHARS = 255
SHUTDOWN_RETRY_AFTER_S = 5.0  # another replica, or this one restarted, should answer by then

# What can decode to a lone surrogate: a \\uD800-\\uDFFF escape, or its UTF-8-ish bytes (json.loads decodes bytes
# with surrogatepass). Searched first so that the common body costs one C-level scan, not a walk.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")

_bearer = HTTPBearer(auto_error=False, description="An API key (only when the server has keys configured).")


@dataclass(frozen=True)
class Door:
    """The long-lived objects a route may use; built once in ``create_app``."""

    service: Service
    auth: Authenticator


async def get_door(conn: HTTPConnection) -> Door:
    door = conn.app.state.door
    assert isinstance(door, Door)
    return door


DoorDep = Annotated[Door, Depends(get_door)]


async def get_principal(
    door: DoorDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return door.auth.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header (for the WebSocket, which has no dependencies)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# ------------------------------------------------------------------ bodies


def parse_json(body: bytes, *, field: str = "body") -> Any:
    """JSON, refusing what json.loads would let through but no limit can use (NaN, Infinity)."""
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RejectedError(f"{field}: not valid JSON ({exc})", field=field) from exc
    if _MAYBE_SURROGATE.search(body):
        reject_lone_surrogates(data, whole=field)
    return data


def reject_lone_surrogates(data: Any, where: str = "", *, whole: str = "body") -> None:
    """Refuse a string no UTF-8 text can carry (a lone surrogate), naming where it was.

    JSON can spell one (``"\\ud800"``); passed on it would fail when encoded for
    the program, a file name or a reply, far from the request that caused it.
    ``where`` is the path inside the document (``files[1].name``); ``whole`` names the document.
    """
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError as exc:
            raise RejectedError(f"{where or whole}: a lone surrogate is not valid text", field=where or whole) from exc
    elif isinstance(data, dict):
        for key, value in data.items():
            reject_lone_surrogates(key, where, whole=whole)
            reject_lone_surrogates(value, f"{where}.{key}" if where else str(key), whole=whole)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            reject_lone_surrogates(value, f"{where or whole}[{index}]", whole=whole)


async def read_json(request: Request) -> Any:
    return parse_json(await request.body())


def decode_code(body: bytes) -> str:
    """A raw body that is the program's source: it must be UTF-8 text."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedError(f"code: the body is not valid UTF-8 (byte {exc.start})", field="code") from exc


def idempotency_key(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise RejectedError(
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters", field="Idempotency-Key"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# --------------------------------------------------------------- submitting


async def submit(
    door: Door, principal: Principal, spec: TaskSpec, *, idempotency: str | None = None, waits: bool = False
) -> TaskSpec:
    """Validate, take an execution slot of the caller's key, and queue the task.

    ``waits``: the caller holds its request open for the result (``/run``), so with no live
    worker for the level it gets a 503 now rather than a wait with no end (``Service.require_worker``).
    """
    service = door.service
    # A 4xx naming the field now, before the request touches its key's quota.
    spec = service.validate(spec, min_isolation=principal.min_isolation)
    if not service.accepting:
        raise ApiError(503, "unavailable", "the server is shutting down", retry_after_s=SHUTDOWN_RETRY_AFTER_S)
    if waits:
        await service.require_worker(spec)
    broker = service.broker
    tenant = principal.tenant

    async def still_running(task_id: str) -> bool:
        state = await broker.get(tenant, task_id)
        return state is not None and state.status != "done"

    async with await door.auth.admit(principal, still_running) as admission:
        submitted = await service.enqueue(spec, idempotency_key=idempotency)
        admission.bind(submitted.id)
    return submitted


# ------------------------------------------------------------------ waiting


async def subscribe(broker: Broker, tenant: str, task_id: str) -> AsyncGenerator[Event, None]:
    """The task's events (replayed, then live); closing this closes the broker's subscription."""
    inner = broker.subscribe(tenant, task_id)
    try:
        async for event in inner:
            yield event
    finally:
        close = getattr(inner, "aclose", None)
        if close is not None:
            await close()


async def race_disconnect(receive: Receive, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``awaitable`` unless the client goes away first: (True, result) or (False, None).

    Only for requests whose body was read already: what ``receive`` returns next
    is the disconnect (servers send it when the client closes, or after the response).
    """
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await finish_quietly(gone)
        if not work.done():
            await finish_quietly(work)
    if work.cancelled():  # by us, above: the client went first
        return False, None
    return True, work.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_task(broker: Broker, tenant: str, task_id: str) -> None:
    """Kill a task whose client went away; shielded, since we usually get here while being cancelled."""
    with anyio.CancelScope(shield=True):
        await broker.cancel(tenant, task_id)


async def finish_quietly(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it has cleaned up, even while we are being cancelled ourselves."""
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
