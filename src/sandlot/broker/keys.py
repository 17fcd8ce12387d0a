"""Every Redis key the Redis broker uses, in one place, with what it holds and how long it lives.

Key layout (``<p>`` is the prefix, ``sandlot`` by default; ids and names are
percent-encoded, so a tenant, task id or worker name can never forge another
key or break a hash tag):

``<p>:{t:<task>}:state`` (hash)
    tenant, status, spec (JSON), created, idem (the idempotency key's name),
    entry + stream (the jobs entry and its stream, while a worker holds it),
    deliveries, fence (the delivery token: bumped by every take, carried by
    every write of the worker holding it), seq (the last event's), exit +
    exit_seq. No TTL while queued or running; ``result_ttl_s`` after finish.
``<p>:{t:<task>}:events`` (stream)
    The task's events: ``seq`` + ``event`` (wire JSON); the exit event is always
    the last. Bounded by ``MAXLEN ~ events_maxlen``; ``result_ttl_s`` after finish.
``<p>:{t:<task>}:control`` (stream)
    Control messages: ``kind``, ``data``, ``signal``. Bounded and expired like
    the events.

The queue, all under the ``{jobs}`` hash tag (one Cluster slot):

``<p>:{jobs}:tenant:<tenant>`` (stream, consumer group ``workers``)
    One entry per queued task of the tenant: ``task``, ``tenant``. An entry
    stays pending until its task's exit is stored, then it is XACKed and XDELed;
    the stream (and its group) is deleted once empty.
``<p>:{jobs}:returned`` (stream, group ``workers``)
    Jobs a stopping worker handed back, every job a dead worker held (an entry
    with ``replaces``: the dead one's entry id), jobs of a dead worker's inbox,
    and stale jobs requeued by the idle backstop: served before any tenant's stream.
``<p>:{jobs}:worker:<name>`` (stream, group ``workers``)
    A worker's inbox: the jobs of the sessions whose box it holds. Its name in the
    ``workers`` set and as a session's owner is this key. Removed when the worker
    leaves or is found dead (its undelivered entries move to ``returned``).
``<p>:{jobs}:worker:<name>:wake`` (list)
    One token per job routed to that inbox; the worker blocks on it (BLPOP).
``<p>:{jobs}:wake`` (list)
    One token per job in ``returned`` or a tenant's stream; idle workers block on it.
``<p>:{jobs}:rotation`` (list)
    The tenant streams with undelivered entries, in the order they are served:
    a claim takes one job from the head's stream and moves it to the tail.
``<p>:{jobs}:streams`` (set)
    Every jobs stream that exists (tenants', ``returned``, inboxes): where
    ``reclaim`` looks for the jobs of lost workers.
``<p>:{jobs}:workers`` (sorted set)
    Live workers' inbox keys, scored by the time (ms, Redis clock) their
    presence expires (``presence_ttl_s``); refreshed every third of it.
``<p>:{jobs}:workers:names`` (hash)
    Per live worker's inbox key: its consumer name (whose pending jobs are taken
    over when it is found dead) and, under ``<inbox>|levels``, the isolation
    levels it serves (readiness). Named by the scripts from ``workers``.
``<p>:{jobs}:session:<tenant>:<id>`` (hash)
    A session of the distributed mode: created, expires_at (ms), owner (the
    inbox of the worker its jobs go to), boxed (the inbox of the worker that
    last opened a box for it). Expires at ``min(expires_at, last use + idle)``.
``<p>:{jobs}:queued`` (string)
    How many tasks wait unclaimed: the ``max_queued`` bound. No TTL.
``<p>:{jobs}:dequeued`` (set)
    Task ids already taken out of ``queued``, so the decrement is once per task even when a
    worker dies between taking a job and counting it out. Ids leave when the task finishes
    or is handed back.

Elsewhere:

``<p>:tenant:<tenant>:idem:<key>`` (string)
    The task id an idempotency key names. ``IDEMPOTENCY_PENDING_TTL_S`` while
    the task is queued or running, ``result_ttl_s`` once it finished (it goes
    with the result, as in the memory broker).
``<p>:deadletter`` (stream)
    Jobs entries no worker could take: ``entry``, ``stream``, ``reason``,
    ``fields`` (JSON). Bounded by ``MAXLEN ~ DEADLETTER_MAXLEN``; no TTL.
``<p>:env:name:<name>`` (string)
    The digest an environment's name stands for in the deployment (the newest
    environment an API node registered under it). No TTL.
``<p>:env:<hex>`` (string)
    An environment's record (JSON: its metadata, content digest, languages),
    ``<p>:env:<hex>:holders`` (hash) the nodes that serve it: base URL -> JSON
    ``{url, token, content_digest}``. No TTL (see ``sandlot.broker.redis_environments``).

Redis Cluster: the braces are hash tags. A task's three keys share one slot,
and everything of the queue shares the ``{jobs}`` slot, so every Lua script
the broker runs touches a single slot. The queue's scripts also reach keys
that are not among their declared KEYS (a tenant's stream popped from the
rotation, a session's owner's inbox): those names were made here and stored
in Redis, and all carry the ``{jobs}`` tag. Steps that span slots (submit,
claim, cancel, finish's acknowledgement, a hand-back) are separate commands,
ordered so that a crash between them leaves nothing a worker could trip over
(see ``sandlot.broker.redis``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "sandlot"
WORKERS_GROUP = "workers"  # every jobs stream's consumer group
IDEMPOTENCY_PENDING_TTL_S = 24 * 3600  # an idempotency key outlives any queued or running task
DEADLETTER_MAXLEN = 10_000  # entries kept in the dead-letter stream (approximate trim)
WAKE_SUFFIX = ":wake"  # an inbox's token list is its key plus this (the Lua scripts append it too)
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*")  # the characters quote(safe="") never escapes


def _part(text: str) -> str:
    """One key component: nothing that could end a hash tag or add a ``:`` level."""
    if _UNQUOTED.fullmatch(text):  # task ids, tenants: what quote() leaves as it is anyway, without its cost
        return text
    return quote(text, safe="")


@dataclass(frozen=True)
class Keys:
    """The key names under one prefix (one deployment per prefix can share a Redis)."""

    prefix: str = DEFAULT_PREFIX

    # ------------------------------------------------------------- a task

    def state(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:state"

    def events(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:events"

    def control(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{_part(task_id)}}}:control"

    # ------------------------------------------------------------ the queue

    def tenant_jobs(self, tenant: str) -> str:
        """The tenant's jobs stream."""
        return f"{self.prefix}:{{jobs}}:tenant:{_part(tenant)}"

    def is_tenant_jobs(self, stream: str) -> bool:
        """A tenant's stream (deleted once empty), as opposed to ``returned`` or an inbox."""
        return stream.startswith(f"{self.prefix}:{{jobs}}:tenant:")

    @property
    def returned(self) -> str:
        return f"{self.prefix}:{{jobs}}:returned"

    def inbox(self, worker: str) -> str:
        """The worker's inbox stream; also its name in ``workers`` and as a session's owner."""
        return f"{self.prefix}:{{jobs}}:worker:{_part(worker)}"

    @staticmethod
    def wake_of(inbox: str) -> str:
        return inbox + WAKE_SUFFIX

    @property
    def wake(self) -> str:
        return f"{self.prefix}:{{jobs}}:wake"

    @property
    def rotation(self) -> str:
        return f"{self.prefix}:{{jobs}}:rotation"

    @property
    def streams(self) -> str:
        return f"{self.prefix}:{{jobs}}:streams"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:{{jobs}}:workers"

    def session(self, tenant: str, session_id: str) -> str:
        return f"{self.prefix}:{{jobs}}:session:{_part(tenant)}:{_part(session_id)}"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:{{jobs}}:queued"

    @property
    def dequeued(self) -> str:
        """Task ids already counted out of ``queued`` (so a retried take never counts twice)."""
        return f"{self.prefix}:{{jobs}}:dequeued"

    # ------------------------------------------------------------ elsewhere

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:tenant:{_part(tenant)}:idem:{_part(key)}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def environment_names(self) -> str:
        """The set of every environment name registered (for listings: no SCAN over the keyspace)."""
        return f"{self.prefix}:env:names"

    def environment_name(self, name: str) -> str:
        return f"{self.prefix}:env:name:{_part(name)}"

    def environment(self, digest: str) -> str:
        return f"{self.prefix}:env:{_part(digest.removeprefix('sha256:'))}"

    def environment_holders(self, digest: str) -> str:
        return self.environment(digest) + ":holders"
