"""Sessions as the doors see them: created, checked and ended in one place, wherever their boxes live.

Embedded mode: a session is the pool's own (``BoxPool.create_session``), its box
in this process. Distributed mode: a session is named in the broker's session
directory (``SessionDirectory``, Redis) and its box is opened by the worker that
takes its first job; later jobs are routed to that worker (see
``sandlot.broker.redis_sessions``). Any API node can create, check or end any
session; none holds its box, so moving files in and out of a session's workdir
(``local``) works in embedded mode only: in distributed mode a run puts files in
with ``files`` and takes them out with ``fetch_files``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandlot.broker import SessionDirectory
from sandlot.errors import RejectedError
from sandlot.pool import BoxPool, Session, SessionNotFound


class SessionFilesUnavailable(RejectedError):
    """Session file operations need the box in this process; in distributed mode it is on a worker."""


@dataclass(frozen=True)
class SessionInfo:
    id: str
    expires_in_s: float


class Sessions:
    """Created once at start-up by ``Service`` and passed to the doors (``service.sessions``)."""

    def __init__(
        self, pool: BoxPool, directory: SessionDirectory | None, *, session_ttl_s: float, session_idle_s: float
    ) -> None:
        self._pool = pool
        self._directory = directory
        self._ttl_s = session_ttl_s
        self._idle_s = session_idle_s

    @property
    def distributed(self) -> bool:
        return self._directory is not None

    async def create(self, tenant: str) -> SessionInfo:
        """A new session (PoolFull in embedded mode when no box can be pinned now)."""
        if self._directory is None:
            session = await self._pool.create_session(tenant)
            return SessionInfo(session.id, round(session.expires_at - session.created, 3))
        session_id = await self._directory.create(tenant, ttl_s=self._ttl_s, idle_s=self._idle_s)
        return SessionInfo(session_id, self._ttl_s)

    def check(self, tenant: str, session_id: str) -> None:
        """SessionNotFound now, where that can be known without I/O (embedded); the broker's submit checks the rest."""
        if self._directory is None:
            self._pool.get_session(tenant, session_id)

    async def exists(self, tenant: str, session_id: str) -> bool:
        if self._directory is None:
            return self._pool.has_session(tenant, session_id)
        return await self._directory.exists(tenant, session_id)

    async def end(self, tenant: str, session_id: str) -> None:
        """End the session and wipe its box (distributed: its worker does, within a heartbeat interval)."""
        if self._directory is None:
            await self._pool.end_session(tenant, session_id)
        elif not await self._directory.end(tenant, session_id):
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")

    def local(self, tenant: str, session_id: str) -> Session:
        """The session with its box, for file operations: embedded mode only."""
        if self._directory is not None:
            raise SessionFilesUnavailable(
                "session files cannot be read or written through the API in distributed mode: the session's "
                "box is on a worker; send files with a run (files) and get them back with fetch_files",
                field="session_id",
            )
        return self._pool.get_session(tenant, session_id)
