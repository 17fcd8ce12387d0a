"""A session's files in the distributed mode: the same operations as ``SessionFiles``, done by its worker.

Theory of operation
-------------------
An API node holds no workdir. ``RemoteSessionFiles`` sends each operation
(list, read with a byte cap, write with the bytes) to the worker holding the
session (``broker.redis_session_files``); that worker runs the same link-safe
``hostfs`` operation on the session's workdir (``sandlot.worker_files``) and
answers with the result or the error, which is raised here as the same class
(so a door answers as in the embedded mode: 404 missing, 409 busy, 507 full,
400 refused). A session no worker holds yet (no run so far, or its worker died)
is taken by one of the live workers serving its level, as a first run would
be; when its files were lost with a dead worker the request answers 503
(``SessionWorkerGone``) and the session goes on with an empty workdir. A worker
that does not answer within ``timeout_s`` (the presence TTL: silent that long,
a worker is taken for dead) is 503 too, never a hang.

``figures`` (``GET /api/v1/sessions/{id}``) only reads: it asks the session's
live owner for its workdir's figures and never places a session; with no live
owner, or none answering in time, it answers None (the caller shows what Redis
knows) rather than a 503.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass
from typing import Any

from sandlot.broker.redis_session_files import RedisSessionFiles
from sandlot.errors import (
    AtCapacity,
    FileBusy,
    FileMissing,
    NoWorker,
    RejectedError,
    SessionNotFound,
    SessionWorkerGone,
)
from sandlot.sandbox.hostfs import FileInfo, Listing
from sandlot.sessions_store import WorkdirFigures

# The refusals a worker sends back by class name; any other RejectedError is sent as this base.
REFUSALS: dict[str, type[RejectedError]] = {
    cls.__name__: cls for cls in (RejectedError, SessionNotFound, FileMissing, FileBusy)
}
_MAX_HOPS = 3  # the session moved between looking up its worker and asking it: look again, a few times


@dataclass(frozen=True)
class RemoteSessionFiles:
    transport: RedisSessionFiles
    tenant: str
    session_id: str
    timeout_s: float

    async def write(self, path: str, data: bytes) -> None:
        await self._ask({"op": "write", "path": path}, data)

    async def read(self, path: str, max_bytes: int) -> bytes:
        """The file's bytes; refused when larger than ``max_bytes`` (the worker checks before sending)."""
        _, data = await self._ask({"op": "read", "path": path, "max_bytes": max_bytes})
        return data

    async def listing(self) -> Listing:
        header, _ = await self._ask({"op": "list"})
        files = [FileInfo(str(path), int(size)) for path, size in header["files"]]
        return Listing(files, bool(header["truncated"]))

    async def figures(self) -> WorkdirFigures | None:
        """The workdir's figures from the live worker holding it; None if none does or it did not answer."""
        target = await self.transport.target(self.tenant, self.session_id)
        if target.verdict == "gone":
            raise SessionNotFound(f"session {self.session_id!r} not found or expired", field="session_id")
        if target.verdict != "owner":  # its worker is gone (taken for dead): so are its files
            return None
        request = {"tenant": self.tenant, "session": self.session_id, "op": "stat"}
        answer = await self.transport.call(target.inboxes[0], request, b"", timeout_s=self.timeout_s)
        if answer is None:
            return None
        header, _ = answer
        raise_error(header)
        if not header.get("held"):  # the owner has no workdir of it (lost, or being opened): nothing to count
            return None
        return WorkdirFigures(
            busy=bool(header["busy"]),
            bytes_used=int(header["bytes_used"]),
            files_used=int(header["files_used"]),
            disk_limit_bytes=int(header["disk_limit_bytes"]),
            files_limit=int(header["files_limit"]),
        )

    async def _ask(self, operation: dict[str, Any], data: bytes = b"") -> tuple[dict[str, Any], bytes]:
        request = {"tenant": self.tenant, "session": self.session_id, **operation}
        full: set[str] = set()  # workers that said they hold as many sessions as they may: try the others
        hops = 0
        while hops < _MAX_HOPS:
            target = await self.transport.target(self.tenant, self.session_id)
            if target.verdict == "gone":
                raise SessionNotFound(f"session {self.session_id!r} not found or expired", field="session_id")
            if target.verdict == "none":
                raise NoWorker(target.inboxes[0] if target.inboxes else "")
            candidates = [inbox for inbox in target.inboxes if inbox not in full] or target.inboxes
            inbox = candidates[0] if target.verdict == "owner" else random.choice(candidates)  # noqa: S311 (load)
            answer = await self.transport.call(inbox, request, data, timeout_s=self.timeout_s)
            if answer is None:
                raise SessionWorkerGone(
                    f"the worker holding session {self.session_id!r} did not answer within {self.timeout_s:g} s; "
                    "if it is gone, the session's files went with it and the session starts again with an empty "
                    "workdir once the worker is taken for dead: retry shortly"
                )
            header, payload = answer
            error = header.get("error")
            if error == "full" and target.verdict == "pick" and len(candidates) > 1:
                full.add(inbox)  # placing the session: another live worker may have room (not a hop)
                continue
            if error != "elsewhere":  # elsewhere: another node's request placed it meanwhile
                raise_error(header)
                return header, payload
            hops += 1
        raise SessionWorkerGone(f"session {self.session_id!r} kept moving between workers; retry shortly")


def raise_error(header: dict[str, Any]) -> None:
    """Raise what the worker's answer says went wrong, as the class it was there; nothing if it went well."""
    error, message = header.get("error"), str(header.get("message", ""))
    if error is None:
        return
    if error in REFUSALS:
        field, reason = header.get("field"), header.get("reason")
        cls = REFUSALS[error]
        if field is not None and reason is not None and message == f"{field}: {reason}":
            raise cls.at(field, reason)  # a door renames the field (for_field) as for a local refusal
        raise cls(message, field=field)
    if error == "no_space":
        code = int(header.get("errno", errno.ENOSPC))
        raise OSError(code, os.strerror(code))  # the doors' NO_SPACE_ERRNOS check: 507 / a tool error
    if error == "full":
        raise AtCapacity("pool", message, retry_after_s=30.0)
    if error == "reset":
        raise SessionWorkerGone(message)
    raise SessionWorkerGone(f"the worker holding the session failed this request: {message}")
