"""The Judge0 door's long-lived state: options, limits, languages, the store, submitting and reading.

One ``Judge0State`` per app (``app.state.judge0``), built by ``judge0.install``
beside the app's ``Core``. Submitting goes through the same ``Core.submit`` as every
door (validation, the key's quota, the queue bound); reading asks the
broker for the task and the store for what only Judge0 has, then renders.
Callbacks are tasks of this process that wait for the task's exit event, so
the worker never waits on a client's receiver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import sandlot
from sandlot.api.common.auth import Principal
from sandlot.api.common.core import Core
from sandlot.api.judge0.callbacks import CallbackPolicy, deliver
from sandlot.api.judge0.render import (
    DEFAULT_FIELDS,
    LANGUAGE_IDS,
    Judge0Language,
    offered_languages,
    render_submission,
)
from sandlot.api.judge0.store import SubmissionStore, from_record, record_of
from sandlot.api.judge0.submission import Judge0Invalid, Judge0Limits, Submission, parse_submission
from sandlot.broker import TaskState
from sandlot.config import Judge0Settings
from sandlot.errors import ConfigError, RejectedError
from sandlot.models import OutputEvent

log = logging.getLogger("sandlot.judge0")

MAX_TASK_LIFETIME_S = 3600.0  # queueing + compile + run, generously: how long a record outlives its submit
# Our RejectedError fields, as Judge0 names them (what service.validate may still refuse).
_FIELD_NAMES = {
    "code": "source_code",
    "environment": "language_id",
    "files": "additional_files",
    "args": "command_line_arguments",
    "stdin": "stdin",
    "language": "language_id",
    "limits.time_limit": "cpu_time_limit",
    "limits.wall_time_limit": "wall_time_limit",
    "limits.memory_limit": "memory_limit",
    "limits.max_processes": "max_processes_and_or_threads",
    "limits.max_file_size": "max_file_size",
}


class Judge0State:
    """The Judge0 door's long-lived state, one per app (``app.state.judge0``), beside the app's Core."""

    def __init__(self, core: Core, options: Judge0Settings) -> None:
        self.core = core
        self.service = service = core.service
        if options.maintainer is None:  # unset: this server's name and version
            options = dataclasses.replace(options, maintainer=f"sandlot {sandlot.__version__}")
        self.options = options
        self.limits = Judge0Limits.from_settings(service.settings)
        self.callbacks = CallbackPolicy(allow_private=options.callback_allow_private)
        self.languages: dict[int, Judge0Language] = offered_languages(service.languages, service.versions())
        self._extras = {extra.id: extra for extra in options.languages}  # [judge0.languages]: in environments
        clashes = sorted(set(self._extras) & set(LANGUAGE_IDS))
        if clashes:
            raise ConfigError(f"[judge0.languages]: ids {clashes} are Judge0 CE's own; choose others (e.g. 1001)")
        self._resolved: dict[int, Judge0Language] = {}  # extras seen offered here, for rendering their names
        self.store = SubmissionStore(retention_s=service.server.result_ttl_s + MAX_TASK_LIFETIME_S)
        self._deliveries: set[asyncio.Task[None]] = set()

    def parse(self, data: Any, tenant: str, base64_encoded: bool, principal: Principal | None = None) -> Submission:
        """``principal``: whose extra language ids count (those of the environments its key may use)."""
        extras = [e for e in self._extras.values() if principal is not None and principal.may_use(e.environment)]
        return parse_submission(
            data,
            tenant=tenant,
            base64_encoded=base64_encoded,
            limits=self.limits,
            languages={i: lang.language.name for i, lang in self.languages.items()}
            | {e.id: e.language for e in extras},
            allow_private_callbacks=self.options.callback_allow_private,
            environments={e.id: e.environment for e in extras},
        )

    async def languages_for(self, principal: Principal) -> dict[int, Judge0Language]:
        """The host's languages, and each ``[judge0.languages]`` id whose environment the caller may use and
        offers the language now (looked at on each call: environments come and go while serving)."""
        if not self._extras:
            return self.languages
        return self.languages | await self._offered_extras(principal)

    async def _offered_extras(self, principal: Principal) -> dict[int, Judge0Language]:
        offered: dict[int, Judge0Language] = {}
        for extra in sorted(self._extras.values(), key=lambda e: e.id):
            if principal.may_use(extra.environment):
                try:
                    offered[extra.id] = await self._resolve(extra.id)
                except RejectedError:
                    continue  # not there (now): not listed
        return offered

    async def _resolve(self, language_id: int) -> Judge0Language:
        extra = self._extras[language_id]
        language = await self.service.language_in(extra.language, extra.environment)
        found = self._resolved[extra.id] = Judge0Language(extra.id, extra.name, language, extra.environment)
        return found

    async def submit(
        self, principal: Principal, submission: Submission, *, waits: bool = False, compile_once: bool = False
    ) -> None:
        """Queue it like any door (quotas, queue bound); what the engine would refuse is a 422.

        ``waits`` (``wait=true``): with no live worker for its level, a 503 now instead of a wait with no end.
        ``compile_once``: other submissions of the batch are the same program (``TaskSpec.compile_once``).
        """
        # The record travels with the task: any API node can render it (verdict, request fields).
        spec = dataclasses.replace(
            submission.to_spec(self.limits.max_cpu_time_limit),
            door_data=record_of(submission),
            compile_once=compile_once,
        )
        try:
            if submission.environment:  # an extra id: its name is rendered from here on
                await self._resolve(submission.language_id)
            await self.core.submit(principal, spec, waits=waits)
        except RejectedError as exc:
            raise Judge0Invalid({_FIELD_NAMES.get(exc.field or "", "base"): [str(exc)]}) from exc
        self.store.add(submission)
        if submission.callback_url:
            task = asyncio.create_task(self._callback(submission), name=f"judge0-callback-{submission.token}")
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def lookup(self, tenant: str, token: str) -> tuple[TaskState, Submission | None] | None:
        state = await self.service.broker.get(tenant, token)
        submission = self.store.get(tenant, token)
        if state is None:
            if submission is not None:  # the broker has let the task go: so do we
                self.store.forget(token)
            return None
        if submission is None and state.spec is not None:  # taken by another API node, or evicted here
            submission = from_record(state.spec)
        return state, submission

    async def render(
        self,
        state: TaskState,
        submission: Submission | None,
        *,
        fields: tuple[str, ...],
        base64_encoded: bool,
    ) -> dict[str, Any]:
        merged = None
        if submission is not None and submission.redirect_stderr_to_stdout and state.exit is not None:
            merged = await self._merged_output(submission)
        return render_submission(
            state.id,
            state,
            submission,
            merged,
            fields=fields,
            base64_encoded=base64_encoded,
            languages=self.languages | self._resolved,
        )

    async def aclose(self) -> None:
        """Stop pending callbacks (optional: for a server that wants them gone before the loop ends)."""
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def _merged_output(self, submission: Submission) -> bytes:
        """stdout and stderr in the order the program wrote them, from the task's event history."""
        kept = self.store.merged_output(submission.token)
        if kept is not None:
            return kept
        chunks = [
            event.data
            async for event in self.core.events(submission.tenant, submission.token)
            if isinstance(event, OutputEvent) and event.stage != "compile"
        ]
        merged = b"".join(chunks)
        self.store.keep_merged_output(submission.token, merged)
        return merged

    async def _callback(self, submission: Submission) -> None:
        assert submission.callback_url is not None
        try:
            await self.core.wait_exit(submission.tenant, submission.token)
            found = await self.lookup(submission.tenant, submission.token)
            if found is None:
                return
            body = await self.render(found[0], submission, fields=DEFAULT_FIELDS, base64_encoded=True)
            await deliver(submission.callback_url, json.dumps(body).encode(), self.callbacks)
        except Exception:
            log.exception("judge0 callback for %s failed", submission.token)
