"""A worker's side of session file requests (the distributed mode): API nodes ask, this worker answers.

Theory of operation
-------------------
``serve`` pops the requests sent to this worker (``broker.redis_session_files``)
and answers each in a task of its own, a few at a time. A request first binds
the session here (``SessionBoxes.bind_at``, or ``bind_stateful`` for a stateful
session, whose files are its interpreter's box's workdir, as a session's job does): a session
no worker held yet gets its workdir here; one another live worker holds
answers ``elsewhere`` (the API node looks again); one whose workdir was lost
with a dead worker is opened afresh here and answers ``reset`` (nothing done:
the client learns its files are gone). Then the same ``SessionFiles`` operation
as the embedded mode's runs on the workdir's fd, link-safe and off the event
loop; its refusals travel back by class name (``sessions_remote.REFUSALS``).
A ``stat`` (the figures of ``GET /api/v1/sessions/{id}``) only reads: it binds
nothing and restarts no idle period, and answers ``held: false`` when this
worker has no workdir of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from sandlot.broker import Distributed
from sandlot.broker.redis_session_files import FileRequest, RedisSessionFiles
from sandlot.errors import AtCapacity, BrokerUnavailable, RejectedError, SessionNotFound
from sandlot.pool import BoxPool, find_session
from sandlot.sessions import NO_SPACE_ERRNOS, SessionFiles, workdir_files
from sandlot.sessions_remote import REFUSALS
from sandlot.worker_sessions import SessionBoxes

log = logging.getLogger("sandlot.worker")

_BLOCK_S = 2.0  # one blocking read for requests; also how late a stopped server notices
_RETRY_S = 1.0  # after Redis failed a read: the presence loop says how long it is out
_CONCURRENT = 4  # requests answered at once (each is a thread for its file operation)
_RESET_MESSAGE = (
    "the session's files were lost with the worker that held them; the session goes on with an empty workdir: "
    "upload its files again"
)


async def serve(
    files: RedisSessionFiles, broker: Distributed, boxes: SessionBoxes, pools: Mapping[str, BoxPool]
) -> None:
    """Answer file requests until cancelled."""
    slots = asyncio.Semaphore(_CONCURRENT)
    answering: set[asyncio.Task[None]] = set()
    try:
        while True:
            await slots.acquire()
            try:
                request = await files.next_request(_BLOCK_S)
            except BrokerUnavailable as exc:
                slots.release()
                log.warning("session file requests: %s", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            except Exception:  # a malformed request (nobody of ours sent it), a bug: never stop answering
                slots.release()
                log.exception("session file request dropped")
                await asyncio.sleep(_RETRY_S)
                continue
            if request is None or request.expired:  # expired: its caller has given up already
                slots.release()
                continue
            task = asyncio.create_task(_answer(files, broker, boxes, pools, request), name="session-file-request")
            answering.add(task)
            task.add_done_callback(answering.discard)
            task.add_done_callback(lambda _: slots.release())
    finally:
        for task in answering:
            task.cancel()


async def _answer(
    files: RedisSessionFiles,
    broker: Distributed,
    boxes: SessionBoxes,
    pools: Mapping[str, BoxPool],
    request: FileRequest,
) -> None:
    try:
        header, data = await _perform(broker, boxes, pools, request)
    except Exception as exc:  # answered, never left to time out: the API node would take the worker for gone
        header, data = error_header(exc), b""
    with contextlib.suppress(BrokerUnavailable):  # the caller times out: it says the worker did not answer
        await files.reply(request, header, data)


async def _perform(
    broker: Distributed, boxes: SessionBoxes, pools: Mapping[str, BoxPool], request: FileRequest
) -> tuple[dict[str, Any], bytes]:
    tenant, session_id = str(request.header["tenant"]), str(request.header["session"])
    if request.header.get("op") == "stat":
        return _stat(boxes, pools, tenant, session_id), b""
    record = await broker.sessions.record(tenant, session_id)
    if record is None:
        raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
    if record.stateful:  # its files are its interpreter's box's workdir (started here if it is nowhere yet)
        verdict = await boxes.bind_stateful(broker, tenant, session_id)
    else:
        verdict = await boxes.bind_at(broker, tenant, session_id, record.isolation)
    if verdict == "elsewhere":
        return {"error": "elsewhere"}, b""
    if verdict == "reset":
        return {"error": "reset", "message": _RESET_MESSAGE}, b""
    session_files = _files_here(boxes, pools, tenant, session_id, stateful=record.stateful)
    operation, path = request.header.get("op"), str(request.header.get("path", ""))
    if operation == "list":
        listing = await session_files.listing()
        return {"files": [[f.path, f.size] for f in listing.files], "truncated": listing.truncated}, b""
    if operation == "read":
        return {}, await session_files.read(path, int(request.header["max_bytes"]))
    if operation == "write":
        await session_files.write(path, request.data)
        return {}, b""
    raise RejectedError(f"unknown session file operation {operation!r}", field="op")


def _files_here(
    boxes: SessionBoxes, pools: Mapping[str, BoxPool], tenant: str, session_id: str, *, stateful: bool
) -> SessionFiles:
    """The files of a session bound here."""
    if stateful:
        found = boxes.stateful_session(tenant, session_id)
        if found is None:  # ended since it was bound (expired here, or deleted)
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
        return SessionFiles(found)
    session = find_session(pools, tenant, session_id)
    # The directory's idle period restarted with the binding: this worker's own copy of it restarts too, or
    # a session used only through its files would expire here while Redis still names it.
    pools[session.isolation].sessions.touch(session)
    return workdir_files(session)


def _stat(boxes: SessionBoxes, pools: Mapping[str, BoxPool], tenant: str, session_id: str) -> dict[str, Any]:
    """The figures the embedded mode's ``Sessions.describe`` gives, of the workdir held here."""
    stateful = boxes.stateful_session(tenant, session_id)
    if stateful is not None:
        return {"held": True, **dataclasses.asdict(stateful.figures())}
    try:
        session = find_session(pools, tenant, session_id)
    except SessionNotFound:
        return {"held": False}
    return {"held": True, **dataclasses.asdict(pools[session.isolation].sessions.figures(session))}


def error_header(exc: Exception) -> dict[str, Any]:
    """The answer saying what went wrong, which ``sessions_remote`` raises again as the same class."""
    if isinstance(exc, RejectedError):
        name = type(exc).__name__ if type(exc).__name__ in REFUSALS else "RejectedError"
        return {"error": name, "message": str(exc), "field": exc.field, "reason": exc.reason}
    if isinstance(exc, AtCapacity):
        return {"error": "full", "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return {"error": "no_space", "errno": exc.errno}
    log.error("session file request failed", exc_info=exc)
    return {"error": "internal", "message": "the worker failed to handle the session's files"}
