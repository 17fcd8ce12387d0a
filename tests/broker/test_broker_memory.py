"""The embedded broker's own behaviour, and the wire codecs.

The broker contract (fair claims, bounds, idempotency, replay, tenant scoping,
cancel, TTL) runs against both brokers in ``test_broker_redis`` (its ``make``
fixture): here is only what the memory broker alone does. No sandbox here: the
tests play the door and the worker themselves.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from sandlot.broker import (
    Control,
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
from tests.broker.test_broker_redis import _claim, _collect, _ok, _spec, _within

# ------------------------------------------------------------------ memory only


async def test_the_memory_broker_hands_back_the_submitted_objects_themselves() -> None:
    """No copy on the way in or out: a submit, and an idempotent retry, return the very spec."""
    broker = MemoryBroker(max_queued=1)
    first = _spec("a")
    assert await broker.submit(first, idempotency_key="k") is first
    assert await broker.submit(_spec("a"), idempotency_key="k") is first  # even with the queue full
    await broker.close()
    broker = MemoryBroker(max_queued=4)
    await broker.submit(_spec("alice"), idempotency_key="k")
    bob = _spec("bob")
    assert await broker.submit(bob, idempotency_key="k") is bob  # another tenant's own key
    assert await broker.submit(_spec("bob"), idempotency_key="k") is bob
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
    assert await _within(anext(controls)) == Control("cancel")
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
        door_data='{"expected_output": "42"}',
        created=1_700_000_000.25,
    )
    text = spec.to_json()
    # Written field by field: a field added to TaskSpec but not to to_json would be lost on the way.
    assert set(json.loads(text)) == {f.name for f in dataclasses.fields(TaskSpec)}
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
