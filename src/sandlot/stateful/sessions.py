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
claims it asks ``find`` and runs it with ``StatefulSession.run_cell``.

Distributed mode: an API node records the session in the broker's directory (no
interpreter there); the worker that takes its first cell binds it and starts the
interpreter (``adopt``), and its later cells are routed to that worker, as a file
session's runs are (``sandlot.worker_sessions``). ``room`` says how many more this
process could start at a level, which the worker's presence publishes so that a
worker without room can give a session to one with room.
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

from sandlot.broker import SessionRecord, TaskSpec
from sandlot.config import LimitRequest, Settings
from sandlot.engine import Engine, PreparedJob
from sandlot.errors import AtCapacity, IsolationUnavailable, RejectedError, SessionNotFound
from sandlot.languages import LanguageRegistry
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
    ) -> None:
        self._pools = pools
        self._engine = engine
        self._settings = settings
        self.max_sessions = max_sessions
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._sessions: dict[tuple[str, str], StatefulSession] = {}
        self._expires_at: dict[tuple[str, str], float] = {}  # monotonic: the absolute expiry
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
        self.check_enabled()
        pool = self._pools.get(isolation)
        if pool is None:
            raise IsolationUnavailable(isolation, "this server has no pool of that level")
        job = Job(language, (SourceFile("main", b"pass"),), environment=environment)
        prepared = self._engine.prepare(job, limits, None, qualify_fields=True)
        check_language(prepared.language.name)
        if self.count + self._starting >= self.max_sessions:
            raise AtCapacity(
                "pool",
                f"the stateful session limit ({self.max_sessions}) is reached: end one (DELETE "
                "/api/v1/sessions/{id}) or wait for one to expire",
                retry_after_s=5.0,
            )
        if self._at_level(isolation) >= pool.size:
            # Every box of the level is some session's: the wait for one could last a session's lifetime.
            raise AtCapacity(
                "pool", f"every {isolation} box ({pool.size}) is held by a stateful session", retry_after_s=5.0
            )
        session_id = "st-" + secrets.token_urlsafe(16)
        session = await self._start(tenant, session_id, pool, prepared, self._ttl_s, environment)
        return StatefulInfo(session.id, self._ttl_s, session.isolation, session.interpreter.language)

    async def adopt(
        self, tenant: str, session_id: str, record: SessionRecord, *, expires_in_s: float, reset_reason: str = ""
    ) -> None:
        """Distributed mode: start the interpreter of a session the directory names (this worker bound it),
        under its id, ending here ``expires_in_s`` from now at the latest; ``reset_reason``: its first cell
        says it starts afresh (its interpreter was lost with another worker)."""
        pool = self._pools.get(record.isolation)
        if pool is None:
            raise IsolationUnavailable(record.isolation, "this worker has no pool of that level")
        job = Job(
            record.language,
            (SourceFile("main", b"pass"),),
            environment=record.environment,
            environment_digest=record.environment_digest,
        )
        prepared = self._engine.prepare(job, record.limit_request(), None, qualify_fields=True)
        check_language(prepared.language.name)
        session = await self._start(tenant, session_id, pool, prepared, expires_in_s, record.environment)
        session.reset_reason = reset_reason

    def room(self, isolation: str) -> int:
        """How many more sessions this process could start at the level now (0 when turned off)."""
        pool = self._pools.get(isolation)
        if pool is None or self.max_sessions <= 0:
            return 0
        return max(0, min(self.max_sessions - self.count - self._starting, pool.size - self._at_level(isolation)))

    def check_enabled(self) -> None:
        if self.max_sessions <= 0:  # max_stateful_sessions < 0: the operator turned them off (not "busy")
            raise RejectedError(
                "stateful sessions are turned off on this server (max_stateful_sessions)", field="stateful"
            )

    def expires_at(self, session: StatefulSession) -> float:
        """Unix time the session ends at unless a cell runs first (the idle deadline or the absolute one)."""
        return self._deadline((session.tenant, session.id)) - time.monotonic() + time.time()

    def keys(self) -> list[tuple[str, str]]:
        """(tenant, session id) of every live session here."""
        return [key for key, session in self._sessions.items() if not session.ended]

    def _at_level(self, isolation: str) -> int:
        live = [session for session in self._sessions.values() if not session.ended]
        return sum(1 for session in live if session.isolation == isolation) + self._starting_at[isolation]

    async def _start(
        self, tenant: str, session_id: str, pool: BoxPool, prepared: PreparedJob, lifetime_s: float, environment: str
    ) -> StatefulSession:
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
            lifetime_s=lifetime_s,
            cpu_rate=self._settings.cpu_cores_per_box,
            environment=environment,
        )
        isolation = pool.isolation
        self._starting += 1
        self._starting_at[isolation] += 1
        try:
            await session.start()
        finally:
            self._starting -= 1
            self._starting_at[isolation] -= 1
        key = (tenant, session_id)
        self._sessions[key] = session
        self._expires_at[key] = time.monotonic() + lifetime_s
        self._arm(key)
        return session

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
        return settle_cell(spec, self._engine.languages, session.interpreter.language, session.isolation)

    async def end(self, tenant: str, session_id: str) -> None:
        session = self._forget((tenant, session_id))
        if session is None:
            raise SessionNotFound(f"session {session_id!r} not found or expired", field="session_id")
        await session.close()

    def _forget(self, key: tuple[str, str]) -> StatefulSession | None:
        session = self._sessions.pop(key, None)
        self._expires_at.pop(key, None)
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
        return min(self._expires_at[key], session.last_used + self._idle_s)

    def _arm(self, key: tuple[str, str]) -> None:
        loop = asyncio.get_running_loop()
        delay = self._deadline(key) - time.monotonic()
        self._timers[key] = loop.call_later(max(delay, 0.0), self._expire, key)

    def _expire(self, key: tuple[str, str]) -> None:
        session = self._sessions.get(key)
        if session is None:
            return
        absolute = self._expires_at[key]
        now = time.monotonic()
        if now < absolute and (session.busy or now < self._deadline(key)):
            self._arm(key)  # a cell ran since, or runs now: idle time counts from its end
            return
        task = asyncio.get_running_loop().create_task(self.end(*key))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


def check_language(language: str) -> None:
    """Refuse a language with no REPL driver (400)."""
    if language not in _DRIVERS:
        raise RejectedError(f"stateful sessions run {', '.join(LANGUAGES)}; not {language!r}", field="language")


def settle_cell(spec: TaskSpec, languages: LanguageRegistry, language: str, isolation: str) -> TaskSpec:
    """A cell's spec as it runs in a session of ``language`` at ``isolation`` (a mismatch is a 400)."""
    session_id = spec.session_id or ""
    if spec.language and languages.get(spec.language).name != language:
        raise RejectedError(
            f"session {session_id!r} runs {language}; this cell asks for {spec.language!r}", field="language"
        )
    check_level(session_id, isolation, spec.isolation)
    for name, value in (("commands", spec.commands), ("fetch_files", spec.fetch_files), ("args", spec.args)):
        if value:
            raise RejectedError(f"{name}: not taken by a stateful session's cell", field=name)
    if len(spec.files) != 1:
        raise RejectedError("a stateful session's cell is code, not files", field="files")
    return dataclasses.replace(spec, language=language, isolation=isolation)
