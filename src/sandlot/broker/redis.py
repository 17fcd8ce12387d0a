"""The distributed broker: the ``Broker`` protocol over Redis Streams, for API nodes and workers on many hosts.

Theory of operation
-------------------
A task is a state hash plus two streams, all in one Cluster slot (``keys``).
``submit`` writes the state hash first, then a script on the jobs slot checks
the ``queued`` counter against ``max_queued`` and XADDs the task id to the
jobs stream; an idempotency key is taken with ``SET NX`` before either, and
given back if the queue is full. A worker's ``claim`` reads the consumer group
``workers`` with XREADGROUP BLOCK; a script on the task's slot then takes the
task (records the entry id, counts the delivery) unless it was cancelled while
queued (acknowledged and skipped) or has no state (dead-lettered, like any
entry that is not ours). The entry stays pending until ``finish`` has stored
the exit event: only then is it XACKed and XDELed, so a worker that dies
leaves its job pending, and ``reclaim`` (run by ``claim`` every
``claim_idle_ms``) takes it over with XAUTOCLAIM; past ``max_deliveries`` the
task ends as internal_error "worker lost" instead. A live worker's job is never
taken: while it runs, the worker calls ``heartbeat`` every third of
``claim_idle_ms``, which resets the entry's idle time (XCLAIM with min-idle 0,
only if the entry is still this consumer's), so ``claim_idle_ms`` bounds how
long a dead worker's job waits, not how long a job may run.

Events go to the task's stream through a script that keeps ``seq`` strictly
increasing (an event or exit built outside the engine, or a retried run, is
stamped after the last one) and refuses anything after the exit. Subscribers
replay with XRANGE, then follow with XREAD BLOCK from the last id, and stop
at the exit event; ``finish`` gives the task's keys ``result_ttl_s``. Control
messages are a stream too, read from its start by the worker, so nothing sent
before the worker looked is lost.

Every Lua script touches one slot; steps spanning slots are ordered so a crash
between them is harmless (a state hash without a job is never claimed; a job
is only XACKed after its exit is stored). A task leaves the ``queued`` counter
through an idempotent script (the ``dequeued`` set), on every take, so a worker
that dies between taking a job and counting it out cannot leak a queue slot.

Fairness gap (first version): one jobs stream, so tasks are claimed in submit
order across tenants; one tenant's burst delays the others. Per-tenant streams
served in rotation are the planned fix.

Unreachable Redis raises ``BrokerUnavailable`` (HTTP 503); after a failure,
calls fail fast until a capped, doubling backoff has passed, then try again.
The worker-side waits (``claim``, ``controls``) ride out an outage instead of
raising, since the worker has nothing better to do than wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sandlot.broker import (
    DEFAULT_RESULT_TTL_S,
    BrokerUnavailable,
    Control,
    QueueFull,
    TaskSpec,
    TaskState,
    TaskStatus,
    cancelled_before_start,
    event_from_wire,
    event_to_wire,
)
from sandlot.broker.keys import DEADLETTER_MAXLEN, IDEMPOTENCY_PENDING_TTL_S, WORKERS_GROUP, Keys
from sandlot.models import Event, ExitEvent, Result, Status

log = logging.getLogger(__name__)

DEFAULT_CLAIM_IDLE_MS = 60_000
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_EVENTS_MAXLEN = 10_000
_BLOCK_MS = 5_000  # longest blocking read: bounds how late an expired stream or a due reclaim is noticed
_SOCKET_TIMEOUT_S = _BLOCK_MS / 1000 + 5.0  # a blocking read plus slack; a dead peer is noticed after this
_CONNECT_TIMEOUT_S = 2.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_CAP_S = 5.0
_REPLAY_PAGE = 500
_STATUSES = ("queued", "running", "done")
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: jobs, queued. ARGV: max_queued, task id, tenant. -> {taken 0/1, depth}
_ENQUEUE = """
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('XADD', KEYS[1], '*', 'task', ARGV[2], 'tenant', ARGV[3])
return {1, redis.call('INCR', KEYS[2])}
"""

# KEYS: state. ARGV: entry id, max deliveries (0: no limit). -> {verdict, spec}
# 'new': taken for the first time (it leaves the queued count); 'ok': delivered again.
_TAKE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'done' then return {'done'} end
local entry = redis.call('HGET', KEYS[1], 'entry')
local verdict = 'ok'
if not entry then
  redis.call('HSET', KEYS[1], 'entry', ARGV[1])
  verdict = 'new'
elseif entry ~= ARGV[1] then
  return {'duplicate'}
elseif ARGV[2] ~= '0' and tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') >= tonumber(ARGV[2]) then
  return {'lost', redis.call('HGET', KEYS[1], 'spec')}
end
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
return {verdict, redis.call('HGET', KEYS[1], 'spec')}
"""

# KEYS: queued, dequeued. ARGV: task id. -> the queued count. Counts a task out once, however often taken.
_DEQUEUE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""

# KEYS: state. Only a queued task becomes running (never a finished one, nor an unknown id).
_RUN = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running') end
"""

# KEYS: state, events. ARGV: seq, event JSON, maxlen. -> the stored seq, or 0 (unknown or done task)
_PUBLISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' then return 0 end
local seq = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1)
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'event', ARGV[2])
return seq
"""

# KEYS: state, events, control. ARGV: seq, exit JSON, maxlen, ttl ms, only-if-unclaimed 0/1.
# -> {stored 0/1, entry id, idempotency key name}
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' then return {0, '', ''} end
local entry = redis.call('HGET', KEYS[1], 'entry') or ''
if ARGV[5] == '1' and (status ~= 'queued' or entry ~= '') then return {0, '', ''} end
local seq = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1)
redis.call('HSET', KEYS[1], 'status', 'done', 'seq', seq, 'exit', ARGV[2], 'exit_seq', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'event', ARGV[2])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return {1, entry, redis.call('HGET', KEYS[1], 'idem') or ''}
"""

# KEYS: state, control. ARGV: tenant, kind, data, signal, maxlen. -> 1 sent, 0 not (unknown, foreign, done)
_CONTROL = """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'done' then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', ARGV[2], 'data', ARGV[3], 'signal', ARGV[4])
return 1
"""

# KEYS: jobs. ARGV: entry id, consumer, group. -> 1 refreshed, 0 no longer ours (taken over, or acknowledged)
# Checked and claimed in one step, so a heartbeat never takes back a job another worker has reclaimed.
_HEARTBEAT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"""

# KEYS: idempotency key. ARGV: task id. Give the key back only if it still names this task.
_RELEASE_KEY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        max_queued: int,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        consumer_name: str | None = None,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        keys: Keys | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.result_ttl_s = result_ttl_s
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.events_maxlen = events_maxlen
        self.keys = keys or Keys()
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # our own backoff decides when to try again
        )
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._take = self._redis.register_script(_TAKE)
        self._dequeue_script = self._redis.register_script(_DEQUEUE)
        self._run = self._redis.register_script(_RUN)
        self._publish = self._redis.register_script(_PUBLISH)
        self._finish = self._redis.register_script(_FINISH)
        self._control = self._redis.register_script(_CONTROL)
        self._release_key = self._redis.register_script(_RELEASE_KEY)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._held: dict[str, str] = {}  # task id -> jobs entry id, for the tasks this consumer runs
        self._depth = 0  # the global counter as this process last saw it
        self._group_ready = False
        self._next_reclaim = 0.0
        self._retry_at = 0.0
        self._backoff_s = 0.0

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
            fields = {"tenant": spec.tenant, "status": "queued", "spec": spec.to_json(), "created": repr(spec.created)}
            if idem is not None:
                fields["idem"] = idem
            await self._redis.hset(state, mapping=fields)  # type: ignore[arg-type]
            taken, depth = await self._enqueue(
                keys=[self.keys.jobs, self.keys.queued], args=[self.max_queued, spec.id, spec.tenant]
            )
            self._depth = int(depth)
            if not int(taken):
                await self._redis.delete(state)
                if idem is not None:
                    await self._release_key(keys=[idem], args=[spec.id])
                raise QueueFull(f"{self._depth} executions are already queued")
        return spec

    async def get(self, tenant: str, task_id: str) -> TaskState | None:
        async with self._reachable():
            raw = await self._redis.hgetall(self.keys.state(task_id))
        fields = _text(raw)
        status = fields.get("status")
        if fields.get("tenant") != tenant or status not in _STATUSES:
            return None
        return TaskState(task_id, tenant, cast(TaskStatus, status), float(fields.get("created", 0.0)), _exit(fields))

    async def subscribe(self, tenant: str, task_id: str) -> AsyncIterator[Event]:
        """Replay from the first event (XRANGE), then follow live (XREAD BLOCK) until the exit event."""
        state, stream = self.keys.state(task_id), self.keys.events(task_id)
        async with self._reachable():
            owner = await self._redis.hget(state, "tenant")
        if owner is None or _str(owner) != tenant:
            return
        last = "-"
        while True:  # replay, a page at a time
            async with self._reachable():
                page = await self._redis.xrange(stream, min=last, count=_REPLAY_PAGE)
            for entry_id, fields in _entries(page):
                last = "(" + entry_id
                event = _event(fields)
                yield event
                if isinstance(event, ExitEvent):
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
            for entry_id, fields in _read_entries(reply):
                last = entry_id
                event = _event(fields)
                yield event
                if isinstance(event, ExitEvent):
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
            if owner is None or _str(owner) != tenant or status in (None, b"done"):
                return False
            if status == b"queued" and entry is None and spec_json is not None:
                spec = TaskSpec.from_json(spec_json)
                if await self._store_exit(task_id, cancelled_before_start(spec), only_if_unclaimed=True):
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
        """The next task for this consumer: a stale one from a lost worker first, else a new one.

        Waits out a Redis outage (with the capped backoff) rather than raising.
        """
        while True:
            try:
                spec = await self._claim_once()
            except BrokerUnavailable as exc:
                log.warning("claim: %s", exc)
                await asyncio.sleep(max(self._retry_at - time.monotonic(), _BACKOFF_FIRST_S))
                continue
            if spec is not None:
                return spec

    async def reclaim(self, *, count: int = 1) -> list[TaskSpec]:
        """Take over up to ``count`` jobs pending longer than ``claim_idle_ms`` on other consumers."""
        specs: list[TaskSpec] = []
        async with self._reachable():
            await self._ensure_group()
            cursor = "0-0"
            while len(specs) < count:
                try:
                    reply = await self._redis.xautoclaim(
                        self.keys.jobs,
                        WORKERS_GROUP,
                        self.consumer_name,
                        self.claim_idle_ms,
                        start_id=cursor,
                        count=count - len(specs),
                    )
                except ResponseError as exc:
                    self._lost_group(exc)
                    break
                cursor = _str(reply[0])
                for entry_id, fields in _entries(reply[1]):
                    spec = await self._take_entry(entry_id, fields, retry=True)
                    if spec is not None:
                        specs.append(spec)
                if cursor == "0-0":
                    break
        return specs

    @property
    def heartbeat_interval_s(self) -> float:
        """A third of ``claim_idle_ms``: two heartbeats can be lost before the job looks abandoned."""
        return self.claim_idle_ms / 3000

    async def heartbeat(self, task_id: str) -> bool:
        """Reset the idle time of a job this consumer holds, so ``reclaim`` leaves it alone.

        False once the job is no longer ours: acknowledged, or taken over after we
        were silent too long. Raises ``BrokerUnavailable`` in an outage.
        """
        async with self._reachable():
            entry = self._held.get(task_id)
            if entry is None:
                raw = await self._redis.hget(self.keys.state(task_id), "entry")
                if raw is None:
                    return False
                entry = self._held[task_id] = _str(raw)
            try:
                refreshed = await self._heartbeat(
                    keys=[self.keys.jobs], args=[entry, self.consumer_name, WORKERS_GROUP]
                )
            except ResponseError as exc:
                self._lost_group(exc)  # Redis lost its data: the job went with it
                return False
        return bool(refreshed)

    async def mark_running(self, task_id: str) -> None:
        async with self._reachable():
            await self._run(keys=[self.keys.state(task_id)])

    async def publish(self, task_id: str, event: Event) -> None:
        async with self._reachable():
            await self._publish(
                keys=[self.keys.state(task_id), self.keys.events(task_id)],
                args=[event.seq, json.dumps(event_to_wire(event)), self.events_maxlen],
            )

    async def finish(self, task_id: str, exit_event: ExitEvent) -> None:
        try:
            async with self._reachable():
                await self._store_exit(task_id, exit_event, only_if_unclaimed=False)
        finally:
            self._held.pop(task_id, None)

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
                await asyncio.sleep(max(self._retry_at - time.monotonic(), _BACKOFF_FIRST_S))
                continue
            for entry_id, fields in _read_entries(reply):
                last = entry_id
                yield _control_message(fields)

    async def close(self) -> None:
        await self._redis.aclose()

    # ------------------------------------------------------------ private

    async def _earlier(self, tenant: str, idem: str, task_id: str) -> TaskSpec | None:
        """The task an idempotency key already names, or None once the key is ours."""
        while True:
            if await self._redis.set(idem, task_id, nx=True, ex=IDEMPOTENCY_PENDING_TTL_S):
                return None
            earlier_id = await self._redis.get(idem)
            if earlier_id is None:
                continue  # expired in between: try to take it again
            owner, spec_json = await self._redis.hmget(self.keys.state(_str(earlier_id)), ["tenant", "spec"])
            if spec_json is not None and owner is not None and _str(owner) == tenant:
                return TaskSpec.from_json(spec_json)
            await self._redis.set(idem, task_id, ex=IDEMPOTENCY_PENDING_TTL_S)  # its task is gone: a new one
            return None

    async def _claim_once(self) -> TaskSpec | None:
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.claim_idle_ms / 1000
            stale = await self.reclaim(count=1)
            if stale:
                return stale[0]
        block_ms = max(1, min(_BLOCK_MS, int((self._next_reclaim - time.monotonic()) * 1000)))
        async with self._reachable():
            await self._ensure_group()
            try:
                reply = await self._redis.xreadgroup(
                    WORKERS_GROUP, self.consumer_name, {self.keys.jobs: ">"}, count=1, block=block_ms
                )
            except ResponseError as exc:
                self._lost_group(exc)
                return None
            for entry_id, fields in _read_entries(reply):
                return await self._take_entry(entry_id, fields, retry=False)
        return None

    async def _take_entry(self, entry_id: str, fields: dict[bytes, bytes] | None, *, retry: bool) -> TaskSpec | None:
        """Take one delivered jobs entry: the task's spec, or None (skipped or dead-lettered)."""
        if not fields or b"task" not in fields:
            await self._dead_letter(entry_id, fields, "malformed entry: no task id")
            return None
        task_id = fields[b"task"].decode(errors="replace")
        verdict, *rest = await self._take(
            keys=[self.keys.state(task_id)], args=[entry_id, self.max_deliveries if retry else 0]
        )
        verdict = verdict.decode()
        if verdict == "done":  # cancelled while queued, or finished but not yet acknowledged
            await self._ack(entry_id)
            return None
        if verdict in ("missing", "duplicate"):
            await self._dead_letter(entry_id, fields, f"{verdict} task {task_id!r}")
            return None
        # Every take (first, or after a worker died before counting it out) leaves the queued count,
        # exactly once per task.
        self._depth = await self._dequeue(task_id)
        try:
            spec = TaskSpec.from_json(rest[0])
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead_letter(entry_id, fields, f"malformed spec of task {task_id!r}: {exc}")
            await self._store_exit(task_id, _internal(f"malformed task spec: {exc}"), only_if_unclaimed=False)
            return None
        if verdict == "lost":
            lost = _internal("worker lost", language=spec.language)
            await self._store_exit(task_id, lost, only_if_unclaimed=False)
            return None
        self._held[task_id] = entry_id
        return spec

    async def _dequeue(self, task_id: str) -> int:
        return int(await self._dequeue_script(keys=[self.keys.queued, self.keys.dequeued], args=[task_id]))

    async def _store_exit(self, task_id: str, exit_event: ExitEvent, *, only_if_unclaimed: bool) -> bool:
        """Store the exit (after every earlier event), expire the task, then acknowledge its job."""
        stored, entry, idem = await self._finish(
            keys=[self.keys.state(task_id), self.keys.events(task_id), self.keys.control(task_id)],
            args=[
                exit_event.seq,
                json.dumps(event_to_wire(exit_event)),
                self.events_maxlen,
                max(1, int(self.result_ttl_s * 1000)),
                int(only_if_unclaimed),
            ],
        )
        if not int(stored):
            return False
        if entry:
            await self._ack(entry.decode())
            await self._redis.srem(self.keys.dequeued, task_id)  # finished: no further take can come
        if idem:
            await self._redis.pexpire(idem.decode(), max(1, int(self.result_ttl_s * 1000)))
        return True

    async def _ack(self, entry_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.jobs, WORKERS_GROUP, entry_id)
            pipe.xdel(self.keys.jobs, entry_id)
            await pipe.execute()

    async def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes] | None, reason: str) -> None:
        log.warning("dead-lettering jobs entry %s: %s", entry_id, reason)
        readable = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (fields or {}).items()}
        await self._redis.xadd(
            self.keys.deadletter,
            {"entry": entry_id, "reason": reason, "fields": json.dumps(readable)},
            maxlen=DEADLETTER_MAXLEN,
            approximate=True,
        )
        await self._ack(entry_id)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            # From id 0: jobs submitted before any worker ever looked are still delivered.
            await self._redis.xgroup_create(self.keys.jobs, WORKERS_GROUP, id="0", mkstream=True)
        self._group_ready = True

    def _lost_group(self, exc: ResponseError) -> None:
        """NOGROUP: Redis lost its data (a restart without persistence); make the group again next time."""
        if "NOGROUP" not in str(exc):
            raise exc
        self._group_ready = False

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        """Map an unreachable Redis to BrokerUnavailable; fail fast until the backoff has passed."""
        wait_s = self._retry_at - time.monotonic()
        if wait_s > 0:
            raise BrokerUnavailable(f"redis is unreachable; next attempt in {wait_s:.1f}s")
        try:
            yield
        except _UNAVAILABLE as exc:
            self._backoff_s = min(_BACKOFF_CAP_S, self._backoff_s * 2 or _BACKOFF_FIRST_S)
            self._retry_at = time.monotonic() + self._backoff_s
            self._group_ready = False
            raise BrokerUnavailable(f"redis is unreachable: {exc}") from exc
        self._backoff_s = 0.0


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Stream entries as (id, fields); a deleted entry (XAUTOCLAIM's nil fields) has empty fields."""
    return [(_str(entry_id), dict(fields or {})) for entry_id, fields in raw or ()]


def _read_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 map), or none."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
    return [entry for entries in streams for entry in _entries(entries)]


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in raw.items()}


def _exit(fields: dict[str, str]) -> ExitEvent | None:
    if "exit" not in fields:
        return None
    wire: dict[str, Any] = json.loads(fields["exit"])
    wire["seq"] = int(fields["exit_seq"])
    event = event_from_wire(wire)
    assert isinstance(event, ExitEvent)
    return event


def _event(fields: dict[bytes, bytes]) -> Event:
    wire: dict[str, Any] = json.loads(fields[b"event"])
    wire["seq"] = int(fields[b"seq"])  # the stamped seq, which may differ from the publisher's
    return event_from_wire(wire)


def _control_message(fields: dict[bytes, bytes]) -> Control:
    kind = fields.get(b"kind", b"").decode()
    if kind not in ("stdin", "close_stdin", "signal", "cancel"):
        kind = "cancel"  # unreadable: the safe reading of a message nobody should have sent
    return Control(kind, fields.get(b"data", b""), int(fields.get(b"signal", b"0")))  # type: ignore[arg-type]


def _internal(message: str, *, language: str = "") -> ExitEvent:
    return ExitEvent(Result(Status.INTERNAL_ERROR, language=language, message=message), time=time.time())
