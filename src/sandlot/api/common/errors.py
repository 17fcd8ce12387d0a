"""One classification of an error, many renderings: ``classify(exc) -> Failure``.

Every door answers a failed request from a ``Failure``: what kind of failure
it is (the caller's mistake, a missing thing, a refusal, a full queue, an
outage, our own bug), the message a client may read, the request field at
fault and how long to wait before retrying. Each door keeps only a table from
``Kind`` to its own status (HTTP status, gRPC code, Judge0 answer, MCP metric
code); the class-by-class table is in ``sandlot.errors``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sandlot.errors import (
    AtCapacity,
    AuthError,
    EnvironmentNotFound,
    FileBusy,
    FileMissing,
    RejectedError,
    SandlotError,
    SessionNotFound,
    Unavailable,
)

__all__ = ["ANSWERED", "INTERNAL_MESSAGE", "Failure", "Kind", "classify"]

INTERNAL_MESSAGE = "internal error"  # what a client reads of an exception nobody raised on purpose

# The classes (with their subclasses) that are not ours to log: classify gives them every kind but INTERNAL.
ANSWERED: tuple[type[SandlotError], ...] = (RejectedError, AuthError, AtCapacity, Unavailable)


class Kind(enum.Enum):
    """What went wrong, in terms every door can answer."""

    REJECTED = "rejected"  # the request is invalid: fix it
    NOT_FOUND = "not_found"  # it names something that does not exist (for this tenant)
    CONFLICT = "conflict"  # it raced the running program: try again
    UNAUTHORIZED = "unauthorized"  # who is calling? (no API key)
    FORBIDDEN = "forbidden"  # this caller may not
    RATE_LIMITED = "rate_limited"  # this caller may, but not this often
    BUSY = "busy"  # nobody may right now: too much is waiting
    UNAVAILABLE = "unavailable"  # we cannot serve it now (an outage, a level missing here)
    INTERNAL = "internal"  # ours: a sandbox failure, a bad installation, a bug


_AUTH_KINDS = {401: Kind.UNAUTHORIZED, 403: Kind.FORBIDDEN, 429: Kind.RATE_LIMITED}


@dataclass(frozen=True)
class Failure:
    """A failed request, door-neutral.

    ``code`` is the machine-readable reason where the error names a finer one than its kind
    ("pool_full", "too_many_executions", ...), else the kind's own name. ``message`` is the
    exception's own text, for every kind: a door decides whether it shows an internal one.
    """

    kind: Kind
    code: str
    message: str
    field: str | None = None
    retry_after_s: float | None = None


def classify(exc: BaseException) -> Failure:
    """The one mapping from an exception to what kind of failure a client is told of."""
    message = str(exc)
    # RejectedErrors, but a missing thing rather than a bad one
    if isinstance(exc, SessionNotFound | FileMissing | EnvironmentNotFound):
        return Failure(Kind.NOT_FOUND, "not_found", message, exc.field)
    if isinstance(exc, FileBusy):
        return Failure(Kind.CONFLICT, "conflict", message, exc.field)
    if isinstance(exc, RejectedError):
        return Failure(Kind.REJECTED, "rejected", message, exc.field)
    if isinstance(exc, AuthError):
        return Failure(_AUTH_KINDS[exc.status], exc.code, message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, AtCapacity):
        return Failure(Kind.BUSY, exc.code, message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, Unavailable):
        message = message or "sandlot cannot serve this right now; retry later"
        return Failure(Kind.UNAVAILABLE, "unavailable", message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, SandlotError):
        return Failure(Kind.INTERNAL, "internal_error", message)
    return Failure(Kind.INTERNAL, "internal_error", INTERNAL_MESSAGE)
