"""The sessions one worker holds in the distributed mode: file sessions' workdirs, stateful sessions' boxes.

Theory of operation
-------------------
A session's first job opens its workdir in the worker that takes it (``bind``,
after the broker's session directory said where the session lives); its later
jobs are routed to that worker and run with that workdir. A stateful session's
first cell starts its interpreter here the same way (``bind_stateful``), in a
box it keeps. A worker with no room for another session gives it to the live
worker with most room (``moved``: the job goes there); with room nowhere the
job is refused (``AtCapacity``). Each time this worker
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

from sandlot.broker import Distributed, SessionBinding, TaskSpec
from sandlot.environments.shared import SharedEnvironments
from sandlot.errors import AtCapacity, SessionNotFound
from sandlot.pool import BoxPool, pool_for_run
from sandlot.stateful import StatefulSession, StatefulSessions

SessionKey = tuple[str, str]  # (tenant, session id)
Placement = Literal["here", "reset", "elsewhere"]
_INTERPRETER_LOST = "the session's interpreter was lost with its worker; this cell runs in a fresh one"
NO_ROOM = (
    "no worker has room for another session now: each holds as many as it may (max_sessions, "
    "max_stateful_sessions); end a session, or retry once one expires"
)


class SessionBoxes:
    """Binds sessions' jobs to this worker's boxes, and releases the boxes of sessions it lost."""

    def __init__(
        self,
        pools: Mapping[str, BoxPool],
        default_isolation: str,
        stateful: StatefulSessions | None = None,
        environments: SharedEnvironments | None = None,
    ) -> None:
        self._pools = pools
        self._default_isolation = default_isolation
        self._stateful = stateful
        self._environments = environments  # what a stateful session's environment needs fetched
        self._locks: weakref.WeakValueDictionary[SessionKey, asyncio.Lock] = weakref.WeakValueDictionary()
        self._generations: dict[SessionKey, int] = {}  # of the sessions whose box is here
        self._next_generation = itertools.count(1)  # 0 stands for "being opened": no generation yet
        self._chores: set[asyncio.Task[None]] = set()

    def held(self) -> dict[SessionKey, int]:
        """Every session whose box is here, with its generation; the others' generations are forgotten."""
        keys = [key for pool in self._pools.values() for key in pool.session_keys()]
        keys += self._stateful.keys() if self._stateful is not None else []
        held = {key: self._generations.get(key, 0) for key in keys}
        for key in self._generations.keys() - held.keys():
            del self._generations[key]  # a binding under way sets its own afresh once its box is open
        return held

    def stateful_session(self, tenant: str, session_id: str) -> StatefulSession | None:
        """The stateful session held here, if it is."""
        return self._stateful.find(tenant, session_id) if self._stateful is not None else None

    def room(self) -> dict[str, tuple[int, int]]:
        """By level, how many more file sessions and stateful sessions this worker could open (presence)."""
        stateful = self._stateful
        return {
            level: (pool.max_sessions - pool.session_count, stateful.room(level) if stateful is not None else 0)
            for level, pool in self._pools.items()
        }

    async def bind(self, broker: Distributed, spec: TaskSpec, session_id: str) -> Placement:
        """Make sure the session's box is here ("here"), unless another live worker holds it ("elsewhere").

        "reset": the box was lost with another worker and is opened afresh here; the run must say so first.
        """
        # The API node set the job's level to the session's own (Sessions.level_for_run).
        if spec.stateful:
            return await self.bind_stateful(broker, spec.tenant, session_id)
        return await self.bind_at(broker, spec.tenant, session_id, spec.isolation)

    async def bind_stateful(self, broker: Distributed, tenant: str, session_id: str) -> Placement:
        """``bind`` for a stateful session: its interpreter is started here when it has none yet."""
        stateful = self._stateful
        if stateful is None:
            raise AtCapacity("pool", "this worker runs no stateful sessions")
        key = (tenant, session_id)
        async with self._lock(key):
            have = stateful.find(tenant, session_id) is not None
            record = None if have else await broker.sessions.record(tenant, session_id)
            room = have or (record is not None and stateful.room(record.isolation) > 0)
            binding = await broker.sessions.bind(*key, have_box=have, room=room, stateful=True)
            placed = _placement(binding, session_id)
            if placed == "elsewhere" or binding.verdict == "ready":
                return placed
            if have:  # a stale interpreter: the session moved away and back while this worker looked dead
                with contextlib.suppress(SessionNotFound):
                    await stateful.end(tenant, session_id)
            record = record or await broker.sessions.record(tenant, session_id)
            if record is None:
                raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
            if record.environment_digest and self._environments is not None:
                await self._environments.ensure(record.environment, record.environment_digest)
            lost = _INTERPRETER_LOST if placed == "reset" else ""
            await stateful.adopt(tenant, session_id, record, expires_in_s=binding.expires_in_s, reset_reason=lost)
            self._generations[key] = next(self._next_generation)
        return placed

    async def bind_at(self, broker: Distributed, tenant: str, session_id: str, level: str) -> Placement:
        """``bind`` for a request at ``level`` (a job's, or a file request's: the session's own)."""
        key = (tenant, session_id)
        pool = pool_for_run(self._pools, level or self._default_isolation, tenant, None)
        async with self._lock(key):
            have_box = pool.has_session(*key)
            # A stale copy of the box would be replaced, so it leaves room too.
            room = have_box or pool.session_room
            binding = await broker.sessions.bind(*key, have_box=have_box, room=room)
            placed = _placement(binding, session_id)
            if placed != "elsewhere" and binding.verdict in ("new", "reset"):
                if have_box:  # a stale copy: the session moved away and back while this worker looked dead
                    with contextlib.suppress(SessionNotFound):
                        await pool.end_session(*key)
                await pool.adopt_session(*key, expires_in_s=binding.expires_in_s)
                self._generations[key] = next(self._next_generation)
        return placed

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
                if self._stateful is not None and self._stateful.find(*key) is not None:
                    with contextlib.suppress(SessionNotFound):
                        await self._stateful.end(*key)
                self._generations.pop(key, None)

    def _lock(self, key: SessionKey) -> asyncio.Lock:
        """One binding at a time per session here: two of its jobs must not both open a box."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


def _placement(binding: SessionBinding, session_id: str) -> Placement:
    """What a binding means for the job: here (its box here now), reset (a fresh box here) or elsewhere."""
    if binding.verdict == "gone":
        raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
    if binding.verdict == "full":
        raise AtCapacity("pool", NO_ROOM, retry_after_s=30.0)
    if binding.verdict in ("elsewhere", "moved"):  # moved: given to a worker with room; the job goes there
        return "elsewhere"
    return "reset" if binding.verdict == "reset" else "here"
