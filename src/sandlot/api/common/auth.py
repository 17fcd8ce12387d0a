"""API keys, tenants and per-key quotas, shared by every network door.

Theory of operation
-------------------
With no keys configured every caller is the tenant ``public`` and nothing is
limited. With keys, a request carries ``Authorization: Bearer KEY``: no key is
401, a key we do not know is 403. A key names its tenant; the tenant scopes
tasks and sessions in the broker and the pool, so one tenant's ids find nothing
of another's. A key may list the environments its jobs may name (``environments``);
any other is refused as if it did not exist (``Principal.check_environment``, in
``Core.submit`` for every door), and listings show only the key's.

Two quotas per key, both optional (0 = unlimited):

- ``requests_per_minute``: a token bucket holding at most one minute's worth of
  requests, refilled continuously; an empty bucket is 429 with the seconds until
  the next token.
- ``max_concurrent``: executions of the key not yet finished. A door takes an
  ``Admission`` before submitting and binds it to the task id; the admission is
  held until the task is done. Finished tasks are forgotten lazily at the next
  admission (asking the broker), so no background task watches them.

Keys are looked up by their SHA-256 digest, so the lookup time says nothing
about how much of a guessed key was right. Nothing here knows about HTTP: the
gRPC door uses it too, mapping ``AuthError.status`` to its own codes. Every door
reads the key of a ``Bearer`` header (HTTP, or gRPC metadata) with ``bearer_token``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from sandlot.errors import AuthError, EnvironmentNotFound

__all__ = ["PUBLIC_TENANT", "ApiKey", "Authenticator", "Principal", "bearer_token"]
from sandlot.config import ApiKey

PUBLIC_TENANT = "public"
_SECONDS_PER_MINUTE = 60.0

StillRunning = Callable[[str], Awaitable[bool]]  # task id -> is it queued or running?


@dataclass
class _TokenBucket:
    per_minute: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        rate = self.per_minute / _SECONDS_PER_MINUTE
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


@dataclass
class _InFlight:
    task_ids: set[str] = field(default_factory=set)
    reserved: int = 0  # admissions taken but not yet bound to a task


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, and the key (None when keys are off)."""

    tenant: str
    key: ApiKey | None = None

    @property
    def min_isolation(self) -> str:
        """The weakest isolation level this caller's requests may run at."""
        return self.key.min_isolation if self.key is not None else "jail"

    def may_use(self, environment: str) -> bool:
        """Whether this caller's jobs may run in ``environment`` ("": the host's, always allowed)."""
        allowed = self.key.environments if self.key is not None else None
        return not environment or allowed is None or environment in allowed

    def check_environment(self, environment: str) -> None:
        """Refuse an environment the caller's key does not allow exactly as one that does not exist (404),
        so a tenant cannot learn the names of other tenants' environments by asking."""
        if not self.may_use(environment):
            raise EnvironmentNotFound(environment)


class Admission:
    """One execution slot of a key, from ``Authenticator.admit``; ``bind`` it to the submitted task.

    Used as ``async with await auth.admit(...) as slot``: a slot still unbound
    when the block ends (the submit failed) is given back.
    """

    def __init__(self, in_flight: _InFlight | None) -> None:
        self._in_flight = in_flight
        self._open = in_flight is not None

    def bind(self, task_id: str) -> None:
        """The slot now belongs to this task until it is done (a retried idempotent submit counts once)."""
        if self._in_flight is not None and self._open:
            self._open = False
            self._in_flight.reserved -= 1
            self._in_flight.task_ids.add(task_id)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._in_flight is not None and self._open:
            self._open = False
            self._in_flight.reserved -= 1


class Authenticator:
    """Created once per app from the configured keys; holds the quota state."""

    def __init__(self, keys: Sequence[ApiKey], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = {_digest(k.key): k for k in keys}
        self._clock = clock
        self._buckets: dict[str, _TokenBucket] = {}
        self._in_flight: dict[str, _InFlight] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, token: str | None) -> Principal:
        """The caller of a request with this bearer token (None: no Authorization given)."""
        if not self._keys:
            return Principal(PUBLIC_TENANT)
        if not token:
            raise AuthError(401, "unauthorized", "an API key is required: Authorization: Bearer KEY")
        key = self._keys.get(_digest(token))
        if key is None:
            raise AuthError(403, "forbidden", "unknown API key")
        if key.requests_per_minute > 0:
            wait_s = self._bucket(key).take(self._clock())
            if wait_s > 0:
                raise AuthError(
                    429,
                    "rate_limited",
                    f"more than {key.requests_per_minute} requests per minute",
                    retry_after_s=wait_s,
                )
        return Principal(key.tenant, key)

    async def admit(self, principal: Principal, still_running: StillRunning) -> Admission:
        """Take an execution slot of the caller's key, or raise 429 (AuthError) when all are in use."""
        key = principal.key
        if key is None or key.max_concurrent <= 0:
            return Admission(None)
        in_flight = self._in_flight.setdefault(_digest(key.key), _InFlight())
        for task_id in list(in_flight.task_ids):
            if not await still_running(task_id):
                in_flight.task_ids.discard(task_id)
        # Checked and reserved with no await in between, so two requests cannot both take the last slot.
        if len(in_flight.task_ids) + in_flight.reserved >= key.max_concurrent:
            raise AuthError(
                429,
                "too_many_executions",
                f"{key.max_concurrent} executions of this key are already in flight",
                retry_after_s=1.0,
            )
        in_flight.reserved += 1
        return Admission(in_flight)

    def _bucket(self, key: ApiKey) -> _TokenBucket:
        digest = _digest(key.key)
        bucket = self._buckets.get(digest)
        if bucket is None:
            bucket = _TokenBucket(key.requests_per_minute, float(key.requests_per_minute), self._clock())
            self._buckets[digest] = bucket
        return bucket


def bearer_token(authorization: str | None) -> str | None:
    """The KEY of an ``Authorization: Bearer KEY`` header (any case of ``Bearer``); None when there is none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
