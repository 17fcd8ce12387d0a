"""The file sessions one pool holds: a workdir each, not a box.

Theory of operation
-------------------
A session is a (tenant, id) pair with a workdir (``sandbox.workdirs``: its own
tmpfs and quota), an isolation level, an optional environment and deadlines.
It pins no box: ``BoxPool.lease`` with a session id takes any free box, mounts the
session's workdir over the box's /box for the run, and unmounts it after; the
session's lock keeps its runs one at a time. So the number of sessions is
bounded by memory (``max_sessions``), not by the pool's size.

Sessions end by ``end``, by their absolute TTL, or after an idle period; one
background task sleeps until the next such deadline (re-armed when sessions
change) and frees expired workdirs. A session whose run is under way is never
expired under it: the run's end re-arms the task. The task is woken only by a
deadline earlier than the one it sleeps towards (a new session, a run that ended
past its session's expiry): a run's end only pushes its session's deadline later,
so it costs no look over every session (with thousands idle, that look was most of
what a session run added to a plain one). Ids are random and looked up
together with the tenant, so another tenant's id finds nothing. In distributed
mode sessions are named by the broker's directory and ``adopt``ed here when
their first job arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sandlot.errors import AtCapacity, SessionNotFound
from sandlot.sandbox.workdirs import Usage, Workdir, Workdirs

__all__ = ["Session", "SessionStore", "WorkdirFigures"]


@dataclass
class Session:
    id: str
    tenant: str
    isolation: str
    workdir: Workdir
    created: float
    last_used: float
    expires_at: float
    environment: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    active_runs: int = 0
    owner: tuple[int, int] = (0, 0)  # host uid, gid its files belong to (the last box's)

    def deadline(self, idle_s: float) -> float:
        return min(self.expires_at, self.last_used + idle_s)

    def usage(self) -> Usage:
        return self.workdir.usage()


@dataclass(frozen=True)
class WorkdirFigures:
    """What a session's workdir holds and may hold, where it is (this process, or the worker answering)."""

    busy: bool  # a run of it is under way or waiting for a box
    bytes_used: int
    files_used: int  # files, directories and links, the workdir itself included
    disk_limit_bytes: int | None  # None: no workdir yet, so no quota yet (distributed, never used)
    files_limit: int | None


def _not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")


class SessionStore:
    """Created by a pool; ``start`` after the pool's own, ``close`` before it."""

    def __init__(
        self,
        workdirs: Workdirs,
        isolation: str,
        *,
        max_sessions: int,
        ttl_s: float,
        idle_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.workdirs = workdirs
        self.isolation = isolation
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.clock = clock
        self._sessions: dict[tuple[str, str], Session] = {}
        self._wakeup = asyncio.Event()
        self._sleeping_until: float | None = None  # the deadline the expiry task sleeps towards (None: none)
        self.looks = 0  # how often the expiry task looked over every session
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.workdirs.check()
        self._task = asyncio.create_task(self._expire(), name="sandlot-session-expiry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            self.workdirs.remove(session.workdir)  # a run still leased is ended by the pool's close

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def room(self) -> bool:
        return len(self._sessions) < self.max_sessions

    def keys(self) -> list[tuple[str, str]]:
        return list(self._sessions)

    def idle(self) -> int:
        return sum(1 for s in self._sessions.values() if s.active_runs == 0)

    async def create(self, tenant: str, *, environment: str = "") -> Session:
        if not self.room:
            raise AtCapacity("pool", f"the session limit ({self.max_sessions}) is reached", retry_after_s=30.0)
        return await self._open(tenant, secrets.token_urlsafe(24), self.ttl_s, environment)

    async def adopt(self, tenant: str, session_id: str, *, expires_in_s: float) -> Session:
        """Open a workdir for a session named elsewhere (the distributed mode's directory)."""
        existing = self._sessions.get((tenant, session_id))
        if existing is not None and existing.deadline(self.idle_s) > self.clock():
            return existing
        if not self.room:
            raise AtCapacity(
                "pool", f"this worker's session limit ({self.max_sessions}) is reached", retry_after_s=30.0
            )
        return await self._open(tenant, session_id, min(self.ttl_s, expires_in_s), "")

    async def _open(self, tenant: str, session_id: str, ttl_s: float, environment: str) -> Session:
        workdir = self.workdirs.create()  # a few syscalls: no thread needed
        now = self.clock()
        session = Session(session_id, tenant, self.isolation, workdir, now, now, now + ttl_s, environment)
        stale = self._sessions.pop((tenant, session_id), None)
        self._sessions[(tenant, session_id)] = session
        if stale is not None:
            await self._retire(stale)
        self._wake_for(session)
        return session

    def find(self, tenant: str, session_id: str) -> Session | None:
        session = self._sessions.get((tenant, session_id))
        if session is None or session.deadline(self.idle_s) <= self.clock():
            return None
        return session

    def get(self, tenant: str, session_id: str) -> Session:
        session = self.find(tenant, session_id)
        if session is None:
            raise _not_found(session_id)
        return session

    def figures(self, session: Session) -> WorkdirFigures:
        """The session's usage against this store's quotas (one fstatvfs): ``GET /api/v1/sessions/{id}``."""
        usage = session.usage()
        return WorkdirFigures(
            busy=session.active_runs > 0,
            bytes_used=usage.bytes_used,
            files_used=usage.files_used,
            disk_limit_bytes=self.workdirs.size_bytes,
            files_limit=self.workdirs.inodes,
        )

    def touch(self, session: Session) -> None:
        """A run of the session ended: its idle period starts again."""
        session.last_used = self.clock()
        self._wake_for(session)

    def _wake_for(self, session: Session) -> None:
        """Wake the expiry task if the session's deadline comes before the one it sleeps towards."""
        if self._sleeping_until is None or session.deadline(self.idle_s) < self._sleeping_until:
            self._wakeup.set()

    async def end(self, tenant: str, session_id: str) -> None:
        session = self._sessions.pop((tenant, session_id), None)
        if session is None:
            raise _not_found(session_id)
        await self._retire(session)

    async def _retire(self, session: Session) -> None:
        async with session.lock:  # let a running execution finish first
            self.workdirs.remove(session.workdir)

    async def _expire(self) -> None:
        while True:
            self._wakeup.clear()
            self.looks += 1
            now = self.clock()
            expired = [k for k, s in self._sessions.items() if s.active_runs == 0 and s.deadline(self.idle_s) <= now]
            for key in expired:
                await self._retire(self._sessions.pop(key))
            # A session still running past its deadline is not a deadline to sleep towards:
            # the end of its run sets the wake-up event, and it expires then.
            deadlines = [s.deadline(self.idle_s) for s in self._sessions.values() if s.active_runs == 0]
            self._sleeping_until = min(deadlines) if deadlines else None
            timeout = max(0.0, self._sleeping_until - self.clock()) if self._sleeping_until is not None else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # arrives as the event is set, and this task would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
