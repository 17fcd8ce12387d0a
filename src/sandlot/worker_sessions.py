"""The session boxes one worker holds in the distributed mode.

Theory of operation
-------------------
A session's first job opens a box for it in the worker that takes it (``bind``,
after the broker's session directory said where the session lives); its later
jobs are routed to that worker and run in that box. Each time this worker
opens a session's box it gives it a new *generation*, so that a release
decided on an older look (``release``: the presence said the session is no
longer this worker's: ended, expired, or moved while this worker looked dead)
never closes a box that was reopened meanwhile. Generations come from one
counter for all sessions, never reused, so a session's entry can be forgotten
as soon as its box is gone (``held`` forgets those the pools no longer hold):
the bookkeeping stays as large as the sessions held, not as all ever seen. One
lock per session keeps a binding and a release of the same session apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import Mapping
from typing import Literal

from sandlot.broker import Distributed, TaskSpec
from sandlot.errors import AtCapacity, SessionNotFound
from sandlot.pool import BoxPool, pool_for_run

SessionKey = tuple[str, str]  # (tenant, session id)


class SessionBoxes:
    """Binds sessions' jobs to this worker's boxes, and releases the boxes of sessions it lost."""

    def __init__(self, pools: Mapping[str, BoxPool], default_isolation: str) -> None:
        self._pools = pools
        self._default_isolation = default_isolation
        self._locks: weakref.WeakValueDictionary[SessionKey, asyncio.Lock] = weakref.WeakValueDictionary()
        self._generations: dict[SessionKey, int] = {}  # of the sessions whose box is here
        self._next_generation = itertools.count(1)  # 0 stands for "being opened": no generation yet
        self._chores: set[asyncio.Task[None]] = set()

    def held(self) -> dict[SessionKey, int]:
        """Every session whose box is here, with its generation; the others' generations are forgotten."""
        held = {key: self._generations.get(key, 0) for pool in self._pools.values() for key in pool.session_keys()}
        for key in self._generations.keys() - held.keys():
            del self._generations[key]  # a binding under way sets its own afresh once its box is open
        return held

    async def bind(self, broker: Distributed, spec: TaskSpec, session_id: str) -> Literal["here", "reset", "elsewhere"]:
        """Make sure the session's box is here ("here"), unless another live worker holds it ("elsewhere").

        "reset": the box was lost with another worker and is opened afresh here; the run must say so first.
        """
        # The API node set the job's level to the session's own (Sessions.level_for_run).
        return await self.bind_at(broker, spec.tenant, session_id, spec.isolation)

    async def bind_at(
        self, broker: Distributed, tenant: str, session_id: str, level: str
    ) -> Literal["here", "reset", "elsewhere"]:
        """``bind`` for a request at ``level`` (a job's, or a file request's: the session's own)."""
        key = (tenant, session_id)
        pool = pool_for_run(self._pools, level or self._default_isolation, tenant, None)
        async with self._lock(key):
            have_box = pool.has_session(*key)
            # A stale copy of the box would be replaced, so it leaves room too.
            room = have_box or pool.session_room
            binding = await broker.sessions.bind(*key, have_box=have_box, room=room)
            if binding.verdict == "gone":
                raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
            if binding.verdict == "full":
                raise AtCapacity("pool", f"this worker's session limit ({pool.max_sessions}) is reached")
            if binding.verdict == "elsewhere":
                return "elsewhere"
            if binding.verdict in ("new", "reset"):
                if have_box:  # a stale copy: the session moved away and back while this worker looked dead
                    with contextlib.suppress(SessionNotFound):
                        await pool.end_session(*key)
                await pool.adopt_session(*key, expires_in_s=binding.expires_in_s)
                self._generations[key] = next(self._next_generation)
        return "reset" if binding.verdict == "reset" else "here"

    def release(self, held: Mapping[SessionKey, int], owned: set[SessionKey]) -> None:
        """Release, in the background, the boxes of the sessions ``held`` then that are not ``owned`` now."""
        for key, generation in held.items():
            if key not in owned:
                chore = asyncio.create_task(self._drop(key, generation), name=f"drop-session-{key[1]}")
                self._chores.add(chore)
                chore.add_done_callback(self._chores.discard)

    def cancel(self) -> None:
        """Stop the releases under way (the worker is stopping: its pools close every box)."""
        for chore in self._chores:
            chore.cancel()

    async def _drop(self, key: SessionKey, generation: int) -> None:
        async with self._lock(key):
            if self._generations.get(key, 0) == generation:  # not reopened since presence looked
                for pool in self._pools.values():
                    with contextlib.suppress(SessionNotFound):
                        await pool.end_session(*key)  # waits for a run in it to end
                self._generations.pop(key, None)

    def _lock(self, key: SessionKey) -> asyncio.Lock:
        """One binding at a time per session here: two of its jobs must not both open a box."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
