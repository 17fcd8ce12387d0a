"""What a request's session settles, and sessions made, described and ended, for every door (``Service``).

Theory of operation
-------------------
``Service`` inherits ``SessionOperations``: one place for the two kinds of session
(file sessions, ``sessions.py``; stateful ones, ``stateful/``) in both modes.

- A run naming a session is settled before it is validated (``resolve_environment``
  -> ``resolve_session``). Embedded, ``Service.validate`` finds the session in this
  process. Distributed, the session's record in Redis says what it is: a stateful
  session's cell is marked as one (its language, level and environment are the
  session's), a file session's run goes in the session's environment unless it
  names another; a session no live worker holds is refused with a 429 when no
  live worker has room to place it.
- Creating a session: embedded, in this process's pools (a stateful one starts
  its interpreter now); distributed, recorded for the worker that takes its first
  run, after the language, limits and environment were checked here as a run's
  would be.
- Describing, ending and reaching the files of a session of either kind.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from sandlot.broker import SessionRecord, TaskSpec, limits_text
from sandlot.config import LimitRequest, ServerSettings
from sandlot.engine import check_isolation
from sandlot.errors import AuthError, EnvironmentNotFound, RejectedError
from sandlot.languages import LanguageRegistry, OfferedThere
from sandlot.models import SourceFile
from sandlot.sandbox.box import ISOLATION_LEVELS
from sandlot.sessions import FileAccess, SessionFiles, SessionInfo, Sessions, SessionState, state_of
from sandlot.stateful import StatefulInfo, StatefulSession, StatefulSessions
from sandlot.stateful.sessions import check_language, settle_cell

if TYPE_CHECKING:
    from sandlot.engine import Engine
    from sandlot.environments.shared import SharedEnvironments


class SessionOperations:
    """Mixed into ``Service`` (which sets these attributes): see the module's docstring."""

    server: ServerSettings
    languages: LanguageRegistry
    engine: Engine
    sessions: Sessions
    shared: SharedEnvironments | None
    stateful: StatefulSessions | None

    async def resolve_environment(self, spec: TaskSpec) -> tuple[TaskSpec, OfferedThere | None]:
        """Distributed mode: what the job's session says of it (``resolve_session``), and the digest its
        environment stands for (``SharedEnvironments.resolve``)."""
        spec = await self.resolve_session(spec)
        if self.shared is None or not spec.environment or spec.stateful:
            return spec, None  # a cell runs where its session's interpreter is, recorded at its creation
        return await self.shared.resolve(spec)

    async def resolve_session(self, spec: TaskSpec) -> TaskSpec:
        """Distributed mode: a run in a session as the session's record settles it (SessionNotFound if it is
        gone): a stateful session's cell, marked as one; a file session's run in the session's environment
        unless it names another. Embedded mode, ``validate`` does this from the sessions held here."""
        if spec.session_id is None or not self.sessions.distributed:
            return spec
        record = await self.sessions.recorded(spec.tenant, spec.session_id)
        if not record.held:  # its run places it: refused now (429) if no live worker has room for it
            await self.sessions.check_room(record.isolation, stateful=record.stateful)
        if record.stateful:
            spec = settle_cell(spec, self.languages, record.language, record.isolation)
            return dataclasses.replace(
                spec,
                stateful=True,
                environment=record.environment,
                environment_digest=record.environment_digest,
            )
        if record.environment and not spec.environment:
            return dataclasses.replace(spec, environment=record.environment)
        return spec

    def _is_cell(self, spec: TaskSpec) -> bool:
        """Is this a cell of a stateful session (whose box is not the pool's to find)?"""
        return spec.stateful or self._local_cell(spec)

    def _local_cell(self, spec: TaskSpec) -> bool:
        """Embedded mode: is this a cell of a stateful session held in this process?"""
        return spec.session_id is not None and self._local_stateful(spec.tenant, spec.session_id) is not None

    def _local_stateful(self, tenant: str, session_id: str) -> StatefulSession | None:
        """Embedded mode: the stateful session of that id held in this process (distributed: never here,
        its worker holds it)."""
        if self.stateful is None or self.sessions.distributed:
            return None
        return self.stateful.find(tenant, session_id)

    def isolation_for(self, asked: str, min_isolation: str = "jail") -> str:
        """The level a request runs at (see ``validate``)."""
        if asked:
            check_isolation(asked)
            if ISOLATION_LEVELS.index(asked) < ISOLATION_LEVELS.index(min_isolation):
                raise AuthError(
                    403,
                    "forbidden",
                    f"this API key requires isolation {min_isolation!r} or stronger; {asked!r} was asked for",
                )
            return asked
        default = self.server.default_isolation
        return max(default, min_isolation, key=ISOLATION_LEVELS.index)

    def session_files(self, tenant: str, session_id: str) -> FileAccess:
        """The files of a session, file session or stateful (its interpreter's box's workdir); distributed,
        through the worker holding either kind."""
        found = self._local_stateful(tenant, session_id)
        if found is not None:
            return SessionFiles(found)
        return self.sessions.files(tenant, session_id)

    async def create_session(
        self, tenant: str, isolation: str = "", *, min_isolation: str = "jail", environment: str = ""
    ) -> SessionInfo:
        """A session at the settled level (see ``validate``), its runs in ``environment`` (404 if unknown)."""
        if environment and self.shared is not None:  # distributed: any node's (a worker fetches it)
            await self.shared.resolve(TaskSpec(id="", tenant=tenant, language="", files=(), environment=environment))
        elif environment:
            store = self.engine.environments
            if store is None:
                raise EnvironmentNotFound(environment)
            await asyncio.to_thread(store.rootfs, environment)  # EnvironmentNotFound names it
        return await self.sessions.create(tenant, self.isolation_for(isolation, min_isolation), environment)

    async def create_stateful(
        self,
        tenant: str,
        language: str,
        *,
        isolation: str = "",
        min_isolation: str = "jail",
        limits: LimitRequest | None = None,
        environment: str = "",
    ) -> StatefulInfo:
        """A stateful session (``sandlot.stateful``): embedded, its interpreter started here; distributed,
        recorded for the worker that takes its first cell, once the language, limits and environment are
        checked here as a run's would be."""
        stateful = self.stateful
        if stateful is None:
            raise RejectedError("this server has no stateful sessions", field="stateful")
        level = self.isolation_for(isolation, min_isolation)
        if not self.sessions.distributed:
            return await stateful.create(
                tenant, language=language, isolation=level, limits=limits, environment=environment
            )
        stateful.check_enabled()
        probe = TaskSpec(
            id="", tenant=tenant, language=language, files=(SourceFile("main", b"pass"),), environment=environment
        )
        probe, offered_there = await self.resolve_environment(probe)
        job = probe.to_job()
        prepared = self.engine.prepare(job, limits, None, qualify_fields=True, offered_there=offered_there)
        name = prepared.language.name
        check_language(name)
        record = SessionRecord(level, environment, probe.environment_digest, name, limits_text(limits))
        info = await self.sessions.record(tenant, record)
        return StatefulInfo(info.id, info.expires_in_s, level, name)

    async def describe_session(self, tenant: str, session_id: str) -> SessionState:
        """``GET /api/v1/sessions/{id}``: a session of either kind (distributed: as the directory and the worker
        holding it say)."""
        found = self._local_stateful(tenant, session_id)
        if found is None or self.stateful is None:
            return await self.sessions.describe(tenant, session_id)
        return state_of(
            found.id,
            found.isolation,
            found.environment,
            created_at=found.created,
            expires_at=self.stateful.expires_at(found),
            figures=await asyncio.to_thread(found.figures),
            language=found.interpreter.language,
        )

    async def end_session(self, tenant: str, session_id: str) -> None:
        """End a session of either kind (distributed: its worker lets go of it at its next presence)."""
        if self.stateful is not None and self._local_stateful(tenant, session_id) is not None:
            await self.stateful.end(tenant, session_id)
        else:
            await self.sessions.end(tenant, session_id)
