"""The stateful sessions of one process: created and ended by the doors, cells run by the worker.

Theory of operation
-------------------
A stateful session pins a box for its life (``session.py``), so they are few: at most
``max_stateful_sessions`` at once (429 past it; the default leaves plain runs a box).
Each session has a deadline, the earlier of its absolute expiry (``session_ttl_s``
after creation) and its idle one (``session_idle_s`` after its last cell); one timer
per session fires then and ends it, or re-arms when a cell runs or ran since.

The doors reach a session through ``Service`` (create, end, a cell's spec settled by
``settle``); a cell travels as any task through the broker, and the worker that
claims it asks ``find`` and runs it with ``StatefulSession.run_cell``. Distributed
mode is refused at creation (a 400): a cell must reach the one process holding its
interpreter, and this version routes only within a process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from sandlot.broker import TaskSpec
from sandlot.config import LimitRequest, Settings
from sandlot.engine import Engine
from sandlot.errors import AtCapacity, IsolationUnavailable, RejectedError, SessionNotFound
from sandlot.models import Job, SourceFile
from sandlot.pool import BoxPool, check_level
from sandlot.stateful.session import Interpreter, StatefulSession

_HERE = Path(__file__).parent
# The languages with a REPL driver: the arguments after the interpreter's path (the driver's source inline).
_DRIVERS = {
    "python": ("-u", "-B", "-c", (_HERE / "driver_python.py").read_text()),
    "javascript": ("-e", (_HERE / "driver_node.js").read_text()),
}
LANGUAGES = tuple(_DRIVERS)


@dataclasses.dataclass(frozen=True)
class StatefulInfo:
    id: str
    expires_in_s: float
    isolation: str
    language: str


class StatefulSessions:
    """Created once by ``Service``; ``max_sessions`` 0 turns stateful sessions off."""

    def __init__(
        self,
        pools: Mapping[str, BoxPool],
        engine: Engine,
        settings: Settings,
        *,
        max_sessions: int,
        ttl_s: float,
        idle_s: float,
        distributed: bool,
    ) -> None:
        self._pools = pools
        self._engine = engine
        self._settings = settings
        self.max_sessions = max_sessions
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._distributed = distributed
        self._sessions: dict[tuple[str, str], StatefulSession] = {}
        self._created: dict[tuple[str, str], float] = {}
        self._starting = 0
        self._starting_at: collections.Counter[str] = collections.Counter()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._ending: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        return sum(1 for session in self._sessions.values() if not session.ended)

    async def create(
        self, tenant: str, *, language: str, isolation: str, limits: LimitRequest | None, environment: str = ""
    ) -> StatefulInfo:
        """Start a session's interpreter in a box of its level (waiting for one like any run)."""
        if self._distributed:
            raise RejectedError(
                "stateful sessions are not available in distributed mode (a cell must reach the process holding "
                "its interpreter); run a sandlot serve without redis_url for them",
                field="stateful",
            )
        if self.max_sessions <= 0:  # max_stateful_sessions < 0: the operator turned them off (not "busy")
            raise RejectedError(
                "stateful sessions are turned off on this server (max_stateful_sessions)", field="stateful"
            )
        if language not in _DRIVERS:
            raise RejectedError(f"stateful sessions run {', '.join(LANGUAGES)}; not {language!r}", field="language")
        pool = self._pools.get(isolation)
        if pool is None:
            raise IsolationUnavailable(isolation, "this server has no pool of that level")
        prepared = self._engine.prepare(
            Job(language, (SourceFile("main", b"pass"),), environment=environment), limits, None, qualify_fields=True
        )
        if self.count + self._starting >= self.max_sessions:
            raise AtCapacity(
                "pool",
                f"the stateful session limit ({self.max_sessions}) is reached: end one (DELETE "
                "/api/v1/sessions/{id}) or wait for one to expire",
                retry_after_s=5.0,
            )
        live = [session for session in self._sessions.values() if not session.ended]
        at_level = sum(1 for session in live if session.isolation == isolation) + self._starting_at[isolation]
        if at_level >= pool.size:
            # Every box of the level is some session's: the wait for one could last a session's lifetime.
            raise AtCapacity(
                "pool", f"every {isolation} box ({pool.size}) is held by a stateful session", retry_after_s=5.0
            )
        session_id = "st-" + secrets.token_urlsafe(16)
        lang = prepared.language
        interpreter = Interpreter(
            language=lang.name, argv=(lang.run[0], *_DRIVERS[lang.name]), env=dict(lang.env), rootfs=prepared.rootfs
        )
        session = StatefulSession(
            session_id,
            tenant,
            pool,
            interpreter,
            prepared.limits,
            lifetime_s=self._ttl_s,
            cpu_rate=self._settings.cpu_cores_per_box,
        )
        self._starting += 1
        self._starting_at[isolation] += 1
        try:
            await session.start()
        finally:
            self._starting -= 1
            self._starting_at[isolation] -= 1
        key = (tenant, session_id)
        self._sessions[key] = session
        self._created[key] = time.monotonic()
        self._arm(key)
        return StatefulInfo(session_id, self._ttl_s, session.isolation, lang.name)

    def find(self, tenant: str, session_id: str | None) -> StatefulSession | None:
        """The tenant's live session of that id; one whose box was given back is forgotten here."""
        if session_id is None:
            return None
        session = self._sessions.get((tenant, session_id))
        if session is not None and session.ended:
            self._forget((tenant, session_id))
            return None
        return session

    def settle(self, spec: TaskSpec) -> TaskSpec:
        """A cell's spec as it runs: the session's language and level (a mismatch is a 400)."""
        session = self.find(spec.tenant, spec.session_id)
        if session is None:
            return spec
        language = session.interpreter.language
        if spec.language and self._engine.languages.get(spec.language).name != language:
            raise RejectedError(
                f"session {session.id!r} runs {language}; this cell asks for {spec.language!r}", field="language"
            )
        check_level(session.id, session.isolation, spec.isolation)
        for name, value in (("commands", spec.commands), ("fetch_files", spec.fetch_files), ("args", spec.args)):
            if value:
                raise RejectedError(f"{name}: not taken by a stateful session's cell", field=name)
        if len(spec.files) != 1:
            raise RejectedError("a stateful session's cell is code, not files", field="files")
        return dataclasses.replace(spec, language=language, isolation=session.isolation)

    async def end(self, tenant: str, session_id: str) -> None:
        session = self._forget((tenant, session_id))
        if session is None:
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
        await session.close()

    def _forget(self, key: tuple[str, str]) -> StatefulSession | None:
        session = self._sessions.pop(key, None)
        self._created.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return session

    async def close(self) -> None:
        """End every session (at shutdown)."""
        for tenant, session_id in list(self._sessions):
            with contextlib.suppress(SessionNotFound):
                await self.end(tenant, session_id)
        for task in list(self._ending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _deadline(self, key: tuple[str, str]) -> float:
        session = self._sessions[key]
        return min(self._created[key] + self._ttl_s, session.last_used + self._idle_s)

    def _arm(self, key: tuple[str, str]) -> None:
        loop = asyncio.get_running_loop()
        delay = self._deadline(key) - time.monotonic()
        self._timers[key] = loop.call_later(max(delay, 0.0), self._expire, key)

    def _expire(self, key: tuple[str, str]) -> None:
        session = self._sessions.get(key)
        if session is None:
            return
        absolute = self._created[key] + self._ttl_s
        now = time.monotonic()
        if now < absolute and (session.busy or now < self._deadline(key)):
            self._arm(key)  # a cell ran since, or runs now: idle time counts from its end
            return
        task = asyncio.get_running_loop().create_task(self.end(*key))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
