"""The distributed broker: the ``Broker`` protocol over Redis Streams, for API nodes and workers on many hosts.

Theory of operation
-------------------
A task is a state hash plus two streams, all in one Cluster slot (``keys``).
``submit`` writes the state hash first, then a script on the ``{jobs}`` slot
checks the ``queued`` counter against ``max_queued`` and adds the task id to a
jobs stream (``route``, in ``redis_scripts``): its tenant's own stream, which
joins the ``rotation`` list if it was not in it; or, for a session whose box a
live worker holds, that worker's inbox. An idempotency key is taken with
``SET NX`` before either, and given back if the queue is full. Every stream has
the consumer group ``workers``; every added job pushes a token on a wake list.

A worker's ``claim`` runs one script that reads (XREADGROUP) one job: from its
own inbox first, then from ``returned`` (jobs handed back), then from the
stream at the head of the rotation, which moves to the tail while it has more:
tenants are served in turn, each in its own order, so one tenant's burst does
not delay the others. With nothing to take, the worker blocks on its wake
lists (BLPOP). A script on the task's slot then takes the task (records the
entry, counts the delivery) unless it was cancelled while queued (acknowledged
and skipped) or has no state (dead-lettered, like any entry that is not ours).
The entry stays pending until ``finish`` has stored the exit event: only then
is it XACKed and XDELed (an empty tenant stream goes with it), so a worker
that dies leaves its job pending.

Recovery. Workers say they are alive with ``presence`` (a score in
``workers``, said every third of ``presence_ttl_s``, and the levels they
serve). Each presence also finds the workers whose presence expired and, in
the same script (so two watchers never both do it), requeues every job they
held at the front: a new ``returned`` entry that ``replaces`` the dead one,
which is acknowledged. The task's TAKE accepts the replacement, counts the
delivery (past ``max_deliveries`` the task ends as internal_error "worker
lost": the exit stored first, then the entry acknowledged, the order of every
finish), adds a
``requeued`` notice if the run had started, and bumps the task's ``fence``.
Every write a worker makes for a task (RUN, PUBLISH, FINISH, UNCLAIM) carries
the fence it took the task with and is refused once it is not the current
one (``Superseded``): a frozen worker that comes back never publishes a
second result. ``claim_idle_ms`` is only a backstop, for a live worker wedged
in a job: a running job's entry is heartbeated every third of it (XCLAIM
with min-idle 0, only if still this consumer's), and ``reclaim`` (run by
``claim`` every ``claim_idle_ms``) requeues every entry idle longer, the same
way. A session's first job binds the session
to the worker that takes it (``sessions.bind``: the owner and the box are
recorded in the session's hash); its later jobs are routed to that worker's
inbox. When the owner's presence has expired, new jobs go to the tenant's
stream again, the next presence of any worker moves what waited unread in
the dead inbox to ``returned``, and the worker that takes the next job binds
the session to itself with a fresh box (verdict ``reset``). A job taken by a worker that is not the session's
live owner is handed over to the owner's inbox.

``hand_back`` gives a held job back: the task's state is unclaimed first
(queued, no entry, the delivery uncounted), then a script requeues it at the
front (``returned``, or its session owner's inbox) and acknowledges the held
entry; in that order, a crash in between leaves a pending entry that
``reclaim`` takes over as usual. On SIGTERM a worker ``leave``s (no more jobs
routed to it; its unread inbox moves to ``returned``), hands back the jobs it
holds but will not finish, and ``retire``s: whatever is still pending to it
(a claim interrupted by the shutdown) goes back too.

Events go to the task's stream through a script that keeps ``seq`` strictly
increasing (an event or exit built outside the engine, or a retried run, is
stamped after the last one) and refuses anything after the exit. Subscribers
replay with XRANGE, then follow with XREAD BLOCK from the last id, and stop
at the exit event; ``finish`` gives the task's keys ``result_ttl_s``. Control
messages are a stream too, read from its start by the worker, so nothing sent
before the worker looked is lost.

Every Lua script touches one slot; steps spanning slots are ordered so a crash
between them is harmless (a state hash without a job is never claimed; a job
is only XACKed after its exit is stored, or after its task was unclaimed). A
task leaves the ``queued`` counter through an idempotent script (the
``dequeued`` set), on every take, so a worker that dies between taking a job
and counting it out cannot leak a queue slot; a hand-back counts it in again.

Unreachable Redis raises ``BrokerUnavailable`` (HTTP 503); after a failure,
calls fail fast until a capped, doubling backoff has passed, then try again.
The worker-side waits (``claim``, ``controls``) ride out an outage instead of
raising, since the worker has nothing better to do than wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sandlot.broker import (
    Control,
    Presence,
    TaskSpec,
    TaskState,
    TaskStatus,
    cancelled_before_start,
    event_to_wire,
)
from sandlot.broker import redis_scripts as lua
from sandlot.broker.keys import DEADLETTER_MAXLEN, IDEMPOTENCY_PENDING_TTL_S, WORKERS_GROUP, Keys
from sandlot.broker.redis_autopipe import Arg, AutoPipeline
from sandlot.broker.redis_environments import RedisEnvironments
from sandlot.broker.redis_session_files import RedisSessionFiles
from sandlot.broker.redis_sessions import RedisSessions
from sandlot.broker.redis_wire import (
    control_message,
    entries,
    event,
    exit_of,
    read_entries,
    spec_of,
    text,
    to_str,
)
from sandlot.config import SERVER_DEFAULTS
from sandlot.errors import AtCapacity, BrokerUnavailable, SessionNotFound, Superseded
from sandlot.models import NOTICE_REQUEUED, Event, ExitEvent, NoticeEvent, Status, terminal_event

log = logging.getLogger(__name__)

DEFAULT_CLAIM_IDLE_MS = 60_000
# A worker silent for presence_ttl_s is taken for dead and its jobs go to live workers. Presence is said
# every third of it, so two in a row can be missed (a loaded host, a slow Redis reply) before that happens.
_PRESENCE_BEATS = 3
_VOID = "void"  # a fence no delivery has (they are numbers): the write is refused
_VOID_KEPT = 1024  # void task ids remembered (a task's run ends soon after it is found void)
_REQUEUED_MESSAGE = "the worker running it was lost; the run starts again from the beginning on another"
_BLOCK_MS = 5_000  # longest blocking read: bounds how late an expired stream, a due reclaim or a lost token is noticed
_SOCKET_TIMEOUT_S = _BLOCK_MS / 1000 + 5.0  # a blocking read plus slack; a dead peer is noticed after this
_CONNECT_TIMEOUT_S = 2.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_CAP_S = 5.0
_REPLAY_PAGE = 500
_RETIRE_PAGE = 1000  # pending entries looked at per stream when a worker retires
_STATUSES = ("queued", "running", "done")
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_Entry = tuple[str, str, dict[bytes, bytes]]  # stream, entry id, fields


@dataclass(frozen=True)
class _Held:
    """A job this consumer holds: its entry, and the delivery token (``fence``) its writes carry."""

    stream: str
    entry: str
    fence: str


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        max_queued: int,
        result_ttl_s: float = SERVER_DEFAULTS.result_ttl_s,
        consumer_name: str | None = None,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        max_deliveries: int = SERVER_DEFAULTS.max_deliveries,
        events_maxlen: int = SERVER_DEFAULTS.events_maxlen,
        presence_ttl_s: float = SERVER_DEFAULTS.presence_ttl_s,
        keys: Keys | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.result_ttl_s = result_ttl_s
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.events_maxlen = events_maxlen
        self.presence_ttl_s = presence_ttl_s
        self.keys = keys or Keys()
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # our own backoff decides when to try again
        )
        # The submit path's own connection: the submits of one loop turn share a write (redis_autopipe).
        self._submits = AutoPipeline(
            url,
            connect_timeout_s=_CONNECT_TIMEOUT_S,
            reply_timeout_s=_SOCKET_TIMEOUT_S,
            on_lost=self._drop_idle_connections,
        )
        self._dropping: asyncio.Future[None] | None = None
        script = self._redis.register_script
        self._submit, self._take_next, self._take = script(lua.SUBMIT), script(lua.TAKE_NEXT), script(lua.TAKE)
        self._reclaim, self._ack_script, self._orphans = script(lua.RECLAIM), script(lua.ACK), script(lua.ORPHANS)
        self._requeue_script, self._unclaim = script(lua.REQUEUE), script(lua.UNCLAIM)
        self._dequeue_script, self._run = script(lua.DEQUEUE), script(lua.RUN)
        self._publish, self._finish, self._control = script(lua.PUBLISH), script(lua.FINISH), script(lua.CONTROL)
        self._release_key, self._heartbeat = script(lua.RELEASE_KEY), script(lua.HEARTBEAT)
        self._presence, self._leave, self._serving = script(lua.PRESENCE), script(lua.LEAVE), script(lua.SERVING)
        k = self.keys
        self._queue = [k.streams, k.rotation, k.wake, k.workers, k.returned]  # the first KEYS of a queue script
        self._inbox = k.inbox(self.consumer_name)
        self.sessions = RedisSessions(self._redis, k, self._queue, self._inbox, self._reachable)
        self.environments = RedisEnvironments(self._redis, k, self._reachable)  # the environment registry
        self.session_files = RedisSessionFiles(self._redis, k, self._queue, self._inbox, self._reachable)
        self._held: dict[str, _Held] = {}  # the tasks this consumer runs
        # Takes run one at a time in this process: a sweep for orphaned takes (after an outage) must never
        # see a take of ours that Redis ran but whose reply is not read yet.
        self._takes = asyncio.Lock()
        self._orphans_possible = False  # a take was in flight when Redis went away
        # Tasks whose delivery here turned out void (Superseded): any later write of ours is refused too.
        self._void: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._depth = 0  # the global counter as this process last saw it
        self._next_reclaim = 0.0
        self._reach = _Reachable()

    # ------------------------------------------------------------ doors

    async def submit(self, spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec:
        async with self._reachable():
            idem = None
            if idempotency_key is not None:
                idem = self.keys.idempotency(spec.tenant, idempotency_key)
                earlier = await self._earlier(spec.tenant, idem, spec.id)
                if earlier is not None:
                    return earlier
            state = self.keys.state(spec.id)
            hset: tuple[Arg, ...] = ("HSET", state, "tenant", spec.tenant, "status", "queued")
            hset += ("spec", spec.to_json(), "created", repr(spec.created))
            if idem is not None:
                hset += ("idem", idem)
            keys = [*self._queue, self.keys.queued, self.keys.tenant_jobs(spec.tenant)]
            if spec.session_id is not None:
                keys.append(self.keys.session(spec.tenant, spec.session_id))
            evalsha: tuple[Arg, ...] = (
                "EVALSHA",
                self._submit.sha,
                len(keys),
                *keys,
                self.max_queued,
                spec.id,
                spec.tenant,
            )
            verdict, depth = await self._queue_job(hset, evalsha)
            self._depth = int(depth)
            if int(verdict) != 1:
                await self._redis.delete(state)
                if idem is not None:
                    await self._release_key(keys=[idem], args=[spec.id])
                if int(verdict) < 0:
                    raise SessionNotFound(f"session {spec.session_id!r} not found or expired", field="session_id")
                raise AtCapacity("queue", f"{self._depth} executions are already queued")
        return spec

    async def _queue_job(self, hset: tuple[Arg, ...], evalsha: tuple[Arg, ...]) -> tuple[int, int]:
        """The state hash, then the SUBMIT script, in one round trip: (verdict, depth).

        On the auto-pipelined connection (``redis_autopipe``), which sends the
        submits of one loop turn in one write; by EVALSHA, so the script's text
        is not sent every time. A Redis that lost its script cache
        (a restart) answers NOSCRIPT: load the script and send both again (the HSET
        writes the same fields, so repeating it changes nothing).
        """
        replies = await self._submits.execute(hset, evalsha)
        if isinstance(replies[1], NoScriptError):
            await self._submits.execute(("SCRIPT", "LOAD", lua.SUBMIT))
            replies = await self._submits.execute(hset, evalsha)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        verdict, depth = replies[1]
        return int(verdict), int(depth)

    async def get(self, tenant: str, task_id: str) -> TaskState | None:
        async with self._reachable():
            raw = await self._redis.hgetall(self.keys.state(task_id))
        fields = text(raw)
        status = fields.get("status")
        if fields.get("tenant") != tenant or status not in _STATUSES:
            return None
        created = float(fields.get("created", 0.0))
        return TaskState(task_id, tenant, cast(TaskStatus, status), created, exit_of(fields), spec_of(fields))

    async def subscribe(self, tenant: str, task_id: str) -> AsyncIterator[Event]:
        """Replay from the first event (XRANGE), then follow live (XREAD BLOCK) until the exit event."""
        state, stream = self.keys.state(task_id), self.keys.events(task_id)
        async with self._reachable():
            owner = await self._redis.hget(state, "tenant")
        if owner is None or to_str(owner) != tenant:
            return
        last = "-"
        while True:  # replay, a page at a time
            async with self._reachable():
                page = await self._redis.xrange(stream, min=last, count=_REPLAY_PAGE)
            for entry_id, fields in entries(page):
                last = "(" + entry_id
                item = event(fields)
                yield item
                if isinstance(item, ExitEvent):
                    return
            if len(page or ()) < _REPLAY_PAGE:
                break
        last = last.lstrip("(") if last != "-" else "0-0"
        while True:  # live
            async with self._reachable():
                reply = await self._redis.xread({stream: last}, count=_REPLAY_PAGE, block=_BLOCK_MS)
                if not reply:
                    if not await self._redis.exists(state):  # expired while we waited
                        return
                    continue
            for entry_id, fields in read_entries(reply):
                last = entry_id
                item = event(fields)
                yield item
                if isinstance(item, ExitEvent):
                    return

    async def control(self, tenant: str, task_id: str, message: Control) -> bool:
        async with self._reachable():
            sent = await self._control(
                keys=[self.keys.state(task_id), self.keys.control(task_id)],
                args=[tenant, message.kind, message.data, message.signal, self.events_maxlen],
            )
        return bool(sent)

    async def cancel(self, tenant: str, task_id: str) -> bool:
        """Cancel a queued task at once, or ask the worker to kill a running one."""
        async with self._reachable():
            owner, status, spec_json, entry = await self._redis.hmget(
                self.keys.state(task_id), ["tenant", "status", "spec", "entry"]
            )
            if owner is None or to_str(owner) != tenant or status in (None, b"done"):
                return False
            if status == b"queued" and entry is None and spec_json is not None:
                spec = TaskSpec.from_json(spec_json)
                if await self._store_exit(task_id, cancelled_before_start(spec), only_if_unclaimed=True) == 1:
                    self._depth = await self._dequeue(task_id)
                    await self._redis.srem(self.keys.dequeued, task_id)
                    return True
                # A worker claimed it meanwhile: it gets a cancel message like any running task.
        return await self.control(tenant, task_id, Control("cancel"))

    def queue_depth(self) -> int:
        """Tasks waiting unclaimed, cluster-wide, as of this process's last submit, claim or cancel."""
        return self._depth

    async def queued(self) -> int:
        """The cluster-wide queue depth, read now."""
        async with self._reachable():
            self._depth = int(await self._redis.get(self.keys.queued) or 0)
        return self._depth

    # ----------------------------------------------------------- workers

    async def claim(self) -> TaskSpec:
        """The next task for this consumer: a stale one from a lost worker first, else the next in turn.

        Waits out a Redis outage (with the capped backoff) rather than raising.
        """
        cancels = _cancels_requested()
        token = ""  # the wake list a token was popped from, for the next take
        while True:
            try:
                spec, token = await self._claim_step(token)
            except BrokerUnavailable as exc:
                log.warning("claim: %s", exc)
                token = ""
                await asyncio.sleep(max(self._reach.retry_at - time.monotonic(), _BACKOFF_FIRST_S))
                continue
            await self._honour_lost_cancel(cancels, spec)
            if spec is not None:
                return spec

    async def _honour_lost_cancel(self, cancels: int, spec: TaskSpec | None) -> None:
        """Raise CancelledError if this task was cancelled during a Redis call that finished anyway.

        redis-py (8.x) can let a command that was in flight when its task was cancelled complete and
        return normally, the cancel lost. A draining worker's claim must still end, and a job its last
        take got meanwhile goes back to the front of the queue, as for any claimed job not started.
        """
        if _cancels_requested() <= cancels:
            return
        if spec is not None:
            await asyncio.shield(self.hand_back(spec.id))
        raise asyncio.CancelledError

    async def reclaim(self) -> int:
        """Requeue at the front every job pending longer than ``claim_idle_ms``; how many went back.

        The backstop for a live worker wedged in a job past its deadline (a dead
        worker's jobs go back as soon as its presence expires, see ``presence``).
        """
        async with self._reachable():
            return int(await self._reclaim(keys=self._queue, args=[self.consumer_name, self.claim_idle_ms]))

    @property
    def heartbeat_interval_s(self) -> float:
        """A third of ``claim_idle_ms``: two heartbeats can be lost before the job looks abandoned."""
        return self.claim_idle_ms / 3000

    async def heartbeat(self, task_id: str) -> bool:
        """Reset the idle time of a job this consumer holds, so ``reclaim`` leaves it alone.

        False once the job is no longer ours: acknowledged, handed back, or taken over
        after we were silent too long. Raises ``BrokerUnavailable`` in an outage.
        """
        held = self._held.get(task_id)
        if held is None:
            return False
        async with self._reachable():
            refreshed = await self._heartbeat(keys=[held.stream], args=[held.entry, self.consumer_name, WORKERS_GROUP])
        return bool(refreshed)

    async def mark_running(self, task_id: str) -> None:
        async with self._reachable():
            current = await self._run(keys=[self.keys.state(task_id)], args=[self._fence(task_id)])
        if not int(current):
            self._superseded(task_id)

    async def publish(self, task_id: str, event: Event) -> None:
        """Add an event to the task's stream; ``Superseded`` if this worker's delivery is no longer current."""
        async with self._reachable():
            stored = await self._publish(
                keys=[self.keys.state(task_id), self.keys.events(task_id)],
                args=[event.seq, json.dumps(event_to_wire(event)), self.events_maxlen, self._fence(task_id)],
            )
        if int(stored) < 0:
            self._superseded(task_id)

    async def finish(self, task_id: str, exit_event: ExitEvent) -> None:
        """Store the exit and acknowledge the job; ``Superseded`` (nothing stored) if it moved on."""
        try:
            async with self._reachable():
                fence = self._fence(task_id)
                stored = await self._store_exit(task_id, exit_event, only_if_unclaimed=False, fence=fence)
            if stored < 0:
                self._superseded(task_id)
        finally:
            self._held.pop(task_id, None)

    def _fence(self, task_id: str) -> str:
        """The delivery token of a task this consumer holds ('' for one it does not: an unfenced write)."""
        held = self._held.get(task_id)
        if held is None:
            return _VOID if task_id in self._void else ""
        return held.fence

    def _superseded(self, task_id: str) -> None:
        self._held.pop(task_id, None)
        self._void[task_id] = None
        while len(self._void) > _VOID_KEPT:
            self._void.popitem(last=False)
        raise Superseded(f"task {task_id} moved on to another worker; this worker's run of it is void")

    async def controls(self, task_id: str) -> AsyncIterator[Control]:
        """Every control message for the task, from the first; waits out a Redis outage."""
        state, stream = self.keys.state(task_id), self.keys.control(task_id)
        last = "0-0"
        while True:
            try:
                async with self._reachable():
                    reply = await self._redis.xread({stream: last}, count=_REPLAY_PAGE, block=_BLOCK_MS)
                    if not reply and not await self._redis.exists(state):
                        return
            except BrokerUnavailable as exc:
                log.warning("controls of %s: %s", task_id, exc)
                await asyncio.sleep(max(self._reach.retry_at - time.monotonic(), _BACKOFF_FIRST_S))
                continue
            for entry_id, fields in read_entries(reply):
                last = entry_id
                yield control_message(fields)

    def _drop_idle_connections(self) -> None:
        """Redis went away (the submit connection saw it): the connections idle in redis-py's pool are
        dead too. Closed now, they reconnect when next used, rather than each failing one request
        with a 503 after Redis is back."""
        if self._dropping is None or self._dropping.done():
            self._dropping = asyncio.ensure_future(self._disconnect_idle())

    async def _disconnect_idle(self) -> None:
        with contextlib.suppress(Exception):  # a connection that will not close cleanly is gone all the same
            await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self._submits.close()
        await self._redis.aclose()

    # ---------------------------------------------- many workers (Distributed)

    @property
    def presence_interval_s(self) -> float:
        """How often a worker says it is alive: a third of ``presence_ttl_s``."""
        return self.presence_ttl_s / _PRESENCE_BEATS

    async def presence(
        self,
        sessions: Sequence[tuple[str, str]],
        levels: Sequence[str] = ("jail",),
        room: Mapping[str, tuple[int, int]] | None = None,
    ) -> Presence:
        """Say this worker is alive (serving ``levels``, with ``room`` for more sessions) for ``presence_ttl_s``.

        Also declares the workers whose presence expired dead and, in the same
        script, sends every job they held (started or not) back to the front of
        the queue and their inboxes' unread jobs to ``returned``. Returns which of
        the given sessions still come here, and whether this worker had itself
        been declared dead since its last presence.
        """
        session_keys = [self.keys.session(tenant, session_id) for tenant, session_id in sessions]
        ttl_ms = max(1, int(self.presence_ttl_s * 1000))
        async with self._reachable():
            reply = await self._presence(
                keys=[*self._queue, self._inbox, *session_keys],
                args=[ttl_ms, self.consumer_name, " ".join(levels), room_text(room or {})],
            )
        lost, *owned = reply
        return Presence({pair for pair, flag in zip(sessions, owned, strict=False) if int(flag)}, bool(int(lost)))

    async def serving(self, level: str) -> int:
        """How many live workers (presence not expired) serve the isolation level."""
        async with self._reachable():
            return int(await self._serving(keys=self._queue, args=[level]))

    async def hand_back(self, task_id: str) -> bool:
        """Give a job this consumer holds back to the front of the queue; False if it was not ours any more."""
        held = self._held.get(task_id)
        if held is None:
            return False
        async with self._reachable():
            requeued = await self._requeue(task_id, held.stream, held.entry, held.fence)
        self._held.pop(task_id, None)  # only now: with Redis unreachable it is still ours, to try again
        return requeued

    async def leave(self) -> None:
        """No more jobs routed to this worker; what waits unread in its inbox goes to ``returned``."""
        async with self._reachable():
            await self._leave(keys=[*self._queue, self._inbox], args=[self.consumer_name, 0])

    async def retire(self) -> int:
        """Hand back every job still pending to this consumer (call once nothing runs); how many went back."""
        handed = 0
        async with self._reachable():
            for raw_stream in await self._redis.smembers(self.keys.streams):
                stream = to_str(raw_stream)
                try:
                    pending = await self._redis.xpending_range(
                        stream, WORKERS_GROUP, min="-", max="+", count=_RETIRE_PAGE, consumername=self.consumer_name
                    )
                except ResponseError:  # NOGROUP: the stream went meanwhile
                    continue
                for item in pending:
                    entry_id = to_str(item["message_id"])
                    rows = entries(await self._redis.xrange(stream, min=entry_id, max=entry_id))
                    task = rows[0][1].get(b"task") if rows else None
                    if task is None:
                        await self._ack(stream, entry_id)
                    elif await self._requeue(task.decode(errors="replace"), stream, entry_id, ""):
                        handed += 1
            self._held.clear()
            await self._leave(keys=[*self._queue, self._inbox], args=[self.consumer_name, 1])
        return handed

    # ------------------------------------------------------------ private

    async def _earlier(self, tenant: str, idem: str, task_id: str) -> TaskSpec | None:
        """The task an idempotency key already names, or None once the key is ours."""
        while True:
            if await self._redis.set(idem, task_id, nx=True, ex=IDEMPOTENCY_PENDING_TTL_S):
                return None
            earlier_id = await self._redis.get(idem)
            if earlier_id is None:
                continue  # expired in between: try to take it again
            owner, spec_json = await self._redis.hmget(self.keys.state(to_str(earlier_id)), ["tenant", "spec"])
            if spec_json is not None and owner is not None and to_str(owner) == tenant:
                return TaskSpec.from_json(spec_json)
            await self._redis.set(idem, task_id, ex=IDEMPOTENCY_PENDING_TTL_S)  # its task is gone: a new one
            return None

    async def claim_routed(self) -> TaskSpec | None:
        """A job of this worker's inbox (runs of the sessions whose boxes it holds), or None if none came
        within one blocking read: what a worker with no free box can still start (in a session's box)."""
        cancels = _cancels_requested()
        token = ""
        for _ in range(2):  # a take, and if a token came meanwhile, the take it announced
            spec, token = await self._claim_step(token, routed_only=True)
            await self._honour_lost_cancel(cancels, spec)
            if spec is not None or not token:
                return spec
        return None

    async def _claim_step(self, token: str, *, routed_only: bool = False) -> tuple[TaskSpec | None, str]:
        """One step of ``claim``: a task, or None and the token to take the next job with."""
        if not token and not routed_only and time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.claim_idle_ms / 1000
            await self.reclaim()  # what it finds goes to the front, for this worker or any other
        async with self._reachable():
            taking = asyncio.ensure_future(self._take_guarded(token, routed_only))
            try:
                taken, spec = await asyncio.shield(taking)
            except asyncio.CancelledError:
                # A cancel (the worker draining) must not strand a job the take already took in Redis: it
                # would stay pending to this consumer until retire, after the drain deadline, instead of
                # going back to the front at once like every claimed job that has not started.
                taken, spec = await taking
                if spec is not None:
                    await self.hand_back(spec.id)
                raise
            if taken:
                return spec, ""
            if routed_only:
                popped = await self._redis.blpop([Keys.wake_of(self._inbox)], timeout=_BLOCK_MS / 1000)
                return None, to_str(popped[0]) if popped else ""
            block_s = max(0.001, min(_BLOCK_MS / 1000, self._next_reclaim - time.monotonic()))
            popped = await self._redis.blpop([Keys.wake_of(self._inbox), self.keys.wake], timeout=block_s)
        return None, to_str(popped[0]) if popped else ""

    async def _take_guarded(self, token: str, routed_only: bool) -> tuple[bool, TaskSpec | None]:
        """``_take_one``, one at a time; first giving back what a take lost in an outage left pending here."""
        async with self._takes:
            if self._orphans_possible:
                held = [f"{h.stream}|{h.entry}" for h in self._held.values()]
                moved = int(await self._orphans(keys=self._queue, args=[self.consumer_name, *held]))
                self._orphans_possible = False
                if moved:
                    log.warning("gave back %d job(s) whose take was cut off by a Redis outage", moved)
            try:
                return await self._take_one(token, routed_only)
            except _UNAVAILABLE:
                self._orphans_possible = True  # Redis may have run it: what it took is pending here, unread
                raise

    async def _take_one(self, token: str, routed_only: bool) -> tuple[bool, TaskSpec | None]:
        """Take the next jobs entry there is: (False, None) if none, else (True, its spec or None if void)."""
        reply = await self._take_next(
            keys=[*self._queue, self._inbox, Keys.wake_of(self._inbox)],
            args=[self.consumer_name, token, int(routed_only)],
        )
        if not reply:
            return False, None
        stream, entry_id, fields = reply
        return True, await self._take_entry((to_str(stream), to_str(entry_id), _pairs(fields)))

    async def _take_entry(self, delivered: _Entry) -> TaskSpec | None:
        """Take one delivered jobs entry: the task's spec, or None (skipped or dead-lettered)."""
        stream, entry_id, fields = delivered
        if b"task" not in fields:
            await self._dead_letter(delivered, "malformed entry: no task id")
            return None
        task_id = fields[b"task"].decode(errors="replace")
        replaces = fields.get(b"replaces", b"").decode(errors="replace")  # a lost worker's entry, requeued
        notice = json.dumps(event_to_wire(NoticeEvent(NOTICE_REQUEUED, _REQUEUED_MESSAGE, time=time.time())))
        verdict, *rest = await self._take(
            keys=[self.keys.state(task_id), self.keys.events(task_id)],
            args=[entry_id, self.max_deliveries, stream, replaces, notice],
        )
        verdict = verdict.decode()
        if verdict == "done":  # cancelled while queued, or finished but not yet acknowledged
            await self._ack(stream, entry_id)
            return None
        if verdict in ("missing", "duplicate"):
            await self._dead_letter(delivered, f"{verdict} task {task_id!r}")
            return None
        # Every take (first, or after a worker died before counting it out) leaves the queued count,
        # exactly once per task.
        self._depth = await self._dequeue(task_id)
        try:
            spec = TaskSpec.from_json(rest[0])
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead_letter(delivered, f"malformed spec of task {task_id!r}: {exc}")
            malformed = terminal_event(Status.INTERNAL_ERROR, f"malformed task spec: {exc}", language="")
            await self._store_exit(task_id, malformed, only_if_unclaimed=False, fence=to_str(rest[1]))
            return None
        fence = to_str(rest[1])
        if verdict == "lost":
            # The order of every finish: the exit is stored, then the entry (recorded by the take) is
            # acknowledged by _store_exit. A crash between leaves the entry pending; its next take finds
            # the task done and acknowledges it, where the other order would leave a task with no job.
            lost = terminal_event(Status.INTERNAL_ERROR, "worker lost", language=spec.language)
            await self._store_exit(task_id, lost, only_if_unclaimed=False, fence=fence)
            return None
        self._held[task_id] = _Held(stream, entry_id, fence)
        return spec

    async def _requeue(self, task_id: str, stream: str, entry_id: str, fence: str) -> bool:
        """Unclaim the task (its slot), then requeue it at the front and acknowledge the held entry ({jobs})."""
        raw_verdict, *rest = await self._unclaim(keys=[self.keys.state(task_id)], args=[entry_id, fence])
        verdict = to_str(raw_verdict)
        if verdict == "other":  # taken over by another worker: its entry is not ours to touch
            return False
        again = verdict == "ok"
        tenant, keys = "", [*self._queue, self.keys.queued, self.keys.dequeued, stream, self.keys.returned]
        if again:
            spec = TaskSpec.from_json(rest[0])
            tenant, keys[-1] = spec.tenant, self.keys.tenant_jobs(spec.tenant)
            if spec.session_id is not None:
                keys.append(self.keys.session(spec.tenant, spec.session_id))
        await self._requeue_script(
            keys=keys, args=[task_id, tenant, entry_id, int(again), int(self.keys.is_tenant_jobs(stream))]
        )
        return again

    async def _dequeue(self, task_id: str) -> int:
        return int(await self._dequeue_script(keys=[self.keys.queued, self.keys.dequeued], args=[task_id]))

    async def _store_exit(
        self, task_id: str, exit_event: ExitEvent, *, only_if_unclaimed: bool, fence: str = ""
    ) -> int:
        """Store the exit (after every earlier event), expire the task, then acknowledge its job.

        -> 1 stored, 0 not (unknown, already done, or claimed when ``only_if_unclaimed``), -1 not the
        current delivery (``fence``).
        """
        stored, entry, idem, stream = await self._finish(
            keys=[self.keys.state(task_id), self.keys.events(task_id), self.keys.control(task_id)],
            args=[
                exit_event.seq,
                json.dumps(event_to_wire(exit_event)),
                self.events_maxlen,
                max(1, int(self.result_ttl_s * 1000)),
                int(only_if_unclaimed),
                fence,
            ],
        )
        if int(stored) != 1:
            return int(stored)
        if entry and stream:
            await self._ack(stream.decode(), entry.decode())
            await self._redis.srem(self.keys.dequeued, task_id)  # finished: no further take can come
        if idem:
            await self._redis.pexpire(idem.decode(), max(1, int(self.result_ttl_s * 1000)))
        return 1

    async def _ack(self, stream: str, entry_id: str) -> None:
        await self._ack_script(keys=[*self._queue, stream], args=[entry_id, int(self.keys.is_tenant_jobs(stream))])

    async def _dead_letter(self, delivered: _Entry, reason: str) -> None:
        stream, entry_id, fields = delivered
        log.warning("dead-lettering jobs entry %s of %s: %s", entry_id, stream, reason)
        readable = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        await self._redis.xadd(
            self.keys.deadletter,
            {"entry": entry_id, "stream": stream, "reason": reason, "fields": json.dumps(readable)},
            maxlen=DEADLETTER_MAXLEN,
            approximate=True,
        )
        await self._ack(stream, entry_id)

    def _reachable(self) -> _Reachable:
        """``async with`` it around Redis calls: see ``_Reachable``."""
        return self._reach


class _Reachable:
    """Map an unreachable Redis to BrokerUnavailable; fail fast until the backoff has passed.

    One shared object with the backoff state, entered by every call at once (a
    class rather than ``@asynccontextmanager``, whose generator per call showed
    in an execute's cost).
    """

    def __init__(self) -> None:
        self.retry_at = 0.0
        self.backoff_s = 0.0

    async def __aenter__(self) -> None:
        wait_s = self.retry_at - time.monotonic()
        if wait_s > 0:
            raise BrokerUnavailable(f"redis is unreachable; next attempt in {wait_s:.1f}s")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.backoff_s = 0.0
        elif isinstance(exc, _UNAVAILABLE):
            self.backoff_s = min(_BACKOFF_CAP_S, self.backoff_s * 2 or _BACKOFF_FIRST_S)
            self.retry_at = time.monotonic() + self.backoff_s
            raise BrokerUnavailable(f"redis is unreachable: {exc}") from exc


def _cancels_requested() -> int:
    """How many cancels of the current task are pending (see ``RedisBroker._honour_lost_cancel``)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _pairs(flat: Any) -> dict[bytes, bytes]:
    """A script's entry fields (a flat list, or nil for a deleted entry) as a dict."""
    items = list(flat or ())
    return dict(zip(items[::2], items[1::2], strict=False))


def room_text(room: Mapping[str, tuple[int, int]]) -> str:
    """A presence's room as the BIND script reads it: ``level:files:stateful`` words."""
    return " ".join(f"{level}:{max(files, 0)}:{max(cells, 0)}" for level, (files, cells) in sorted(room.items()))
