"""Every Redis key the Redis broker uses, in one place, with what it holds and how long it lives.

Key layout (``<p>`` is the prefix, ``sandlot`` by default; ids and names are
percent-encoded, so a tenant or task id can never forge another key or break
a hash tag):

``<p>:{t:<task>}:state`` (hash)
    tenant, status, spec (JSON), created, idem (the idempotency key's name),
    entry (the jobs entry id, once claimed), deliveries, seq (the last event's),
    exit + exit_seq. No TTL while queued or running; ``result_ttl_s`` after finish.
``<p>:{t:<task>}:events`` (stream)
    The task's events: ``seq`` + ``event`` (wire JSON); the exit event is always
    the last. Bounded by ``MAXLEN ~ events_maxlen``; ``result_ttl_s`` after finish.
``<p>:{t:<task>}:control`` (stream)
    Control messages: ``kind``, ``data``, ``signal``. Bounded and expired like
    the events.
``<p>:{jobs}:stream`` (stream, consumer group ``workers``)
    One entry per submitted task: ``task``, ``tenant``. An entry stays pending
    until its task's exit is stored, then it is XACKed and XDELed. No TTL.
``<p>:{jobs}:queued`` (string)
    How many tasks wait unclaimed: the ``max_queued`` bound. No TTL.
``<p>:{jobs}:dequeued`` (set)
    Task ids already taken out of ``queued``, so the decrement is once per task even when a
    worker dies between taking a job and counting it out. Ids leave when the task finishes.
``<p>:tenant:<tenant>:idem:<key>`` (string)
    The task id an idempotency key names. ``IDEMPOTENCY_PENDING_TTL_S`` while
    the task is queued or running, ``result_ttl_s`` once it finished (it goes
    with the result, as in the memory broker).
``<p>:deadletter`` (stream)
    Jobs entries no worker could take: ``entry``, ``reason``, ``fields`` (JSON).
    Bounded by ``MAXLEN ~ DEADLETTER_MAXLEN``; no TTL.

Redis Cluster: the braces are hash tags. A task's three keys share one slot,
and the jobs stream shares one with its counter, so every Lua script the
broker runs touches a single slot. Steps that span slots (submit, claim,
cancel, finish's acknowledgement) are separate commands, ordered so that a
crash between them leaves nothing a worker could trip over (see
``sandlot.broker.redis``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "sandlot"
WORKERS_GROUP = "workers"  # the jobs stream's consumer group
IDEMPOTENCY_PENDING_TTL_S = 24 * 3600  # an idempotency key outlives any queued or running task
DEADLETTER_MAXLEN = 10_000  # entries kept in the dead-letter stream (approximate trim)


def _part(text: str) -> str:
    """One key component: nothing that could end a hash tag or add a ``:`` level."""
    return quote(text, safe="")


@dataclass(frozen=True)
class Keys:
    """The key names under one prefix (one deployment per prefix can share a Redis)."""

    prefix: str = DEFAULT_PREFIX

    def state(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:state"

    def events(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:events"

    def control(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:control"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:{{jobs}}:stream"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:{{jobs}}:queued"

    @property
    def dequeued(self) -> str:
        """Task ids already counted out of ``queued`` (so a retried take never counts twice)."""
        return f"{self.prefix}:{{jobs}}:dequeued"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:tenant:{_part(tenant)}:idem:{_part(key)}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"
