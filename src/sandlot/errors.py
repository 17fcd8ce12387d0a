"""Every exception that crosses a module boundary, in one hierarchy: bad input and sandbox failure never blur.

A program's own failure is never an exception: it is a ``Result``. What an
exception means to a client is decided once, by
``sandlot.api.common.errors.classify`` (exception -> door-neutral ``Failure``);
each door keeps only a table from the failure's kind to its own status. A new
error class is a new row here (and in ``classify`` if it is a new kind).

    class                    kind          meaning                                         HTTP gRPC               CLI
    RejectedError            rejected      the request is invalid: names the field and why  400 INVALID_ARGUMENT    2
      SessionNotFound        not_found     no such session for this tenant (or expired)     404 NOT_FOUND           -
      FileMissing            not_found     a session path names nothing in the workdir      404 NOT_FOUND           -
      FileBusy               conflict      the program recreated a path being written       409 ABORTED             -
      SessionFilesUnavailable rejected     session files through the API, distributed mode  400 INVALID_ARGUMENT    -
      ImageRejected          rejected      an image is corrupt, unsupported or hostile      400 INVALID_ARGUMENT    2
        EnvironmentLimitExceeded rejected  an image is over an import cap (names it)        400 INVALID_ARGUMENT    2
      SpecRejected           rejected      an environment spec is invalid (names the key)   400 INVALID_ARGUMENT    2
      EnvironmentNotFound    not_found     no environment by that name                      404 NOT_FOUND           2
    AuthError (status 401)   unauthorized  no API key given                                 401 UNAUTHENTICATED     -
    AuthError (status 403)   forbidden     unknown key, or a level weaker than the key's    403 PERMISSION_DENIED   -
    AuthError (status 429)   rate_limited  the key's request rate or executions in flight   429 RESOURCE_EXHAUSTED  -
    AtCapacity (what=pool)   busy          too many runs wait for a box ("pool_full")       429 RESOURCE_EXHAUSTED  -
    AtCapacity (what=queue)  busy          too many tasks are queued ("queue_full")         429 RESOURCE_EXHAUSTED  -
    Unavailable              unavailable   cannot serve this now; nothing was run           503 UNAVAILABLE         -
      BrokerUnavailable      unavailable   Redis unreachable, or the server shutting down   503 UNAVAILABLE         -
      NoWorker               unavailable   no live worker serves the level (distributed)    503 UNAVAILABLE         -
      IsolationUnavailable   unavailable   the level cannot run here: names level, reason   503 UNAVAILABLE         2
      SessionWorkerGone      unavailable   the worker holding a session's files is gone      503 UNAVAILABLE         -
    SandboxError             internal      the sandbox failed (status internal_error)       500 INTERNAL            2
      UidInUse               internal      a slot's host uid is another instance's          500 INTERNAL            -
      EnvironmentBuildFailed internal      mmdebstrap, pip or npm failed building a spec     500 INTERNAL            1
    ConfigError              internal      settings or installation are wrong (start-up)    500 INTERNAL            2
    Superseded               internal      a worker's delivery of a task is void (worker)     -                     -
    anything else            internal      a bug: logged, never shown                       500 INTERNAL/UNKNOWN    -

Judge0 answers busy with 503 "queue is full" and every rejected/not_found/
conflict with 400 (its own 422 is ``Judge0Invalid``, a RejectedError); MCP
answers each with a tool error. The CLI exits 2 for anything that is not the
program's doing ("-": the local CLI never meets it).
"""

from __future__ import annotations

from typing import Literal, Self

# What a client is told to wait before retrying an Unavailable (HTTP Retry-After); a guess: the
# usual causes (Redis restarting, a worker starting) take seconds.
UNAVAILABLE_RETRY_AFTER_S = 5.0


class SandlotError(Exception):
    """Base class of every error sandlot raises on purpose."""


# ------------------------------------------------------------------ the caller's mistakes


class RejectedError(SandlotError):
    """The request is invalid: the message says which field and why.

    Made by ``at(field, reason)``, the message is "field: reason" and a door that calls the field
    otherwise renames it with ``for_field`` (no message is ever taken apart to find the field).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.reason: str | None = None  # set by at(): the message without the field's name
        self._separator = ": "

    @classmethod
    def at(cls, field: str, reason: str, *, separator: str = ": ") -> Self:
        """A refusal of ``field`` whose message is "{field}{separator}{reason}"."""
        error = cls(f"{field}{separator}{reason}", field=field)
        error.reason, error._separator = reason, separator
        return error

    def for_field(self, field: str) -> Self:
        """The same refusal (same class: a missing file stays missing) naming a door's own field.

        A message made by ``at`` names the new field; any other message is kept as it is.
        """
        if self.reason is None:
            return type(self)(str(self), field=field)
        return type(self).at(field, self.reason, separator=self._separator)


class SessionNotFound(RejectedError):
    """No such session for this tenant (or it expired)."""


class FileMissing(RejectedError):
    """The path names nothing in the workdir (a door's 404, not a refusal)."""


class FileBusy(RejectedError):
    """The running program changed the path while the host wrote it (a door's 409: try again)."""


class SessionFilesUnavailable(RejectedError):
    """Session file operations need the box in this process; in distributed mode it is on a worker."""


# ------------------------------------------------------------------ the caller may not, or not now


class AuthError(SandlotError):
    """The caller may not do this now; ``status`` is the HTTP status it maps to (401, 403, 429).

    ``code`` is the machine-readable reason the doors show ("unauthorized", "forbidden",
    "rate_limited", "too_many_executions").
    """

    def __init__(
        self, status: Literal[401, 403, 429], code: str, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


class AtCapacity(SandlotError):
    """Too many executions already wait (for a box: ``what="pool"``; in the queue: ``"queue"``); retry later."""

    def __init__(self, what: Literal["pool", "queue"], message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.what = what
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> str:
        """The code the doors answer: "pool_full" or "queue_full"."""
        return f"{self.what}_full"


# ------------------------------------------------------------------ we cannot serve it now


class Unavailable(SandlotError):
    """sandlot cannot serve this right now (HTTP 503, gRPC UNAVAILABLE); nothing was run."""

    retry_after_s = UNAVAILABLE_RETRY_AFTER_S


class BrokerUnavailable(Unavailable):
    """The broker's backing store cannot be reached, or the server is shutting down (HTTP 503)."""


class NoWorker(Unavailable):
    """No live worker serves an isolation level (the distributed mode): a run that waits for its result
    would wait with no end in sight, so it is refused (HTTP 503) instead; queued submits still queue."""

    def __init__(self, level: str) -> None:
        super().__init__(
            f"no live worker serves isolation {level!r} right now, so a run that waits for its result would hang; "
            "start a worker (sandlot worker --redis ...), or queue it with POST /api/v1/execute"
        )
        self.level = level


class IsolationUnavailable(Unavailable):
    """An isolation level cannot run here; the message names the level and the exact reason."""

    def __init__(self, level: str, reason: str) -> None:
        super().__init__(f"isolation {level!r} is unavailable here: {reason}")
        self.level = level
        self.reason = reason


class SessionWorkerGone(Unavailable):
    """A session's files are on a worker that did not answer in time, or were lost with it (distributed)."""


# ------------------------------------------------------------------ our failures


class SandboxError(SandlotError):
    """The sandbox itself failed (never the program's fault)."""


class UidInUse(SandboxError):
    """The slot's host uid is held by another sandlot instance (same box_uid_base, another run_dir)."""


class ConfigError(SandlotError):
    """Settings or installation are wrong; raised at start-up."""


class Superseded(SandlotError):
    """This worker's delivery of a task is no longer the current one: the job moved on to another worker
    (this one was taken for dead, or wedged past its deadline). Nothing it writes for the task is kept; it
    stops the run and forgets the task."""


class JudgeFailure(SandlotError):
    """Judge mode cannot decide a test (a checker that does not compile, a program too large to copy): the
    flow reports it as that test's ``judge_error``; one that escapes the flow is an internal error."""


# ------------------------------------------------------------------ environments


class ImageRejected(RejectedError):
    """An image cannot be imported: corrupt, unsupported, hostile, or over a cap (the message names it)."""


class EnvironmentLimitExceeded(ImageRejected):
    """An image is over one of the import caps, or an import or build over the store's disk cap;
    ``limit`` names the setting."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class SpecRejected(RejectedError):
    """An environment spec (TOML) is invalid: the message says which key and why."""


class EnvironmentNotFound(RejectedError):
    """No environment by that name in this store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no environment named {name!r} (see: sandlot env list)", field="environment")
        self.name = name


class EnvironmentBuildFailed(SandboxError):
    """Building a declared environment failed (mmdebstrap, pip or npm); the message carries the tool's tail."""


class EnvironmentFetchFailed(SandboxError):
    """Distributed mode: a worker could not get the environment a job asked for (no holder answered, a
    transfer failed its digest check, a build failed); the job ends with this, never runs elsewhere."""
