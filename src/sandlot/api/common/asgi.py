"""What the doors served by the one ASGI app share (HTTP, Judge0, Piston, MCP): the core, a client's leaving.

The app built by ``api.http.app.create_app`` serves four doors; each finds the
process's ``Core`` on the app (``core_of``, or ``CoreDep`` in a route's
signature) rather than importing the HTTP door. A door that answers only when
the run is over races its wait against the client going away
(``race_disconnect``) and cancels the task when the client went first: the
box is not kept busy for nobody, and the request is counted as 499.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends
from starlette.requests import HTTPConnection, Request
from starlette.types import Receive

from sandlot.api.common.core import Core
from sandlot.api.common.parsing import parse_json

T = TypeVar("T")

# A response we never sent because the client went away first (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


async def core_of(conn: HTTPConnection) -> Core:
    """The process's Core, put on the app by ``create_app`` (a FastAPI dependency: ``CoreDep``)."""
    core = conn.app.state.core
    assert isinstance(core, Core)
    return core


CoreDep = Annotated[Core, Depends(core_of)]


async def read_json(request: Request) -> Any:
    """The request's body as JSON (``parse_json``)."""
    return parse_json(await request.body())


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


async def finish_quietly(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it has cleaned up, even while we are being cancelled ourselves."""
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
