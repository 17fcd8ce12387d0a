"""The distributed mode's session directory: sessions named in Redis, each bound to the worker holding its box.

A session is a hash on the ``{jobs}`` slot (``keys.session``): created by any
API node with what it was created with (``SessionRecord``: level, environment,
and for a stateful session its language and limits), with no owner until its
first job is taken. The worker that takes it
``bind``s it: from then on the session's jobs are routed to that worker's
inbox (``redis_scripts.route``), and the worker keeps the box between runs.
When that worker dies or leaves, the next worker to take one of its jobs binds
the session to itself and opens a fresh box (verdict ``reset``). A worker with
no room for another session gives it to the live worker with the most room, as
the workers' presences say (verdict ``moved``; ``full`` when none has any). The hash
expires with the session (absolute TTL, or idle time since its last job), and
``end`` deletes it; the worker holding the box learns either at its next
``presence`` and releases the box.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import cast

import redis.asyncio as aioredis

from sandlot.broker import SessionBinding, SessionRecord, SessionSummary, SessionVerdict
from sandlot.broker import redis_scripts as lua
from sandlot.broker.keys import Keys
from sandlot.broker.redis_wire import to_str

SESSION_ID_BYTES = 24  # as the pool's own session ids

# KEYS: session. -> false (no session) or {isolation, environment, created ms, expires ms, boxed, language}: all read at
# once, on Redis's clock. The idle deadline is the key's PTTL (each use re-arms it), the absolute one a field.
_SUMMARY = """
local f = redis.call('HMGET', KEYS[1], 'isolation', 'environment', 'created', 'expires_at', 'boxed', 'language')
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 or f[1] == false then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = tonumber(f[4])
if pttl >= 0 then expires = math.min(expires, now + pttl) end
return {f[1], f[2] or '', f[3], tostring(expires), f[5] or '', f[6] or ''}
"""


class RedisSessions:
    """``SessionDirectory`` on Redis; made by ``RedisBroker`` (``broker.sessions``), sharing its client."""

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
        self._inbox = inbox
        self._reachable = reachable
        self._create = client.register_script(lua.CREATE_SESSION)
        self._bind = client.register_script(lua.BIND)
        self._room = client.register_script(lua.SESSION_ROOM)
        self._record = client.register_script(lua.SESSION_RECORD)
        self._summary = client.register_script(_SUMMARY)

    async def create(self, tenant: str, record: SessionRecord, *, ttl_s: float, idle_s: float) -> str:
        """A new session's id; its box is opened by the worker that takes its first job, at its level."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        details = [record.isolation, record.environment, record.environment_digest, record.language, record.limits]
        async with self._reachable():
            await self._create(keys=[self._keys.session(tenant, session_id)], args=[_ms(ttl_s), _ms(idle_s), *details])
        return session_id

    async def room(self, level: str, *, stateful: bool) -> tuple[int, int]:
        """How many live workers serve ``level``, and how many more sessions of the kind they could open."""
        async with self._reachable():
            serving, room = await self._room(keys=self._queue, args=[level, "stateful" if stateful else "file"])
        return int(serving), int(room)

    async def isolation(self, tenant: str, session_id: str) -> str | None:
        async with self._reachable():
            level = await self._redis.hget(self._keys.session(tenant, session_id), "isolation")
        return None if level is None else to_str(level)

    async def record(self, tenant: str, session_id: str) -> SessionRecord | None:
        async with self._reachable():
            reply = await self._record(keys=[*self._queue, self._keys.session(tenant, session_id)])
        if reply is None:
            return None
        isolation, environment, digest, language, limits = (to_str(value) for value in reply[:5])
        return SessionRecord(isolation, environment, digest, language, limits, held=bool(int(reply[5])))

    async def summary(self, tenant: str, session_id: str) -> SessionSummary | None:
        async with self._reachable():
            reply = await self._summary(keys=[self._keys.session(tenant, session_id)])
        if reply is None:
            return None
        isolation, environment, created_ms, expires_ms, boxed, language = (to_str(part) for part in reply)
        return SessionSummary(
            isolation=isolation,
            environment=environment,
            created_at=int(created_ms) / 1000,
            expires_at=int(expires_ms) / 1000,
            placed=boxed != "",
            language=language,
        )

    async def end(self, tenant: str, session_id: str) -> bool:
        async with self._reachable():
            return bool(await self._redis.delete(self._keys.session(tenant, session_id)))

    async def exists(self, tenant: str, session_id: str) -> bool:
        async with self._reachable():
            return bool(await self._redis.exists(self._keys.session(tenant, session_id)))

    async def bind(
        self, tenant: str, session_id: str, *, have_box: bool, room: bool, stateful: bool = False
    ) -> SessionBinding:
        """Where a job of the session runs; this worker becomes its owner unless another live one is.

        ``room``: whether this worker could open a box for it (else ``moved`` to a worker with room for a
        session of its kind, ``stateful`` or not, or ``full``, and nothing is recorded).
        """
        async with self._reachable():
            verdict, left_ms = await self._bind(
                keys=[*self._queue, self._keys.session(tenant, session_id), self._inbox],
                args=[int(have_box), int(room), "stateful" if stateful else "file"],
            )
        return SessionBinding(cast(SessionVerdict, verdict.decode()), int(left_ms) / 1000)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
