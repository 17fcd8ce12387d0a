"""The Redis broker's recovery from lost workers: presence takeover, fencing, the idle backstop, readiness.

Against a real ``redis-server`` (the fixtures of ``test_broker_redis``). A
"worker" here is a ``RedisBroker`` with its own consumer name that claims and
writes as a worker would; one that "dies" simply stops saying it is alive. The
presence TTL is shortened here (these tests are about the broker's scripts; the
end-to-end tests in ``test_distributed_recovery`` run at the defaults).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from sandlot.broker.keys import Keys
from sandlot.broker.redis import RedisBroker
from sandlot.errors import Superseded
from sandlot.models import NOTICE_REQUEUED, ExitEvent, NoticeEvent, OutputEvent
from tests.broker.test_broker_redis import (  # noqa: F401  (fixtures)
    MakeRedis,
    _claim,
    _collect,
    _ok,
    _pending,
    _spec,
    make_redis,
    raw,
    redis_server,
)

_TTL_S = 0.6  # presence_ttl_s of these workers
_IDLE_MS = 600_000  # claim_idle_ms far above the tests: only presence can move a job
_WAIT_S = 5.0
_KEYS = Keys()


@pytest.fixture
def brokers(request: pytest.FixtureRequest) -> MakeRedis:
    """``test_broker_redis``'s ``make_redis``: brokers on one flushed redis-server, closed at the end."""
    made: MakeRedis = request.getfixturevalue("make_redis")
    return made


@pytest.fixture
def db(request: pytest.FixtureRequest) -> aioredis.Redis:
    """``test_broker_redis``'s ``raw``: a plain client on that server."""
    client: aioredis.Redis = request.getfixturevalue("raw")
    return client


def _worker(make: MakeRedis, name: str) -> RedisBroker:
    return make(consumer_name=name, claim_idle_ms=_IDLE_MS, presence_ttl_s=_TTL_S, max_queued=16)


async def _until_taken_over(live: RedisBroker, db: aioredis.Redis, count: int) -> None:
    """Say ``live`` is alive until a dead worker's ``count`` jobs are back in ``returned`` (bounded)."""
    async with asyncio.timeout(_WAIT_S):
        while await db.xlen(_KEYS.returned) < count:
            await live.presence([])
            await asyncio.sleep(live.presence_interval_s)


async def test_a_dead_workers_jobs_go_back_to_the_front_and_its_late_writes_are_fenced_off(
    brokers: MakeRedis, db: aioredis.Redis
) -> None:
    api = brokers(max_queued=16)
    dead, live = _worker(brokers, "dead"), _worker(brokers, "live")
    await dead.presence([])
    await live.presence([])
    started, waiting, later = _spec(), _spec(), _spec()
    for spec in (started, waiting):
        await api.submit(spec)
    assert (await _claim(dead)).id == started.id
    await dead.mark_running(started.id)
    await dead.publish(started.id, OutputEvent("stdout", b"partial", seq=1))
    assert (await _claim(dead)).id == waiting.id  # claimed, never started
    await api.submit(later)  # queued after both: they come back ahead of it

    await _until_taken_over(live, db, 2)  # "dead" said nothing for its TTL
    assert {(await _claim(live)).id, (await _claim(live)).id} == {started.id, waiting.id}
    assert (await _claim(live)).id == later.id
    for spec in (started, waiting):
        assert int(await db.hget(_KEYS.state(spec.id), "deliveries") or 0) == 2  # counted against max_deliveries

    # The frozen worker comes back: nothing it writes for the jobs that moved on is kept.
    with pytest.raises(Superseded):
        await dead.publish(started.id, OutputEvent("stdout", b"late", seq=2))
    with pytest.raises(Superseded):
        await dead.finish(waiting.id, _ok(b"late"))
    presence = await dead.presence([])
    assert presence.lost  # it learns it was taken for dead

    await live.mark_running(started.id)
    for spec in (started, waiting, later):
        await live.finish(spec.id, _ok(b"done"))
    await dead.finish(started.id, _ok(b"late"))  # after the end: ignored, as any write to a finished task
    events = await _collect(live.subscribe("a", started.id))
    assert [e.kind for e in events] == ["output", "notice", "exit"]
    assert isinstance(events[1], NoticeEvent)
    assert events[1].code == NOTICE_REQUEUED  # the started run says it starts again
    assert isinstance(events[2], ExitEvent)
    assert events[2].result.stdout == b"done"
    waited = await _collect(live.subscribe("a", waiting.id))
    assert [e.kind for e in waited] == ["exit"]  # never started: no notice
    assert await _pending(db) == 0


async def test_two_watchers_requeue_each_job_of_a_dead_worker_once(brokers: MakeRedis, db: aioredis.Redis) -> None:
    api = brokers(max_queued=16)
    dead = _worker(brokers, "dead")
    watchers = [_worker(brokers, f"watcher-{i}") for i in range(2)]
    await dead.presence([])
    specs = [_spec() for _ in range(4)]
    for spec in specs:
        await api.submit(spec)
    for _ in specs:
        await _claim(dead)
    async with asyncio.timeout(_WAIT_S):
        while await db.xlen(_KEYS.returned) == 0:
            await asyncio.gather(*(w.presence([]) for w in watchers))  # both notice the expiry at once
            await asyncio.sleep(_TTL_S / 3)
    assert await db.xlen(_KEYS.returned) == len(specs)  # once each, never twice
    assert await _pending(db) == 0  # the dead worker's entries are acknowledged; the new ones wait unread
    taken = {(await _claim(watchers[i % 2])).id for i in range(len(specs))}
    assert taken == {spec.id for spec in specs}


async def test_the_idle_backstop_requeues_every_stale_job_not_one(brokers: MakeRedis, db: aioredis.Redis) -> None:
    api = brokers(max_queued=16)
    wedged = brokers(consumer_name="wedged", claim_idle_ms=200, max_queued=16)
    rescuer = brokers(consumer_name="rescuer", claim_idle_ms=200, max_queued=16)
    specs = [_spec() for _ in range(3)]
    for spec in specs:
        await api.submit(spec)
    for _ in specs:
        await _claim(wedged)
    await asyncio.sleep(0.3)  # past claim_idle_ms with no heartbeat: what the backstop is for
    assert await rescuer.reclaim() == len(specs)  # all of them in one pass
    assert await rescuer.reclaim() == 0
    assert not await wedged.heartbeat(specs[0].id)  # the wedged worker learns its job moved on
    assert {(await _claim(rescuer)).id for _ in specs} == {spec.id for spec in specs}


async def test_serving_counts_the_live_workers_of_a_level(brokers: MakeRedis, db: aioredis.Redis) -> None:
    api = brokers()
    assert await api.serving("jail") == 0
    jail = _worker(brokers, "jail-only")
    both = _worker(brokers, "both")
    await jail.presence([], ["jail"])
    assert (await api.serving("jail"), await api.serving("gvisor")) == (1, 0)
    await both.presence([], ["gvisor", "jail"])
    assert (await api.serving("jail"), await api.serving("gvisor")) == (2, 1)
    await both.leave()  # a stopping worker serves nothing any more
    assert (await api.serving("jail"), await api.serving("gvisor")) == (1, 0)
    await asyncio.sleep(_TTL_S + 0.1)  # silent past its presence TTL: not counted, even before a sweep
    assert await api.serving("jail") == 0


async def test_a_worker_killed_while_it_drains_is_taken_over_like_any_dead_one(
    brokers: MakeRedis, db: aioredis.Redis
) -> None:
    api = brokers(max_queued=16)
    draining, live = _worker(brokers, "draining"), _worker(brokers, "live")
    await draining.presence([])
    await live.presence([])
    spec = _spec()
    await api.submit(spec)
    assert (await _claim(draining)).id == spec.id
    await draining.mark_running(spec.id)
    await draining.leave()  # SIGTERM: it drains; then it is killed (SIGKILL) before it retires
    assert await api.serving("jail") == 1  # a leaving worker is not counted
    await _until_taken_over(live, db, 1)  # its presence expired: its job comes back, not after claim_idle_ms
    assert (await _claim(live)).id == spec.id
    await live.finish(spec.id, _ok())
    assert await _pending(db) == 0
