"""The exception hierarchy: bad input and sandbox failure never blur.

``RejectedError`` is the caller's mistake (status ``rejected``, CLI exit 2, HTTP 4xx).
``SandboxError`` is ours: the sandbox could not do its job (status ``internal_error``).
A program's own failure is never an exception: it is a ``Result``.
"""

from __future__ import annotations


class SandlotError(Exception):
    """Base class of every error sandlot raises on purpose."""


class RejectedError(SandlotError):
    """The request is invalid: the message says which field and why."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SessionNotFound(RejectedError):
    """No such session for this tenant (or it expired)."""


class SandboxError(SandlotError):
    """The sandbox itself failed (never the program's fault)."""


class AuthError(SandlotError):
    """The caller may not do this now; ``status`` is the HTTP status it maps to (401, 403, 429)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


class Unavailable(SandlotError):
    """sandlot cannot serve this right now (HTTP 503, gRPC UNAVAILABLE); nothing was run."""


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


class ConfigError(SandlotError):
    """Settings or installation are wrong; raised at start-up."""
