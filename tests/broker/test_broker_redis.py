"""The Redis broker: the memory broker's contract, plus what only a shared store has.

A real ``redis-server`` runs for the session on a free loopback port, without
persistence, in a temp dir; it is stopped (and restarted, for the outage test)
by PID. The contract tests run against both brokers, so the two cannot drift
apart unnoticed. The Redis-only tests cover redelivery of a lost worker's job,
the ``max_deliveries`` cut-off, heartbeats that keep a live worker's job, dead-lettering, two nodes sharing one Redis,
and an outage with recovery. Orders are asserted, never durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from sandlot.broker import (
    Broker,
    Control,
    Distributed,
    Heartbeating,
    SessionRecord,
    TaskSpec,
)
from sandlot.broker.keys import WORKERS_GROUP, Keys
from sandlot.broker.memory import MemoryBroker
from sandlot.broker.redis import RedisBroker
from sandlot.errors import AtCapacity, BrokerUnavailable, SessionNotFound, Superseded
from sandlot.models import (
    NOTICE_REQUEUED,
    Event,
    ExitEvent,
    NoticeEvent,
    OutputEvent,
    Result,
    SourceFile,
    StageEvent,
    Status,
)
from tests.nodes import RedisServer

_WAIT_S = 30.0  # a bound for what should happen promptly (on a loaded machine too), never a measurement
_IDLE_MS = 200  # claim_idle_ms of the redelivery tests
_PRESENCE_TTL_S = 0.6  # presence_ttl_s of the tests where a silent worker is taken for dead
_KEYS = Keys()


# -------------------------------------------------------------- the server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), append_only=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on a flushed server."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


MakeRedis = Callable[..., RedisBroker]


@pytest.fixture
async def make_redis(redis_server: RedisServer, raw: aioredis.Redis) -> AsyncIterator[MakeRedis]:
    """Redis brokers on the flushed server ("nodes"), closed at the end."""
    made: list[RedisBroker] = []

    def make(**options: Any) -> RedisBroker:
        options.setdefault("max_queued", 4)
        broker = RedisBroker(redis_server.url, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> MakeBroker:
    """The contract's broker, either implementation."""
    if request.param == "memory":
        return MemoryBroker
    factory: MakeRedis = request.getfixturevalue("make_redis")
    return factory


# ------------------------------------------------------------------ helpers


def _spec(tenant: str = "a", **changes: object) -> TaskSpec:
    fields: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "tenant": tenant,
        "language": "python",
        "files": (SourceFile("main.py", b"print('hi')\n"),),
    }
    fields.update(changes)
    return TaskSpec(**fields)  # type: ignore[arg-type]


def _ok(stdout: bytes = b"") -> ExitEvent:
    return ExitEvent(Result(Status.OK, exit_code=0, stdout=stdout, language="python"))


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    async with asyncio.timeout(_WAIT_S):
        return [event async for event in events]


async def _within(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(_WAIT_S):
        return await awaitable


async def _claim(broker: Broker) -> TaskSpec:
    spec: TaskSpec = await _within(broker.claim())
    return spec


async def _running(broker: Broker, spec: TaskSpec) -> None:
    await broker.submit(spec)
    assert (await _claim(broker)).id == spec.id
    await broker.mark_running(spec.id)


async def _pending(raw: aioredis.Redis) -> int:
    """Jobs delivered and not yet acknowledged, over every jobs stream."""
    total = 0
    for stream in await raw.smembers(_KEYS.streams):
        total += int((await raw.xpending(stream, WORKERS_GROUP))["pending"])
    return total


# ------------------------------------------------- the contract, both brokers


async def test_submit_then_claim_round_trip(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec()
    assert await broker.submit(spec) == spec
    assert broker.queue_depth() == 1
    state = await broker.get("a", spec.id)
    assert state is not None
    assert (state.id, state.tenant, state.status, state.exit) == (spec.id, "a", "queued", None)
    assert await _claim(broker) == spec
    assert broker.queue_depth() == 0
    await broker.mark_running(spec.id)
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.status == "running"
    await broker.finish(spec.id, _ok(b"hi\n"))
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.status == "done"
    assert state.exit is not None
    assert state.exit.result.stdout == b"hi\n"
    await broker.close()


async def test_claim_waits_for_a_submit(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    claiming = asyncio.create_task(_claim(broker))
    await asyncio.sleep(0)
    assert not claiming.done()
    spec = _spec()
    await broker.submit(spec)
    assert await claiming == spec
    await broker.close()


async def test_claims_rotate_across_tenants_and_keep_each_tenants_order(make: MakeBroker) -> None:
    broker = make(max_queued=8)
    submitted = [_spec(name[0], id=name) for name in ("a1", "a2", "a3", "b1", "c1")]  # tenant a, b or c
    for spec in submitted:
        await broker.submit(spec)
    claimed = [(await _claim(broker)).id for _ in submitted]
    assert broker.queue_depth() == 0
    await broker.close()
    assert claimed == ["a1", "b1", "c1", "a2", "a3"]  # b and c are not stuck behind a's burst


async def test_submit_past_max_queued_raises_queue_full(make: MakeBroker) -> None:
    broker = make(max_queued=2)
    await broker.submit(_spec("a"))
    await broker.submit(_spec("b"))
    with pytest.raises(AtCapacity) as refused:
        await broker.submit(_spec("c"))
    assert refused.value.retry_after_s > 0
    assert broker.queue_depth() == 2
    await _claim(broker)  # a claimed task no longer counts
    await broker.submit(_spec("c"))
    assert broker.queue_depth() == 2
    await broker.close()


async def test_an_idempotency_key_returns_the_earlier_task(make: MakeBroker) -> None:
    broker = make(max_queued=1)
    first = await broker.submit(_spec("a"), idempotency_key="k")
    again = await broker.submit(_spec("a"), idempotency_key="k")  # even with the queue full
    assert again == first
    assert broker.queue_depth() == 1
    with pytest.raises(AtCapacity):
        await broker.submit(_spec("a"), idempotency_key="other")
    await broker.close()


async def test_idempotency_keys_are_scoped_per_tenant(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    alice = await broker.submit(_spec("alice"), idempotency_key="k")
    bob = await broker.submit(_spec("bob"), idempotency_key="k")
    assert bob.id != alice.id
    assert bob.tenant == "bob"
    assert broker.queue_depth() == 2
    assert await broker.submit(_spec("bob"), idempotency_key="k") == bob
    # Key names cannot be forged across tenants with separators.
    forged = await broker.submit(_spec("bob:idem:k"), idempotency_key="x")
    assert forged.id not in (alice.id, bob.id)
    assert await broker.submit(_spec("bob"), idempotency_key="k:idem:x") != forged
    await broker.close()


async def test_subscribers_get_the_history_then_live_events_until_the_exit(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec()
    await _running(broker, spec)
    early: list[Event] = [StageEvent("run", seq=1), OutputEvent("stdout", b"one\n", seq=2)]
    for event in early:
        await broker.publish(spec.id, event)
    replayed = [asyncio.Event(), asyncio.Event()]
    seen: list[list[Event]] = [[], []]

    async def follow(index: int) -> None:
        async for event in broker.subscribe("a", spec.id):
            seen[index].append(event)
            if len(seen[index]) == len(early):
                replayed[index].set()

    followers = [asyncio.create_task(follow(i)) for i in range(2)]
    await _within(asyncio.gather(*(r.wait() for r in replayed)))
    assert seen == [early, early]
    assert not any(f.done() for f in followers)  # still following

    late = OutputEvent("stderr", b"two\n", seq=3)
    await broker.publish(spec.id, late)
    await broker.finish(spec.id, _ok())
    await _within(asyncio.gather(*followers))  # they end at the exit event by themselves
    for events in seen:
        assert events[:3] == [*early, late]
        assert len(events) == 4
        assert isinstance(events[3], ExitEvent)
        assert events[3].seq == 4
    # A subscriber that comes after the end gets everything and ends too.
    assert await _collect(broker.subscribe("a", spec.id)) == seen[0]
    await broker.close()


async def test_another_tenant_sees_nothing(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec("alice")
    await broker.submit(spec)
    await broker.publish(spec.id, StageEvent("run", seq=1))
    assert await broker.get("bob", spec.id) is None
    assert await _collect(broker.subscribe("bob", spec.id)) == []
    assert await broker.cancel("bob", spec.id) is False
    assert await broker.control("bob", spec.id, Control("stdin", b"x")) is False
    state = await broker.get("alice", spec.id)
    assert state is not None
    assert state.status == "queued"  # untouched
    assert (await _claim(broker)).id == spec.id
    await broker.close()


async def test_unknown_tasks_are_nothing(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    assert await broker.get("a", "nope") is None
    assert await _collect(broker.subscribe("a", "nope")) == []
    assert await broker.cancel("a", "nope") is False
    assert await broker.control("a", "nope", Control("close_stdin")) is False
    await broker.close()


async def test_cancelling_a_queued_task_finishes_it_at_once(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec, other = _spec(), _spec()
    await broker.submit(spec)
    await broker.submit(other)
    # Events already stored for it (none in practice): the exit must still come after them.
    await broker.publish(spec.id, StageEvent("queued", seq=1))
    await broker.publish(spec.id, OutputEvent("stdout", b"x", seq=2))

    assert await broker.cancel("a", spec.id) is True
    assert broker.queue_depth() == 1
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.status == "done"
    assert state.exit is not None
    assert state.exit.result.status is Status.SIGNALED
    assert state.exit.result.message == "cancelled before it started"
    assert state.exit.seq > 2
    events = await _collect(broker.subscribe("a", spec.id))
    assert events[-1] == state.exit
    assert [e.seq for e in events] == sorted({e.seq for e in events})  # strictly increasing

    assert (await _claim(broker)).id == other.id  # never handed to a worker
    assert broker.queue_depth() == 0
    assert await broker.cancel("a", spec.id) is False  # already done
    await broker.close()


async def test_cancelling_a_queued_task_without_events_gives_one_exit_event(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec()
    await broker.submit(spec)
    assert await broker.cancel("a", spec.id) is True
    events = await _collect(broker.subscribe("a", spec.id))
    assert len(events) == 1
    assert isinstance(events[0], ExitEvent)
    assert events[0].seq >= 1
    assert events[0].result.status is Status.SIGNALED
    # The tenant's queue is gone with it: a later submit of the tenant is claimed normally.
    later = _spec()
    await broker.submit(later)
    assert (await _claim(broker)).id == later.id
    await broker.close()


async def test_cancelling_a_running_task_asks_its_worker(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec()
    await _running(broker, spec)
    controls = broker.controls(spec.id)
    assert await broker.control("a", spec.id, Control("stdin", b"line\n")) is True
    assert await broker.cancel("a", spec.id) is True
    assert await _within(anext(controls)) == Control("stdin", b"line\n")
    assert await _within(anext(controls)) == Control("cancel")
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.status == "running"  # the worker finishes it, with what the kill produced
    await broker.finish(spec.id, ExitEvent(Result(Status.SIGNALED, signal=9, message="cancelled by request")))
    assert await broker.control("a", spec.id, Control("close_stdin")) is False
    await controls.aclose()  # type: ignore[attr-defined]
    await broker.close()


async def test_finish_stamps_the_exit_after_the_last_event(make: MakeBroker) -> None:
    broker = make(max_queued=4)
    spec = _spec()
    await _running(broker, spec)
    for seq in (1, 2, 3):
        await broker.publish(spec.id, OutputEvent("stdout", b"x", seq=seq))
    await broker.finish(spec.id, _ok())  # built outside the engine: seq 0
    events = await _collect(broker.subscribe("a", spec.id))
    assert [e.seq for e in events] == [1, 2, 3, 4]
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.exit == events[-1]

    stamped = _spec()
    await _running(broker, stamped)
    await broker.publish(stamped.id, StageEvent("run", seq=1))
    await broker.finish(stamped.id, ExitEvent(Result(Status.OK), seq=7))  # the engine's own seq is kept
    assert [e.seq for e in await _collect(broker.subscribe("a", stamped.id))] == [1, 7]
    await broker.close()


async def test_results_are_forgotten_after_their_ttl(make: MakeBroker) -> None:
    broker = make(max_queued=4, result_ttl_s=0.2)
    spec = await broker.submit(_spec(), idempotency_key="k")
    await _claim(broker)
    await broker.finish(spec.id, _ok())
    assert await broker.get("a", spec.id) is not None
    async with asyncio.timeout(_WAIT_S):
        while await broker.get("a", spec.id) is not None:
            await asyncio.sleep(0.02)
    assert await _collect(broker.subscribe("a", spec.id)) == []
    again = await broker.submit(_spec(), idempotency_key="k")  # the key went with the task
    assert again.id != spec.id
    await broker.close()


# ------------------------------------------------------------ Redis only


async def test_a_finished_job_is_acknowledged_and_its_keys_expire(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    broker = make_redis(result_ttl_s=30)
    spec = _spec()
    await _running(broker, spec)
    assert await _pending(raw) == 1  # claimed, not yet acknowledged
    await broker.publish(spec.id, StageEvent("run", seq=1))
    await broker.control("a", spec.id, Control("stdin", b"x"))
    await broker.finish(spec.id, _ok())
    assert await _pending(raw) == 0
    assert not await raw.exists(_KEYS.tenant_jobs("a"))  # an empty tenant stream goes
    for key in (_KEYS.state(spec.id), _KEYS.events(spec.id), _KEYS.control(spec.id)):
        assert 0 < await raw.ttl(key) <= 30


async def test_a_lost_workers_job_is_reclaimed_by_another(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    lost = make_redis(consumer_name="lost", claim_idle_ms=_IDLE_MS)
    rescuer = make_redis(consumer_name="rescuer", claim_idle_ms=_IDLE_MS)
    spec = _spec()
    await _running(lost, spec)
    await lost.publish(spec.id, OutputEvent("stdout", b"partial", seq=1))
    # "lost" never finishes; "rescuer" gets the job once it was idle for claim_idle_ms.
    assert await _claim(rescuer) == spec
    await rescuer.mark_running(spec.id)
    with pytest.raises(Superseded):  # the slow one comes back: fenced off, nothing it writes is kept
        await lost.publish(spec.id, OutputEvent("stdout", b"late", seq=2))
    await rescuer.publish(spec.id, OutputEvent("stdout", b"again", seq=1))  # the retry starts over
    await rescuer.finish(spec.id, _ok())
    events = await _collect(rescuer.subscribe("a", spec.id))
    assert [e.seq for e in events] == [1, 2, 3, 4]  # still strictly increasing
    assert [e.kind for e in events] == ["output", "notice", "output", "exit"]
    assert isinstance(events[1], NoticeEvent)
    assert events[1].code == NOTICE_REQUEUED  # the run that had started is said to start again
    assert [e.data for e in events if isinstance(e, OutputEvent)] == [b"partial", b"again"]
    assert await _pending(raw) == 0
    await lost.finish(spec.id, ExitEvent(Result(Status.OK, message="late")))  # the slow one: ignored
    state = await rescuer.get("a", spec.id)
    assert state is not None
    assert state.exit is not None
    assert state.exit.result.message == ""


async def test_a_heartbeating_workers_job_is_never_reclaimed(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    holder = make_redis(consumer_name="holder", claim_idle_ms=_IDLE_MS)
    other = make_redis(consumer_name="other", claim_idle_ms=_IDLE_MS)
    assert isinstance(holder, Heartbeating)
    assert not isinstance(MemoryBroker(max_queued=1), Heartbeating)  # the embedded path has no heartbeats
    spec = _spec()
    await _running(holder, spec)
    for _ in range(6):  # twice claim_idle_ms in all, one heartbeat interval at a time
        await asyncio.sleep(holder.heartbeat_interval_s)
        assert await holder.heartbeat(spec.id)
        assert await other.reclaim() == 0
    # Silent from here on: the job is taken over, and a late heartbeat does not take it back.
    assert await _claim(other) == spec
    assert not await holder.heartbeat(spec.id)
    (entry,) = await raw.xpending_range(_KEYS.returned, WORKERS_GROUP, min="-", max="+", count=10)
    assert entry["consumer"] == b"other"  # requeued at the front, and taken from there
    await other.finish(spec.id, _ok())
    assert not await other.heartbeat(spec.id)  # acknowledged: nothing left to keep
    assert await _pending(raw) == 0


async def test_past_max_deliveries_the_task_ends_as_worker_lost(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    first = make_redis(consumer_name="first", claim_idle_ms=_IDLE_MS, max_deliveries=2)
    second = make_redis(consumer_name="second", claim_idle_ms=_IDLE_MS, max_deliveries=2)
    # No idle wait for the third: its reclaim requeues the pending entry at once, and the test awaits the
    # very claim step that takes it and ends the task (a background claim would end it at some point).
    third = make_redis(consumer_name="third", claim_idle_ms=0, max_deliveries=2)
    spec = _spec()
    await _running(first, spec)
    assert await _claim(second) == spec  # delivery 2 of 2, and that worker dies too
    assert await _within(third.reclaim()) == 1  # back at the front of the queue
    assert await _within(third._claim_step("")) == (None, "")  # delivery 3: not run, ended
    # The contract: the exit is stored first, then the job acknowledged, both before the step that took
    # it returns (a crash between leaves the entry pending, and the next take finds the task done).
    assert await _pending(raw) == 0
    events = await _collect(third.subscribe("a", spec.id))
    # The second delivery said the run starts again; the third is past max_deliveries and ends the task.
    assert [e.kind for e in events] == ["notice", "exit"]
    assert isinstance(events[-1], ExitEvent)
    assert events[-1].result.status is Status.INTERNAL_ERROR
    assert events[-1].result.message == "worker lost"
    assert await raw.xlen(_KEYS.deadletter) == 0  # a task's own job, ended with a result: not a stray


async def test_malformed_and_foreign_entries_are_dead_lettered(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    broker = make_redis()
    await raw.xadd(_KEYS.tenant_jobs("a"), {"junk": "1"})  # before the tenant's first job: a stream without group
    await raw.xadd(_KEYS.tenant_jobs("a"), {"task": "not-ours"})
    spec = _spec()
    await broker.submit(spec)
    assert await _claim(broker) == spec  # the claim went on past both
    letters: Any = await raw.xrange(_KEYS.deadletter)
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert reasons == ["malformed entry: no task id", "missing task 'not-ours'"]
    assert await _pending(raw) == 1  # only the real one


async def test_an_interrupted_claim_is_reclaimed_not_dead_lettered(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    broker = make_redis(consumer_name="rescuer", claim_idle_ms=_IDLE_MS)
    spec = _spec()
    await broker.submit(spec)
    # A worker read the entry, then died before taking the task.
    await raw.xreadgroup(WORKERS_GROUP, "dead", {_KEYS.tenant_jobs("a"): ">"}, count=1)
    assert await _claim(broker) == spec
    assert broker.queue_depth() == 0
    assert await raw.xlen(_KEYS.deadletter) == 0


async def test_two_nodes_share_tasks_and_events(make_redis: MakeRedis) -> None:
    node_a, node_b = make_redis(), make_redis()
    spec = _spec()

    async def worker_on_a() -> None:
        claimed = await node_a.claim()
        await node_a.mark_running(claimed.id)
        async for message in node_a.controls(claimed.id):
            await node_a.publish(claimed.id, OutputEvent("stdout", message.data, seq=1))
            break
        await node_a.finish(claimed.id, _ok(b"done"))

    worker = asyncio.create_task(worker_on_a())
    await node_a.submit(spec, idempotency_key="once")
    assert await node_b.submit(_spec(), idempotency_key="once") == spec  # the key is shared too
    following = asyncio.create_task(_collect(node_b.subscribe("a", spec.id)))
    # Sent whether or not A's worker has claimed it yet: the worker reads its controls from the first.
    assert await node_b.control("a", spec.id, Control("stdin", b"from b")) is True
    events = await following
    await _within(worker)
    assert [type(e) for e in events] == [OutputEvent, ExitEvent]
    assert isinstance(events[0], OutputEvent)
    assert events[0].data == b"from b"
    state = await node_b.get("a", spec.id)
    assert state is not None
    assert state.exit is not None
    assert state.exit.result.stdout == b"done"


async def test_unavailable_redis_raises_then_recovers(make_redis: MakeRedis, redis_server: RedisServer) -> None:
    api, worker = make_redis(), make_redis()
    spec = _spec()
    await api.submit(spec)
    assert await _claim(worker) == spec
    claiming = asyncio.create_task(worker.claim())  # blocked in XREADGROUP when the server goes
    await asyncio.sleep(0.05)
    redis_server.stop()
    try:
        with pytest.raises(BrokerUnavailable):
            await api.get("a", spec.id)
        with pytest.raises(BrokerUnavailable, match="next attempt"):  # fails fast inside the backoff
            await api.submit(_spec())
        assert not claiming.done()  # the worker's wait rides the outage out
    finally:
        redis_server.start()
    # Same port, empty server: calls work again once the backoff has passed.
    after = _spec()
    async with asyncio.timeout(_WAIT_S):
        while True:
            try:
                await api.submit(after)
                break
            except BrokerUnavailable:
                await asyncio.sleep(0.05)
    assert await _within(claiming) == after
    assert await api.get("a", spec.id) is None  # the data went with the server


async def test_a_handed_back_job_goes_to_the_front_and_is_not_counted(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    # claim_idle_ms far above the test: only the hand-back can move the job to the other worker.
    stopping = make_redis(consumer_name="stopping", claim_idle_ms=600_000)
    other = make_redis(consumer_name="other", claim_idle_ms=600_000)
    assert isinstance(stopping, Distributed)
    handed, later = _spec("a"), _spec("b")
    await _running(stopping, handed)
    await stopping.publish(handed.id, OutputEvent("stdout", b"partial", seq=1))
    await stopping.submit(later)
    assert await stopping.hand_back(handed.id) is True
    assert await other.queued() == 2  # counted in again
    assert (await _claim(other)).id == handed.id  # ahead of every tenant's queue
    assert (await _claim(other)).id == later.id
    assert int(await raw.hget(_KEYS.state(handed.id), "deliveries")) == 1  # the handed-back run did not count
    assert await stopping.hand_back(handed.id) is False  # not ours any more
    assert not await stopping.heartbeat(handed.id)
    assert await other.queued() == 0
    await other.mark_running(handed.id)
    await other.finish(handed.id, _ok(b"once"))
    await stopping.finish(handed.id, ExitEvent(Result(Status.OK, message="late")))  # ignored: ended once
    events = await _collect(other.subscribe("a", handed.id))
    assert [type(e) for e in events] == [OutputEvent, ExitEvent]
    assert isinstance(events[-1], ExitEvent)
    assert events[-1].result.stdout == b"once"
    await other.finish(later.id, _ok())
    assert await _pending(raw) == 0


async def test_a_handed_back_job_cancelled_while_queued_ends_once(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    worker = make_redis(consumer_name="w", claim_idle_ms=600_000)
    spec = _spec()
    await _running(worker, spec)
    assert await worker.hand_back(spec.id)
    state = await worker.get("a", spec.id)
    assert state is not None
    assert state.status == "queued"
    assert await worker.cancel("a", spec.id) is True
    assert worker.queue_depth() == 0
    later = _spec()
    await worker.submit(later)
    assert (await _claim(worker)).id == later.id  # the cancelled one was skipped, not run
    events = await _collect(worker.subscribe("a", spec.id))
    assert len(events) == 1
    assert isinstance(events[0], ExitEvent)
    assert events[0].result.message == "cancelled before it started"
    assert await worker.queued() == 0


async def test_retire_hands_back_a_claim_cut_short(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    retiring = make_redis(consumer_name="retiring", claim_idle_ms=600_000)
    other = make_redis(consumer_name="other", claim_idle_ms=600_000)
    taken, read_only = _spec("a"), _spec("b")
    await _running(retiring, taken)  # taken, then never run: the worker is shutting down
    await retiring.submit(read_only)
    # Read by the retiring worker's claim, which was cancelled before it took the task.
    await raw.xreadgroup(WORKERS_GROUP, "retiring", {_KEYS.tenant_jobs("b"): ">"}, count=1)
    assert await retiring.retire() == 2
    assert sorted([(await _claim(other)).id, (await _claim(other)).id]) == sorted([taken.id, read_only.id])
    assert await other.queued() == 0
    for spec in (taken, read_only):
        await other.finish(spec.id, _ok())
    assert await _pending(raw) == 0


async def test_sessions_are_bound_to_a_worker_and_reset_when_it_is_gone(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    api = make_redis()
    first = make_redis(consumer_name="first", claim_idle_ms=_IDLE_MS, presence_ttl_s=_PRESENCE_TTL_S)
    second = make_redis(consumer_name="second", claim_idle_ms=_IDLE_MS, presence_ttl_s=_PRESENCE_TTL_S)
    with pytest.raises(SessionNotFound):
        await api.submit(_spec(session_id="nope"))
    assert await api.queued() == 0
    session = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60, idle_s=60)
    assert await api.sessions.exists("a", session)
    assert not await api.sessions.exists("b", session)  # another tenant's id finds nothing
    assert await api.sessions.isolation("a", session) == "jail"  # recorded: every run of it goes at this level
    assert await api.sessions.isolation("b", session) is None
    strong = await api.sessions.create("a", SessionRecord("gvisor"), ttl_s=60, idle_s=60)
    assert await api.sessions.isolation("a", strong) == "gvisor"
    await first.presence([])
    await second.presence([])

    run = _spec(session_id=session)
    await api.submit(run)
    assert (await _claim(first)).id == run.id  # unbound: any worker may take it
    assert (await first.sessions.bind("a", session, have_box=False, room=False)).verdict == "full"
    assert await raw.hget(_KEYS.session("a", session), "owner") == b""  # a full worker binds nothing
    assert (await first.sessions.bind("a", session, have_box=False, room=True)).verdict == "new"
    assert (await second.sessions.bind("a", session, have_box=False, room=True)).verdict == "elsewhere"
    await first.finish(run.id, _ok())
    assert (await first.presence([("a", session)])).owned == {("a", session)}

    routed = _spec(session_id=session)
    await api.submit(routed)  # to the owner's inbox: the other worker never sees it
    assert await second.reclaim() == 0
    assert (await _claim(first)).id == routed.id
    assert (await first.sessions.bind("a", session, have_box=True, room=True)).verdict == "ready"
    await first.finish(routed.id, _ok())

    # The owner goes silent: its presence expires, the next job goes to whichever worker takes it.
    stranded = _spec(session_id=session)
    await api.submit(stranded)  # still routed to the silent owner's inbox...
    async with asyncio.timeout(_WAIT_S):  # ...until its presence expired and a live worker's presence swept it
        while not await raw.xlen(_KEYS.returned):
            await second.presence([])
            await asyncio.sleep(second.presence_interval_s)
    assert (await _claim(second)).id == stranded.id
    binding = await second.sessions.bind("a", session, have_box=False, room=True)
    assert binding.verdict == "reset"
    assert 0 < binding.expires_in_s <= 60
    presence = await first.presence([("a", session)])
    assert presence.owned == set()  # the old owner learns it lost the session
    assert presence.lost  # and that it was taken for dead meanwhile
    await second.finish(stranded.id, _ok())

    assert await api.sessions.end("a", session)
    assert (await second.sessions.bind("a", session, have_box=True, room=True)).verdict == "gone"
    with pytest.raises(SessionNotFound):
        await api.submit(_spec(session_id=session))
    assert await _pending(raw) == 0
    assert await api.queued() == 0


async def test_a_worker_without_room_gives_the_session_to_the_live_worker_with_most_room(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    api = make_redis()
    full, roomy, roomier = (make_redis(consumer_name=name) for name in ("full", "roomy", "roomier"))
    await full.presence([], ["jail"], {"jail": (0, 0)})
    await roomy.presence([], ["jail"], {"jail": (1, 0)})
    await roomier.presence([], ["jail"], {"jail": (3, 1)})
    assert await api.sessions.room("jail", stateful=False) == (3, 4)  # what creation checks (429 at 0)
    assert await api.sessions.room("jail", stateful=True) == (3, 1)
    assert await api.sessions.room("gvisor", stateful=False) == (0, 0)
    session = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60, idle_s=60)
    record = await api.sessions.record("a", session)
    assert record is not None and not record.held

    run = _spec(session_id=session)
    await api.submit(run)
    assert (await _claim(full)).id == run.id
    assert (await full.sessions.bind("a", session, have_box=False, room=False)).verdict == "moved"
    assert await raw.hget(_KEYS.session("a", session), "owner") == _KEYS.inbox("roomier").encode()
    assert await full.hand_back(run.id)
    assert (await _claim(roomier)).id == run.id  # routed to the worker it was given to
    assert (await roomier.sessions.bind("a", session, have_box=False, room=True)).verdict == "new"
    record = await api.sessions.record("a", session)
    assert record is not None and record.held
    await roomier.finish(run.id, _ok())

    # A stateful session counts stateful room only; its record keeps what its interpreter starts with.
    cells = await api.sessions.create(
        "a", SessionRecord("jail", "env", "sha256:x", "python", "{}"), ttl_s=60, idle_s=60
    )
    assert await api.sessions.record("a", cells) == SessionRecord("jail", "env", "sha256:x", "python", "{}")
    assert (await roomy.sessions.bind("a", cells, have_box=False, room=False, stateful=True)).verdict == "moved"
    assert await raw.hget(_KEYS.session("a", cells), "owner") == _KEYS.inbox("roomier").encode()
    await roomier.presence([], ["jail"], {"jail": (3, 0)})
    assert (await roomier.sessions.bind("a", cells, have_box=False, room=False, stateful=True)).verdict == "full"

    # Moves are bounded: workers whose presences overstate their room pass a session on at most one more
    # time than there are other live workers, then the run is refused (and the count starts again).
    passed = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60, idle_s=60)
    verdicts = [
        (await w.sessions.bind("a", passed, have_box=False, room=False)).verdict for w in (full, roomier, roomy)
    ]
    assert verdicts == ["moved", "moved", "moved"]  # to roomier, roomy, roomier: each gives it to the other
    assert (await roomier.sessions.bind("a", passed, have_box=False, room=False)).verdict == "full"
    assert (await roomier.sessions.bind("a", passed, have_box=False, room=True)).verdict == "new"


async def test_leave_moves_a_workers_unread_session_jobs_to_another(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    api = make_redis()
    leaving = make_redis(consumer_name="leaving", claim_idle_ms=600_000)
    other = make_redis(consumer_name="other", claim_idle_ms=600_000)
    session = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60, idle_s=60)
    await leaving.presence([])
    assert (await leaving.sessions.bind("a", session, have_box=False, room=True)).verdict == "new"
    queued = _spec(session_id=session)
    await api.submit(queued)  # into the owner's inbox
    await leaving.leave()
    assert (await _claim(other)).id == queued.id  # at once, not after claim_idle_ms
    assert (await other.sessions.bind("a", session, have_box=False, room=True)).verdict == "reset"
    await other.finish(queued.id, _ok())
    after = _spec(session_id=session)
    await api.submit(after)
    assert await leaving.reclaim() == 0
    assert (await _claim(other)).id == after.id  # routed to the new owner
    await other.finish(after.id, _ok())
    assert await raw.exists(_KEYS.inbox("leaving"))  # still there while it drains: it could die meanwhile
    assert await leaving.retire() == 0
    assert not await raw.exists(_KEYS.inbox("leaving"))  # gone once it retired
    assert await _pending(raw) == 0


# ------------------------------------------------------------ end to end


@pytest.mark.slow
async def test_a_service_on_redis_runs_python_and_another_node_sees_it(make_redis: MakeRedis) -> None:
    from sandlot.config import ServerSettings
    from sandlot.service import Service
    from tests.conftest import make_settings

    service = await Service.start(
        make_settings(),
        ServerSettings(gvisor_pool_size=0, pool_size=1, drain_deadline_s=2.0),
        broker=make_redis(max_queued=8),
    )
    try:
        spec = await service.submit(_spec(files=(SourceFile("main.py", b"print('hello from redis')\n"),)))
        events = await _collect(make_redis().subscribe("a", spec.id))  # another node
    finally:
        await service.stop()
    assert isinstance(events[-1], ExitEvent)
    assert events[-1].result.status is Status.OK, events[-1].result
    assert events[-1].result.stdout == b"hello from redis\n"
    assert [e.seq for e in events] == sorted({e.seq for e in events})


async def test_submit_survives_a_redis_that_lost_its_scripts(make_redis: MakeRedis, raw: aioredis.Redis) -> None:
    """A restarted Redis has no scripts cached: the submit loads SUBMIT and sends again, once."""
    api, worker = make_redis(), make_redis(consumer_name="w")
    first = _spec()
    await api.submit(first)
    await raw.script_flush()
    second = _spec()
    await api.submit(second)  # NOSCRIPT inside the pipeline, answered by loading the script
    assert await api.queued() == 2
    assert [(await _claim(worker)).id for _ in range(2)] == [first.id, second.id]
    state = await api.get("a", second.id)
    assert state is not None and state.status == "queued"


async def test_a_take_whose_reply_an_outage_cut_off_is_given_back_at_once(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    """Redis runs a take and the connection breaks before its reply is read (a restart, a cut): the job is
    pending to this live worker, which does not know it holds it. It must go back to the queue as soon as
    Redis answers again, not after the idle-time backstop (minutes). The stand-in take runs the real script,
    then loses its reply as a cut connection does."""
    first = make_redis(consumer_name="first")
    spec = _spec()
    await first.submit(spec)
    real_take_next, cut = first._take_next, []

    async def take_next_losing_its_reply(*args: Any, **kwargs: Any) -> Any:
        reply = await real_take_next(*args, **kwargs)
        if not cut:
            cut.append(reply)
            raise RedisConnectionError("Connection closed by server.")
        return reply

    first._take_next = take_next_losing_its_reply  # type: ignore[method-assign]
    assert await _claim(first) == spec  # taken again after the outage, by the same worker
    assert cut, "the stand-in never cut a reply"
    assert await _pending(raw) == 1  # held once: the lost delivery went back, the new one is ours


async def test_a_cancel_lost_in_a_redis_call_still_ends_the_claim_and_gives_its_job_back(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    """redis-py 8 can finish a command whose task was cancelled meanwhile and return normally, the cancel
    lost (seen: a cancelled claim returned a job). A draining worker's claim must end all the same, and the
    job it took meanwhile must go back to the front. The stand-in reclaim loses the cancel as redis-py does."""
    first = make_redis(consumer_name="first")
    spec = _spec()
    await first.submit(spec)
    real_reclaim, entered = first.reclaim, asyncio.Event()

    async def reclaim_losing_the_cancel() -> int:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # in flight until the cancel, which it swallows
        return await real_reclaim()

    first.reclaim = reclaim_losing_the_cancel  # type: ignore[method-assign]
    claiming = asyncio.create_task(first.claim())
    async with asyncio.timeout(_WAIT_S):
        await entered.wait()
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claiming
    assert await _pending(raw) == 0
    second = make_redis(consumer_name="second")
    assert await _claim(second) == spec


async def test_a_claim_cancelled_while_its_take_is_in_flight_gives_the_job_back(
    make_redis: MakeRedis, raw: aioredis.Redis
) -> None:
    """A draining worker cancels its claim loop; a take Redis runs after the cancel must not strand the job.

    Redis is paused for writes, so the claim's take is sent and waits there; the claim is cancelled; when
    the pause ends Redis runs the take. The job must then be back at the front, not pending to this consumer
    until some later retire. The pause lasts until the test lifts it (a timed one could lapse on a slow
    machine before the cancel, and the claim would simply succeed).
    """
    first = make_redis(consumer_name="first")
    first._next_reclaim = time.monotonic() + 3600  # the take, not the periodic reclaim, is what is held
    spec = _spec()
    await first.submit(spec)
    await raw.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        claiming = asyncio.create_task(first.claim())
        async with asyncio.timeout(_WAIT_S):  # until the take is sent and held by the pause ("b": blocked)
            while not any(
                b" flags=b " in line and b" cmd=evalsha " in line
                for line in (await raw.execute_command("CLIENT", "LIST")).splitlines()
            ):
                await asyncio.sleep(0.01)
        claiming.cancel()
        # Without the fix the cancelled claim ends here, leaving its take to Redis; with it, the claim waits
        # for its held take. The bound only lets the former happen first: it decides nothing by itself.
        await asyncio.wait({claiming}, timeout=0.5)
    finally:
        await raw.execute_command("CLIENT", "UNPAUSE")
    with pytest.raises(asyncio.CancelledError):
        await claiming
    assert await _pending(raw) == 0  # given back: nothing left pending to the cancelled consumer
    second = make_redis(consumer_name="second")
    assert await _claim(second) == spec  # and taken at once by another worker
