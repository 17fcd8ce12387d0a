"""The embedded broker: fair claims, bounds, idempotency, replay, tenant scoping, cancel, TTL; and the wire codecs.

No sandbox here: the tests play the door and the worker themselves. Orders
are asserted, never durations; the one time-driven behaviour (result TTL)
is awaited with a bounded loop.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from sandlot.broker import (
    Control,
    QueueFull,
    TaskSpec,
    event_from_wire,
    event_to_wire,
)
from sandlot.broker.memory import MemoryBroker
from sandlot.config import LimitRequest
from sandlot.models import (
    NOTICE_SESSION_RESET,
    Event,
    ExitEvent,
    NoticeEvent,
    OutputEvent,
    Result,
    SourceFile,
    StageEvent,
    StageResultEvent,
    Status,
)

_WAIT_S = 5.0  # a bound for what should happen promptly, never a measurement


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


async def _claim(broker: MemoryBroker) -> TaskSpec:
    async with asyncio.timeout(_WAIT_S):
        return await broker.claim()


async def _running(broker: MemoryBroker, spec: TaskSpec) -> None:
    """Submit, claim and mark running, as a worker would."""
    await broker.submit(spec)
    assert (await _claim(broker)).id == spec.id
    await broker.mark_running(spec.id)


# ------------------------------------------------------- submit and claim


async def test_submit_then_claim_round_trip() -> None:
    broker = MemoryBroker(max_queued=4)
    spec = _spec()
    assert await broker.submit(spec) is spec
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


async def test_claim_waits_for_a_submit() -> None:
    broker = MemoryBroker(max_queued=4)
    claiming = asyncio.create_task(_claim(broker))
    await asyncio.sleep(0)
    assert not claiming.done()
    spec = _spec()
    await broker.submit(spec)
    assert await claiming == spec
    await broker.close()


async def test_claims_rotate_across_tenants_and_keep_each_tenants_order() -> None:
    broker = MemoryBroker(max_queued=8)
    submitted = [_spec(name[0], id=name) for name in ("a1", "a2", "a3", "b1", "c1")]  # tenant a, b or c
    for spec in submitted:
        await broker.submit(spec)
    claimed = [(await _claim(broker)).id for _ in submitted]
    assert claimed == ["a1", "b1", "c1", "a2", "a3"]  # b and c are not stuck behind a's burst
    assert broker.queue_depth() == 0
    await broker.close()


async def test_submit_past_max_queued_raises_queue_full() -> None:
    broker = MemoryBroker(max_queued=2)
    await broker.submit(_spec("a"))
    await broker.submit(_spec("b"))
    with pytest.raises(QueueFull) as refused:
        await broker.submit(_spec("c"))
    assert refused.value.retry_after_s > 0
    assert broker.queue_depth() == 2
    await _claim(broker)  # a claimed task no longer counts
    await broker.submit(_spec("c"))
    assert broker.queue_depth() == 2
    await broker.close()


# ------------------------------------------------------------- idempotency


async def test_an_idempotency_key_returns_the_earlier_task() -> None:
    broker = MemoryBroker(max_queued=1)
    first = await broker.submit(_spec("a"), idempotency_key="k")
    # Even with the queue full: the retry is the same task, not a new one.
    again = await broker.submit(_spec("a"), idempotency_key="k")
    assert again is first
    assert broker.queue_depth() == 1
    with pytest.raises(QueueFull):
        await broker.submit(_spec("a"), idempotency_key="other")
    await broker.close()


async def test_idempotency_keys_are_scoped_per_tenant() -> None:
    broker = MemoryBroker(max_queued=4)
    alice = await broker.submit(_spec("alice"), idempotency_key="k")
    bob = await broker.submit(_spec("bob"), idempotency_key="k")
    assert bob.id != alice.id
    assert bob.tenant == "bob"
    assert broker.queue_depth() == 2
    assert await broker.submit(_spec("bob"), idempotency_key="k") is bob
    await broker.close()


# --------------------------------------------------------------- subscribe


async def test_subscribers_get_the_history_then_live_events_until_the_exit() -> None:
    broker = MemoryBroker(max_queued=4)
    spec = _spec()
    await _running(broker, spec)
    early = [StageEvent("run", seq=1), OutputEvent("stdout", b"one\n", seq=2)]
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
    async with asyncio.timeout(_WAIT_S):
        await asyncio.gather(*(r.wait() for r in replayed))
    assert seen == [early, early]
    assert not any(f.done() for f in followers)  # still following

    late = OutputEvent("stderr", b"two\n", seq=3)
    await broker.publish(spec.id, late)
    await broker.finish(spec.id, _ok())
    async with asyncio.timeout(_WAIT_S):
        await asyncio.gather(*followers)  # they end at the exit event by themselves
    for events in seen:
        assert events[:3] == [*early, late]
        assert len(events) == 4
        assert isinstance(events[3], ExitEvent)
        assert events[3].seq == 4

    # A subscriber that comes after the end gets everything and ends too.
    assert await _collect(broker.subscribe("a", spec.id)) == seen[0]
    await broker.close()


async def test_another_tenant_sees_nothing() -> None:
    broker = MemoryBroker(max_queued=4)
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


async def test_unknown_tasks_are_nothing() -> None:
    broker = MemoryBroker(max_queued=4)
    assert await broker.get("a", "nope") is None
    assert await _collect(broker.subscribe("a", "nope")) == []
    assert await broker.cancel("a", "nope") is False
    assert await broker.control("a", "nope", Control("close_stdin")) is False
    await broker.close()


# ------------------------------------------------------------------ cancel


async def test_cancelling_a_queued_task_finishes_it_at_once() -> None:
    broker = MemoryBroker(max_queued=4)
    spec = _spec()
    other = _spec()
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


async def test_cancelling_a_queued_task_without_events_gives_one_exit_event() -> None:
    broker = MemoryBroker(max_queued=4)
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


async def test_cancelling_a_running_task_asks_its_worker() -> None:
    broker = MemoryBroker(max_queued=4)
    spec = _spec()
    await _running(broker, spec)
    controls = broker.controls(spec.id)
    assert await broker.control("a", spec.id, Control("stdin", b"line\n")) is True
    assert await broker.cancel("a", spec.id) is True
    async with asyncio.timeout(_WAIT_S):
        assert await anext(controls) == Control("stdin", b"line\n")
        assert await anext(controls) == Control("cancel")
    state = await broker.get("a", spec.id)
    assert state is not None
    assert state.status == "running"  # the worker finishes it, with what the kill produced
    await broker.finish(spec.id, ExitEvent(Result(Status.SIGNALED, signal=9, message="cancelled by request")))
    assert await broker.control("a", spec.id, Control("close_stdin")) is False
    await controls.aclose()  # type: ignore[attr-defined]
    await broker.close()


async def test_a_cancel_between_claim_and_start_goes_to_the_worker() -> None:
    # A claimed task is the worker's: cancelling it must not also finish it as "never started",
    # or it would end with two exit events (and the Redis broker has a gap there).
    broker = MemoryBroker(max_queued=4)
    spec = _spec()
    await broker.submit(spec)
    claimed = await _claim(broker)
    controls = broker.controls(claimed.id)
    assert await broker.cancel("a", spec.id) is True
    async with asyncio.timeout(_WAIT_S):
        assert await anext(controls) == Control("cancel")
    await broker.mark_running(spec.id)
    await broker.finish(spec.id, ExitEvent(Result(Status.SIGNALED, signal=9, message="cancelled by request")))
    await broker.finish(spec.id, _ok())  # a late second finish is ignored
    events = await _collect(broker.subscribe("a", spec.id))
    assert [type(e) for e in events] == [ExitEvent]
    state = await broker.get("a", spec.id)
    assert state is not None and state.exit is not None
    assert state.exit.result.message == "cancelled by request"
    await controls.aclose()  # type: ignore[attr-defined]
    await broker.close()


# ------------------------------------------------------------------ finish


async def test_finish_stamps_the_exit_after_the_last_event() -> None:
    broker = MemoryBroker(max_queued=4)
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


async def test_results_are_forgotten_after_their_ttl() -> None:
    broker = MemoryBroker(max_queued=4, result_ttl_s=0.2)
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


# ------------------------------------------------------------------ codecs


def test_task_spec_json_round_trip() -> None:
    spec = TaskSpec(
        id="t1",
        tenant="alice",
        language="c",
        files=(SourceFile("main.c", b"int main(){}\n"), SourceFile("data.bin", bytes(range(256)))),
        stdin=b"\x00\xff\xfe binary stdin",
        args=("-v", "x y"),
        limits=LimitRequest(time_limit=1.5, wall_time_limit=3.0, memory_limit=64, max_output=16),
        compile_limits=LimitRequest(max_processes=8, max_file_size=1024),
        session_id="s" * 32,
        isolation="jail",
        commands=("make", "./a.out"),
        fetch_files=("out.txt",),
        interactive=True,
        user_file_name="solution.c",
        created=1_700_000_000.25,
    )
    text = spec.to_json()
    assert TaskSpec.from_json(text) == spec
    assert TaskSpec.from_json(text.encode()) == spec
    bare = _spec()
    assert TaskSpec.from_json(bare.to_json()) == bare
    assert bare.limits is None


_RESULT = Result(
    Status.RUNTIME_ERROR,
    exit_code=3,
    signal=None,
    stdout=b"out \xff\xfe not utf-8",
    stderr=b"err\n",
    compile_output=b"warning\x00",
    wall_time=0.123456,
    cpu_time=0.05,
    memory_peak=12_345_678,
    truncated=True,
    language="c",
    message="exited with 3",
)

_EVENTS: list[Event] = [
    StageEvent("compile", seq=1, time=1_700_000_000.5),
    OutputEvent("stdout", b"\x00\xffbytes", stage="run", seq=2, time=1_700_000_001.0),
    OutputEvent("stderr", b"oops\n", stage="cmd-1", seq=3, time=1_700_000_001.5),
    StageResultEvent("compile", _RESULT, seq=4, time=1_700_000_002.0),
    NoticeEvent(NOTICE_SESSION_RESET, "a fresh box", seq=5, time=1_700_000_002.5),
    ExitEvent(
        _RESULT,
        stages=(("compile", Result(Status.OK, exit_code=0)), ("run", _RESULT)),
        files=(("out.txt", b"\x01\x02"), ("empty", b"")),
        seq=5,
        time=1_700_000_003.0,
    ),
    ExitEvent(Result(Status.SIGNALED, signal=9, message="cancelled"), seq=1, time=1.0),
]


@pytest.mark.parametrize("event", _EVENTS, ids=lambda e: f"{e.kind}-{e.seq}")
def test_event_wire_round_trip(event: Event) -> None:
    wire = json.loads(json.dumps(event_to_wire(event)))  # JSON-able, not only a dict
    assert event_from_wire(wire) == event


def test_every_event_kind_is_covered_and_unknown_kinds_are_refused() -> None:
    assert {e.kind for e in _EVENTS} == {"stage", "output", "stage_result", "notice", "exit"}
    with pytest.raises(ValueError, match="unknown event kind"):
        event_from_wire({"kind": "bogus", "seq": 1, "time": 0.0})
