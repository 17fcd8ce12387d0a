"""Session file requests of the distributed mode: an API node asks the worker holding a session's workdir.

Theory of operation
-------------------
A session's workdir lives on one worker (``redis_sessions``: the session hash's
``owner``). An API node that must list, read or write one of its files looks
up where to send the request (``target``, one script): the owner while its
presence lasts, else the live workers serving the session's level, one of
which takes it (it binds the session as a first run would, see
``sandlot.worker_files``). The request is one list element pushed on that
worker's request list (``<inbox>:files``), naming a reply key made up for it;
the worker pops it (``next_request``), runs the file operation and pushes its
answer on the reply key with a short TTL (``reply``); the API node waits for
it with BLPOP (``call``), at most ``timeout_s``: a worker that does not answer
in time is taken for gone (None). A request or answer is a JSON header line
then the raw bytes (a file's content), so a file is never re-encoded. A
request left unread by a dead worker expires with its list; one the worker
reads after its caller gave up is dropped (its ``deadline`` passed).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from sandlot.broker import redis_scripts as lua
from sandlot.broker.keys import Keys
from sandlot.broker.redis_wire import to_str

_REPLY_KEY_BYTES = 16
_BLOCK_STEP_S = 4.0  # longest single blocking read: under the broker client's socket timeout
_SEPARATOR = b"\n"  # json.dumps never writes a raw newline: the header ends at the first one

TargetVerdict = Literal["gone", "owner", "pick", "none"]


@dataclass(frozen=True)
class Target:
    verdict: TargetVerdict
    inboxes: list[str]  # owner: the owner's; pick: the candidates; none: the session's level


@dataclass(frozen=True)
class FileRequest:
    """What a worker pops: the operation's header (tenant, session, op, path...) and bytes."""

    header: dict[str, Any]
    data: bytes

    @property
    def reply_key(self) -> str:
        return str(self.header["reply"])

    @property
    def expired(self) -> bool:
        return float(self.header.get("deadline", 0)) < time.time()


class RedisSessionFiles:
    """Made by ``RedisBroker`` (``broker.session_files``), sharing its client."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        queue: list[str],
        inbox: str,
        reachable: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self._redis = client
        self._keys = keys
        self._queue = queue
        self._requests = _requests_key(inbox)  # this process's own, when it is a worker
        self._reachable = reachable
        self._target = client.register_script(lua.SESSION_TARGET)

    async def target(self, tenant: str, session_id: str) -> Target:
        async with self._reachable():
            reply = await self._target(keys=[*self._queue, self._keys.session(tenant, session_id)])
        verdict, *inboxes = (to_str(part) for part in reply)
        return Target(cast(TargetVerdict, verdict), inboxes)

    async def call(
        self, inbox: str, header: dict[str, Any], data: bytes, *, timeout_s: float
    ) -> tuple[dict[str, Any], bytes] | None:
        """Send a request to the worker whose inbox is ``inbox``; its answer, or None if none came in time."""
        reply_key = f"{self._keys.prefix}:{{jobs}}:files-reply:{secrets.token_hex(_REPLY_KEY_BYTES)}"
        message = _encode({**header, "reply": reply_key, "deadline": time.time() + timeout_s}, data)
        requests = _requests_key(inbox)
        async with self._reachable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(requests, message)
            pipe.pexpire(requests, _ms(timeout_s * 2))  # a dead worker's unread requests go with their list
            await pipe.execute()
            deadline = time.monotonic() + timeout_s
            popped = None
            while popped is None and (left := deadline - time.monotonic()) > 0:
                # In steps shorter than the client's socket timeout, which a longer blocking read would trip.
                popped = await self._redis.blpop([reply_key], timeout=min(left, _BLOCK_STEP_S))
        if popped is None:
            return None
        return _decode(_raw(popped[1]))

    async def next_request(self, block_s: float) -> FileRequest | None:
        """The next request sent to this worker, waiting at most ``block_s``."""
        async with self._reachable():
            popped = await self._redis.blpop([self._requests], timeout=block_s)
        if popped is None:
            return None
        header, data = _decode(_raw(popped[1]))
        return FileRequest(header, data)

    async def reply(self, request: FileRequest, header: dict[str, Any], data: bytes = b"") -> None:
        ttl_ms = _ms(max(1.0, float(request.header.get("deadline", 0)) - time.time()))
        async with self._reachable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(request.reply_key, _encode(header, data))
            pipe.pexpire(request.reply_key, ttl_ms)  # never read when the caller gave up: gone with it
            await pipe.execute()


def _requests_key(inbox: str) -> str:
    return f"{inbox}:files"


def _encode(header: dict[str, Any], data: bytes) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + _SEPARATOR + data


def _decode(message: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, data = message.partition(_SEPARATOR)
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("a session file message's header is not a JSON object")
    return header, data


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()  # the client never decodes: bytes in practice


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
