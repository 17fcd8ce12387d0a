"""Compile once for many tasks of the same program (a Judge0 batch): single-flight, per worker, short-lived.

Theory of operation
-------------------
A task that asks for it (``TaskSpec.compile_once``, set by the Judge0 batch route for
submissions that share their source, language, files, compile limits and environment)
looks its program up here by a key the worker computes itself from the prepared job:
never from anything a client sent as a key, so two different programs cannot share a
binary. The first task of a key compiles in its own box (``Engine.compile_in``) and
reads the workdir out; the others wait for that one compile (single flight) and get the
same ``Compiled``: its workdir is copied into their box and its compile Result reported
(``Engine.execute(precompiled=...)``), so their answers are the ones they would have had.

Entries live ``_TTL_S`` (a batch arrives together) and at most ``_MAX_ENTRIES`` are kept;
a compile that fails by the sandbox's fault is not kept (each task then compiles itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from sandlot.engine import Engine, PreparedJob
from sandlot.errors import RejectedError
from sandlot.models import Status
from sandlot.sandbox import Box
from sandlot.workdir import Compiled, read_workdir

_TTL_S = 120.0
_MAX_ENTRIES = 64


class CompileOnce:
    """One per worker; holds compiled workdirs for ``_TTL_S``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._entries: dict[str, tuple[float, asyncio.Future[Compiled | None]]] = {}

    async def compiled(self, prepared: PreparedJob, box: Box) -> Compiled | None:
        """The program compiled (here in box, or by an earlier task); None: compile it the usual way."""
        if prepared.language.compile is None:
            return None
        key = _key(prepared)
        now = time.monotonic()
        self._entries = {k: e for k, e in self._entries.items() if now - e[0] < _TTL_S}
        entry = self._entries.get(key)
        if entry is not None:
            return await asyncio.shield(entry[1])
        if len(self._entries) >= _MAX_ENTRIES:
            return None
        future: asyncio.Future[Compiled | None] = asyncio.get_running_loop().create_future()
        self._entries[key] = (now, future)
        compiled: Compiled | None = None
        try:
            result = await self.engine.compile_in(prepared, box)
            if result is not None and result.status in (Status.OK, Status.RUNTIME_ERROR):  # runtime: the compiler's
                limit = self.engine.settings.judge_max_artifact_bytes
                compiled = Compiled(result, await asyncio.to_thread(read_workdir, box, limit))
        except RejectedError:
            compiled = None  # too large to keep: each task compiles its own
        finally:
            future.set_result(compiled)
            if compiled is None:
                self._entries.pop(key, None)
        return compiled


def _key(prepared: PreparedJob) -> str:
    job = prepared.job
    digest = hashlib.sha256()
    for part in (
        prepared.language.name,
        job.environment,
        job.environment_digest,  # a name may point to another environment later: the root itself counts
        str(prepared.rootfs or ""),
        job.user_file_name or "",
        repr(prepared.compile_limits),
        *(f"{f.name}\0{len(f.content)}" for f in job.files),
    ):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    for f in job.files:
        digest.update(f.content)
    return digest.hexdigest()
