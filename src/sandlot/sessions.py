"""Sessions as the doors see them: created, checked and ended in one place, wherever their workdirs live.

Embedded mode: a session is the pool's own (``BoxPool.create_session``), its
workdir in this process (``sessions_store``: a workdir, not a box; any free box
runs its runs). Distributed mode: a session is named in the broker's session
directory (``SessionDirectory``, Redis) and its workdir is opened by the worker
that takes its first job; later jobs are routed to that worker (see
``sandlot.broker.redis_sessions``). Any API node can create, check or end any
session; none holds its workdir, so ``files`` there sends each file operation
to the worker holding it (``sandlot.sessions_remote``), and ``describe`` asks
it for the workdir's figures (the times are in Redis). The file operations are
``hostfs``'s link-safe ones on an fd of the workdir, run off the event loop
(here, or on that worker); the doors only ever see their results and the
errors named here (``FileMissing``, ``FileBusy``, an ``OSError`` whose errno is
in ``NO_SPACE_ERRNOS`` when the workdir is full), and in distributed mode
``SessionWorkerGone`` (503) when the worker holding it is gone.

A session runs at one isolation level, chosen when it is created: embedded, its
workdir is in that level's pool; distributed, the level is recorded with the
session and each of its jobs is queued at it (``level_for_run``), so the worker
opens the workdir in its pool of that level. A session created in an
environment runs there unless a run names another (distributed: the name is
recorded with the session, and each run resolves it as a run naming it would).
A stateful session's record adds its language and limits (``SessionRecord``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sandlot.broker import SessionDirectory, SessionRecord
from sandlot.broker.redis_session_files import RedisSessionFiles
from sandlot.errors import AtCapacity, RejectedError, SessionFilesUnavailable, SessionNotFound
from sandlot.pool import BoxPool, Session, check_level, find_session, pool_for_run
from sandlot.sandbox import hostfs
from sandlot.sandbox.hostfs import Listing
from sandlot.sessions_remote import RemoteSessionFiles
from sandlot.sessions_store import WorkdirFigures

__all__ = [
    "NO_SPACE_ERRNOS",
    "FileAccess",
    "Listing",
    "SessionFiles",
    "SessionInfo",
    "SessionState",
    "Sessions",
]

_T = TypeVar("_T")

# A write that failed with one of these found the session's workdir (or its quota) full.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class SessionInfo:
    id: str
    expires_in_s: float
    isolation: str


@dataclass(frozen=True)
class SessionState:
    """What ``GET /api/v1/sessions/{id}`` answers; a worker's figures are None while no live worker answers them."""

    id: str
    isolation: str
    environment: str
    created_at: float  # Unix time
    expires_at: float  # Unix time: the idle deadline or the absolute one, whichever is first
    busy: bool | None  # a run of it is under way or waiting for a box
    bytes_used: int | None
    files_used: int | None
    disk_limit_bytes: int | None
    files_limit: int | None
    stateful: bool = False  # a stateful session (its files are its interpreter's box's workdir)
    language: str = ""  # a stateful session's interpreter


class Sessions:
    """Created once at start-up by ``Service`` and passed to the doors (``service.sessions``)."""

    def __init__(
        self,
        pools: Mapping[str, BoxPool],
        directory: SessionDirectory | None,
        *,
        session_ttl_s: float,
        session_idle_s: float,
        problems: Mapping[str, str] | None = None,
        remote: RedisSessionFiles | None = None,
        remote_timeout_s: float = 6.0,
    ) -> None:
        self._remote = remote  # distributed: file requests go to the worker holding the session
        self._remote_timeout_s = remote_timeout_s
        self._pools = pools  # by isolation level
        self._directory = directory
        self._ttl_s = session_ttl_s
        self._idle_s = session_idle_s
        self._problems = problems or {}  # level -> why this process has no pool of it (embedded mode)

    @property
    def distributed(self) -> bool:
        return self._directory is not None

    async def create(self, tenant: str, isolation: str, environment: str = "") -> SessionInfo:
        """A new session at a settled level (AtCapacity in embedded mode when no box can be pinned now).

        Embedded, a level this process has no pool of is IsolationUnavailable (503);
        distributed, the worker that takes the session's first job opens its box.
        """
        if self._directory is None:
            session = await self.pool_for_run(isolation, tenant, None).create_session(tenant, environment=environment)
            return SessionInfo(session.id, round(session.expires_at - session.created, 3), session.isolation)
        return await self.record(tenant, SessionRecord(isolation, environment))

    async def record(self, tenant: str, record: SessionRecord) -> SessionInfo:
        """Distributed mode: a new session in the directory (a file session, or a stateful one's record)."""
        if self._directory is None:
            raise RejectedError("sessions are recorded in the broker only in distributed mode", field="session_id")
        await self.check_room(record.isolation, stateful=record.stateful)
        session_id = await self._directory.create(tenant, record, ttl_s=self._ttl_s, idle_s=self._idle_s)
        return SessionInfo(session_id, self._ttl_s, record.isolation)

    async def check_room(self, level: str, *, stateful: bool) -> None:
        """Distributed: AtCapacity (429) when the live workers serving ``level`` have no room for another
        session of the kind (as their presences said); none live: the session waits for one, as a run would."""
        if self._directory is None:
            return
        serving, room = await self._directory.room(level, stateful=stateful)
        if serving and not room:
            kind = "stateful sessions (max_stateful_sessions)" if stateful else "sessions (max_sessions)"
            raise AtCapacity(
                "pool",
                f"every {level} worker holds as many {kind} as it may: end one, or retry once one expires",
                retry_after_s=5.0,
            )

    def pool_for_run(self, level: str, tenant: str, session_id: str | None) -> BoxPool:
        """Embedded: the pool a run goes to, its session's or its level's (``pool.pool_for_run``).

        A level this process has no pool of is IsolationUnavailable (503), with the reason found at start-up.
        """
        reason = self._problems.get(level, "not configured")
        return pool_for_run(self._pools, level, tenant, session_id, missing_reason=reason)

    async def level_for_run(self, tenant: str, session_id: str, asked: str) -> str:
        """The level a run in the session goes at: the session's own, never weaker than ``asked`` (else 400)."""
        if self._directory is None:
            held = find_session(self._pools, tenant, session_id).isolation
        else:
            found = await self._directory.isolation(tenant, session_id)
            if found is None:
                raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
            held = found
        check_level(session_id, held, asked)
        return held

    async def exists(self, tenant: str, session_id: str) -> bool:
        if self._directory is None:
            return any(pool.has_session(tenant, session_id) for pool in self._pools.values())
        return await self._directory.exists(tenant, session_id)

    async def end(self, tenant: str, session_id: str) -> None:
        """End the session and wipe its box (distributed: its worker does, within a heartbeat interval)."""
        if self._directory is None:
            session = find_session(self._pools, tenant, session_id)
            await self._pools[session.isolation].end_session(tenant, session_id)
        elif not await self._directory.end(tenant, session_id):
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")

    def environment_of(self, tenant: str, session_id: str) -> str:
        """Embedded: the environment the session was created in ("" for the host's)."""
        return find_session(self._pools, tenant, session_id).environment

    async def recorded(self, tenant: str, session_id: str) -> SessionRecord:
        """Distributed: what the session was created with (SessionNotFound once it ended or expired)."""
        found = await self._directory.record(tenant, session_id) if self._directory is not None else None
        if found is None:
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
        return found

    async def describe(self, tenant: str, session_id: str) -> SessionState:
        """The session's state; distributed, Redis's record and the figures of the worker holding it."""
        if self._directory is not None:
            return await self._describe_remote(self._directory, tenant, session_id)
        session = find_session(self._pools, tenant, session_id)
        store = self._pools[session.isolation].sessions
        wall = time.time() - store.clock()  # the store's clock is monotonic: shift it to Unix time
        return state_of(
            session.id,
            session.isolation,
            session.environment,
            created_at=session.created + wall,
            expires_at=session.deadline(store.idle_s) + wall,
            figures=store.figures(session),
        )

    async def _describe_remote(self, directory: SessionDirectory, tenant: str, session_id: str) -> SessionState:
        record = await directory.summary(tenant, session_id)  # one round trip
        if record is None:
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
        figures: WorkdirFigures | None = _NEVER_PLACED
        if record.placed:  # a read never places a session that no worker holds: that is a first use's job
            figures = None
            if self._remote is not None:
                remote = RemoteSessionFiles(self._remote, tenant, session_id, self._remote_timeout_s)
                figures = await remote.figures()
        return state_of(
            session_id,
            record.isolation,
            record.environment,
            created_at=record.created_at,
            expires_at=record.expires_at,
            figures=figures,
            language=record.language,
        )

    def local(self, tenant: str, session_id: str) -> Session:
        """The session with its workdir in this process: embedded mode only (``files`` works in both)."""
        if self._directory is not None:
            raise SessionFilesUnavailable(
                "the session's workdir is on a worker in distributed mode, not in this process", field="session_id"
            )
        return find_session(self._pools, tenant, session_id)

    def files(self, tenant: str, session_id: str) -> FileAccess:
        """The session's workdir, to move files in and out; distributed, through the worker holding it."""
        if self._remote is not None:
            return RemoteSessionFiles(self._remote, tenant, session_id, self._remote_timeout_s)
        return workdir_files(self.local(tenant, session_id))


# A session no worker has placed yet: no workdir, so nothing used, and no quota until a worker opens one.
_NEVER_PLACED = WorkdirFigures(busy=False, bytes_used=0, files_used=0, disk_limit_bytes=None, files_limit=None)


def state_of(
    session_id: str,
    isolation: str,
    environment: str,
    *,
    created_at: float,
    expires_at: float,
    figures: WorkdirFigures | None,
    language: str = "",
) -> SessionState:
    """``figures`` None: the worker holding the workdir is gone or silent, so those figures are unknown;
    ``language``: a stateful session's interpreter ("" for a file session)."""
    return SessionState(
        id=session_id,
        isolation=isolation,
        environment=environment,
        created_at=round(created_at, 3),
        expires_at=round(expires_at, 3),
        busy=None if figures is None else figures.busy,
        bytes_used=None if figures is None else figures.bytes_used,
        files_used=None if figures is None else figures.files_used,
        disk_limit_bytes=None if figures is None else figures.disk_limit_bytes,
        files_limit=None if figures is None else figures.files_limit,
        stateful=bool(language),
        language=language,
    )


def workdir_files(session: Session) -> SessionFiles:
    """The files of a file session held in this process (embedded, or a worker's own)."""
    return SessionFiles(_WorkdirRoot(session))


class FileAccess(Protocol):
    """A session's files, wherever they are: ``SessionFiles`` here, ``RemoteSessionFiles`` on a worker."""

    async def write(self, path: str, data: bytes) -> None: ...

    async def read(self, path: str, max_bytes: int) -> bytes: ...

    async def listing(self) -> Listing: ...


class FileRoot(Protocol):
    """Where a session's files are: a file session's workdir, or a stateful session's box's."""

    def open_root(self) -> int:
        """A new fd on the workdir, which the caller closes; SessionNotFound once the session ended."""
        ...

    @property
    def owner(self) -> tuple[int, int]:
        """The host uid and gid its runs' files have."""
        ...


@dataclass(frozen=True)
class _WorkdirRoot:
    """A file session's own workdir (a detached tmpfs held by an fd)."""

    session: Session

    def open_root(self) -> int:
        if self.session.workdir.closed:  # ended since the route found it (it read the body meanwhile)
            raise SessionNotFound(f"session {self.session.id!r} not found or expired", field="session_id")
        return self.session.workdir.dup()

    @property
    def owner(self) -> tuple[int, int]:
        return self.session.owner  # root before its first run


@dataclass(frozen=True)
class SessionFiles:
    """The workdir of a session held in this process; each operation runs off the event loop."""

    _root: FileRoot

    async def write(self, path: str, data: bytes) -> None:
        uid, gid = self._root.owner  # the uid its runs' files have
        await self._off_loop(hostfs.write_file, path, data, uid=uid, gid=gid)

    async def read(self, path: str, max_bytes: int) -> bytes:
        """The file's bytes; refused when larger than ``max_bytes``."""
        return await self._off_loop(hostfs.read_file, path, max_bytes=max_bytes)

    async def listing(self) -> Listing:
        """The regular files, up to ``hostfs.MAX_LIST_ENTRIES`` entries looked at, and whether it stopped."""
        return await self._off_loop(hostfs.list_files)

    async def _off_loop(self, operation: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``operation(root_fd, ...)`` in a thread, on an fd of its own that the thread closes."""
        fd = self._root.open_root()

        def run() -> _T:
            try:
                return operation(fd, *args, **kwargs)
            finally:
                os.close(fd)

        return await asyncio.to_thread(run)
