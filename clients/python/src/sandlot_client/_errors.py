"""The client's errors: one SandlotError, a class per kind of answer a caller acts on differently.

A program that fails is not an error here (it is a Result with its status); these are the server
refusing a request or not serving it:

    Rejected 400/413/415/507 (bad input; ``field`` names it) · Unauthorized 401/403 · NotFound 404
    Conflict 409 · Busy 429/503 (``retry_after`` in seconds, from Retry-After) · Unavailable
    (no connection, a timeout, another 5xx, an answer that does not parse)
"""

from __future__ import annotations


class SandlotError(Exception):
    """Anything the server refused or could not serve. ``http_status`` is None when no answer came."""

    def __init__(self, message: str, *, code: str = "", http_status: int | None = None) -> None:
        super().__init__(" ".join(message.splitlines()))  # one line, whatever a server put in its message
        self.code = code  # the server's own code ("rejected", "queue_full", ...), when it gave one
        self.http_status = http_status


class Rejected(SandlotError):
    """Bad input: an unknown language, a limit over the maximum, a path leaving the workdir, ..."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "", http_status: int | None = None):
        super().__init__(message, code=code, http_status=http_status)
        self.field = field  # the request field at fault, when the server named one


class Unauthorized(SandlotError):
    """No API key where one is required (401), or a key that is unknown or may not do this (403)."""


class NotFound(SandlotError):
    """No such task, session, file or environment (or another tenant's: they look the same)."""


class Conflict(SandlotError):
    """The task has already finished (a cancel), or a program replaced a file while it was written."""


class Busy(SandlotError):
    """Over a quota, the queue or pool full, or the server draining: try again after ``retry_after`` s."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str = "", http_status: int | None = None
    ):
        super().__init__(message, code=code, http_status=http_status)
        self.retry_after = retry_after


class Unavailable(SandlotError):
    """The server could not be reached, did not answer in time, failed (5xx) or answered nonsense."""
