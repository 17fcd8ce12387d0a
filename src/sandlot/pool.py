"""The box pool: N boxes, fair bounded waiting, and tenant-scoped sessions.

Theory of operation
-------------------
The pool opens ``size`` boxes at start-up (each a slot: uid, cgroup, tmpfs) and
hands them out through ``lease``. A lease without a session gets any free box
and, when it ends, the box is reset (a fresh tmpfs, so nothing of the run is
visible to the next one) before it is offered again.

Waiters queue per tenant; a freed box goes to the oldest waiter of the next
tenant in rotation, so one tenant's burst cannot starve another. The total
number of waiters is bounded: past it ``AtCapacity`` is raised at once (HTTP 429,
gRPC RESOURCE_EXHAUSTED). A waiter that is cancelled (its client went away)
simply leaves the queue.

Sessions (``sessions_store``) pin no box: a lease with a session id takes any
free box as a plain one does and mounts (a clone of) the session's workdir over the box's
/box for the lease (``Box.attach_workdir``); the session's lock keeps its runs
one at a time, and the box is reset and offered again after, as for any lease.
Every box waiting in the pool has its next jail already launched (fresh
namespaces and cgroup, the init waiting for a command; see sandbox/box.py), so
a request does not wait for bubblewrap (or, for a pool of isolation level
``gvisor``, for gVisor's much slower start: each gVisor sandbox runs one
command, then a fresh one is started in the background). A jail's /box
receives that mount even though it was launched before (mount
propagation), so a session's run starts as fast as a plain one; gVisor's
sandbox holds its workdir open, so a session's run there starts cold.

Environments and pre-launched jails
-----------------------------------
A pre-launched jail is launched in one environment (its root is bound when the
jail starts): the host's, or an environment's root. Each box has an affinity,
the environment of its next jail. A box given back after a run in environment E
is re-launched for E, so a burst of runs in E starts warm like runs on the host;
a lease names its environment (``rootfs``) and takes a free box launched for it
if there is one, else another free box, whose jail does not fit and is ended by
``Box.run``: that run starts cold, as any run did before, and the box then
follows it. The host stays the default: at most ``size - 1`` boxes (1 in a pool
of one) keep an environment's affinity, the others go back to the host's, so a
host run finds a box launched for it whenever one is free and no environment
can take every box. ``preload`` launches boxes for environments at start-up
(within the same cap). Whatever the pool decides, ``Box.run`` never uses a jail
launched in another root than its run's: affinity is only about speed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandlot.config import SERVER_DEFAULTS, effective_max_sessions
from sandlot.errors import AtCapacity, IsolationUnavailable, RejectedError, SandlotError, SessionNotFound
from sandlot.fairness import TenantRotation
from sandlot.sandbox import Bind, Box, Sandbox
from sandlot.sandbox.box import ISOLATION_LEVELS
from sandlot.sandbox.workdirs import Workdirs, chown_tree
from sandlot.sessions_store import Session, SessionStore

__all__ = [
    "BoxPool",
    "Session",
    "check_level",
    "check_session_level",
    "find_session",
    "pool_for_run",
]


_CHOWN_ON_LOOP_MAX_FILES = 32  # a session workdir this small is given to a box's uid on the loop (~25 us)


@dataclass
class _Waiter:
    tenant: str
    future: asyncio.Future[Box]
    rootfs: Path | None = None  # the environment it runs in (None: the host's): a box launched for it first


class BoxPool:
    """Created once at start-up and passed in; never a global."""

    def __init__(
        self,
        sandbox: Sandbox,
        size: int,
        *,
        max_waiting: int,
        max_sessions: int | None = None,
        session_ttl_s: float = SERVER_DEFAULTS.session_ttl_s,
        session_idle_s: float = SERVER_DEFAULTS.session_idle_s,
        clock: Callable[[], float] = time.monotonic,
        prelaunch_binds: Callable[[Box], Sequence[Bind]] | None = None,
        isolation: str = "jail",
        preload: Sequence[Path] = (),
    ) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.sandbox = sandbox
        self.isolation = isolation
        self.size = size
        self.max_waiting = max_waiting
        server = sandbox.settings.server
        workdirs = Workdirs(size_bytes=server.session_disk_bytes, inodes=server.session_inodes)
        self.sessions = SessionStore(
            workdirs,
            isolation,
            max_sessions=effective_max_sessions(server) if max_sessions is None else max_sessions,
            ttl_s=session_ttl_s,
            idle_s=session_idle_s,
            clock=clock,
        )
        self._clock = clock
        self._prelaunch_binds = prelaunch_binds
        self._preload = tuple(preload)  # environment roots boxes are launched for at start-up
        # Each box's affinity: the environment root its next jail is (or would be) launched in.
        self._affinity: dict[Box, Path | None] = {}
        self._boxes: list[Box] = []
        self._free: collections.deque[Box] = collections.deque()
        self._waiting: TenantRotation[_Waiter] = TenantRotation()
        self._busy = 0
        self._closed = False
        self.ready = False
        self.on_free: Callable[[], None] | None = None  # told when a box is free again (a worker's claim gate)

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self.sandbox.sweep_stale)
        for index in range(self.size):
            box = await asyncio.to_thread(self.sandbox.open_box, None, isolation=self.isolation)
            self._boxes.append(box)
            preload = self._preload[index] if index < len(self._preload) else None
            self._prelaunch(box, self._affinity_after(box, preload))
            self._free.append(box)
        await self.sessions.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        self._closed = True
        for waiter in self._waiting:
            if not waiter.future.done():
                waiter.future.set_exception(AtCapacity("pool", "the server is shutting down"))
        self._waiting.clear()
        await self.sessions.close()
        boxes, self._boxes = self._boxes, []
        self._free.clear()
        self._affinity.clear()
        for box in boxes:
            await asyncio.to_thread(box.close)
        self.sandbox.driver.remove_group()

    # --------------------------------------------------------------- stats

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    @property
    def max_sessions(self) -> int:
        return self.sessions.max_sessions

    # --------------------------------------------------------------- leases

    @contextlib.asynccontextmanager
    async def lease(
        self, tenant: str, session_id: str | None = None, *, rootfs: Path | None = None
    ) -> AsyncIterator[Box]:
        """A box for one execution, launched for ``rootfs`` if one is free (None: the host's root); with a
        session, any free box showing the session's workdir at /box.

        A lease may be held for long (a stateful session's box): the box is
        simply not offered again until it ends.
        """
        if session_id is not None:
            session = self.sessions.get(tenant, session_id)
            session.active_runs += 1
            state = {"locked": False, "counted": True}

            def let_go() -> None:  # once: the session's next run may go on, in any free box
                if state["locked"]:
                    state["locked"] = False
                    session.lock.release()
                if state["counted"]:
                    state["counted"] = False
                    session.active_runs -= 1
                    self.sessions.touch(session)

            try:
                await session.lock.acquire()
                state["locked"] = True
                async with self._leased(tenant, rootfs) as box:
                    try:
                        await self._attach(session, box)
                        try:
                            yield box
                        finally:
                            box.detach_workdir()
                    finally:
                        # The workdir is off this box (nothing of the run is left running): the session's next
                        # run need not wait for this box's reset, which follows in a thread.
                        let_go()
            finally:
                let_go()
            return
        async with self._leased(tenant, rootfs) as box:
            yield box

    async def _attach(self, session: Session, box: Box) -> None:
        if self.sessions.find(session.tenant, session.id) is not session:
            raise SessionNotFound(f"session {session.id!r} not found or expired", field="session_id")  # ended meanwhile
        owner = (box.slot.uid, box.slot.gid)
        if session.owner != owner:  # the last run was another box's: its files become this one's
            if session.usage().files_used <= _CHOWN_ON_LOOP_MAX_FILES:  # a few syscalls: cheaper than a thread
                chown_tree(session.workdir, *owner)
            else:
                await asyncio.to_thread(chown_tree, session.workdir, *owner)
            session.owner = owner
        box.attach_workdir(session.workdir)  # one bind mount: kept on the loop, it is microseconds

    @contextlib.asynccontextmanager
    async def _leased(self, tenant: str, rootfs: Path | None) -> AsyncIterator[Box]:
        box = await self._take(tenant, rootfs)
        box.clear_cancel()  # a cancel is of one lease: never of the next one's runs (a judge's tests...)
        self._busy += 1
        try:
            yield box
        finally:
            self._busy -= 1
            await self._give_back(box, rootfs)

    async def _take(self, tenant: str, rootfs: Path | None = None) -> Box:
        if not self.ready:
            raise AtCapacity("pool", "the pool is not ready")
        if self._free and not self._waiting:
            return self._pick(rootfs)
        if self.waiting >= self.max_waiting:
            raise AtCapacity("pool", f"{self.waiting} executions are already waiting for a box")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, loop.create_future(), rootfs)
        self._waiting.push(tenant, waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                # We were handed a box just as we were cancelled: pass it on.
                self._free.append(waiter.future.result())
                self._dispatch()
            else:
                self._waiting.remove(waiter.tenant, waiter)
            raise

    def _dispatch(self) -> None:
        """Hand free boxes to waiters, one tenant at a time in rotation."""
        while self._free and self._waiting:
            waiter = self._waiting.pop()
            if waiter.future.done():
                continue
            waiter.future.set_result(self._pick(waiter.rootfs))
        if self._free and self.on_free is not None:
            self.on_free()

    def _pick(self, rootfs: Path | None) -> Box:
        """Take a free box for a run in ``rootfs``: one launched for it (the oldest), else, for a run in an
        environment, one that is not the host's (so host runs keep theirs), else the oldest free box."""
        ranked = sorted(
            self._free,
            key=lambda box: (self._affinity.get(box) != rootfs, rootfs is not None and self._affinity.get(box) is None),
        )
        box = ranked[0]
        self._free.remove(box)
        return box

    def _affinity_after(self, box: Box, rootfs: Path | None) -> Path | None:
        """The environment box's next jail is launched for after a run in ``rootfs``: the same, unless
        the cap of boxes kept for environments (``size - 1``, at least 1) is reached; then the host's."""
        if rootfs is None:
            return None
        kept = sum(1 for other, root in self._affinity.items() if other is not box and root is not None)
        return rootfs if kept < max(1, self.size - 1) else None

    async def _give_back(self, box: Box, rootfs: Path | None = None) -> None:
        if self._closed:
            return  # close() releases every box itself, leased ones included
        try:
            await asyncio.to_thread(box.reset)
        except SandlotError:
            # A box that cannot be reset is replaced by a fresh slot.
            await asyncio.to_thread(box.close)
            self._affinity.pop(box, None)
            if box in self._boxes:
                self._boxes.remove(box)
            if not self.ready:
                return
            box = await asyncio.to_thread(self.sandbox.open_box, None, isolation=self.isolation)
            self._boxes.append(box)
        if not self.ready:
            return
        self._prelaunch(box, self._affinity_after(box, rootfs))
        self._free.append(box)
        self._dispatch()

    def _prelaunch(self, box: Box, rootfs: Path | None = None) -> None:
        """Launch the box's next jail now in ``rootfs`` (None: the host's), off the next request's path
        (see Box.prelaunch). A run in an environment binds nothing of the host's toolchains (engine.py),
        so its jail is launched without the host languages' binds."""
        if self._prelaunch_binds is None or self._closed:
            return  # no jail is launched ahead: every box is as good as another
        self._affinity[box] = rootfs
        box.prelaunch(self._prelaunch_binds(box) if rootfs is None else (), rootfs)

    # ------------------------------------------------------------- sessions

    async def create_session(self, tenant: str, *, environment: str = "") -> Session:
        """A new session (AtCapacity past ``max_sessions``); it takes no box."""
        return await self.sessions.create(tenant, environment=environment)

    async def adopt_session(self, tenant: str, session_id: str, *, expires_in_s: float) -> Session:
        """A workdir for a session named elsewhere (the distributed mode's directory), under its id.

        It expires here ``expires_in_s`` from now at the latest.
        """
        return await self.sessions.adopt(tenant, session_id, expires_in_s=expires_in_s)

    @property
    def session_room(self) -> bool:
        """Whether another session could open here (``max_sessions`` not reached)."""
        return self.sessions.room

    def has_session(self, tenant: str, session_id: str) -> bool:
        """Whether this pool holds the session's workdir (and it has not expired)."""
        return self.sessions.find(tenant, session_id) is not None

    def session_keys(self) -> list[tuple[str, str]]:
        """(tenant, session id) of every session this pool holds a workdir for."""
        return self.sessions.keys()

    def get_session(self, tenant: str, session_id: str) -> Session:
        return self.sessions.get(tenant, session_id)

    async def end_session(self, tenant: str, session_id: str) -> None:
        await self.sessions.end(tenant, session_id)


def find_session(pools: Mapping[str, BoxPool], tenant: str, session_id: str) -> Session:
    """The tenant's session in whichever pool (isolation level) holds it."""
    for pool in pools.values():
        with contextlib.suppress(SessionNotFound):
            return pool.get_session(tenant, session_id)
    raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")


def pool_for_run(
    pools: Mapping[str, BoxPool],
    level: str,
    tenant: str,
    session_id: str | None,
    *,
    missing_reason: str = "this worker has no pool of that level",
) -> BoxPool:
    """The pool a run goes to: its session's (at least ``level``), else the level's own.

    A level with no pool here is IsolationUnavailable (503) with ``missing_reason``.
    """
    if session_id is not None:
        session = find_session(pools, tenant, session_id)
        check_session_level(session, level)
        return pools[session.isolation]
    pool = pools.get(level)
    if pool is None:
        raise IsolationUnavailable(level, missing_reason)
    return pool


def check_session_level(session: Session, isolation: str) -> None:
    """A session runs at its box's level: refuse a request for a stronger one (never run weaker)."""
    check_level(session.id, session.isolation, isolation)


def check_level(session_id: str, held: str, asked: str) -> None:
    """``check_session_level`` for a session known by its id and level (distributed mode)."""
    if asked and ISOLATION_LEVELS.index(held) < ISOLATION_LEVELS.index(asked):
        raise RejectedError(
            f"session {session_id!r} runs at isolation {held!r}, weaker than the requested {asked!r}",
            field="isolation",
        )
