"""The REPL protocol's host side (pure), the box's keep_output switch, and where stateful sessions are refused."""

from __future__ import annotations

import json

import pytest

from sandlot.api.http.app import create_app
from sandlot.broker import event_from_wire, event_to_wire
from sandlot.config import DEFAULT_RUN_LIMITS
from sandlot.models import ExitEvent, OutputEvent, Result, Status
from sandlot.sandbox import Box
from sandlot.stateful.protocol import CellReport, MarkerSplitter, ProtocolError
from tests.api.http.test_http import asgi_client, running_service
from tests.nodes import RedisServer

MARKER = b"\x1esandlot-cell-end-0123"
REPORT = b' {"outcome": "ok", "value": "42", "value_chars": 2, "error": ""}\n'


def test_a_marker_split_across_reads_is_found_and_output_around_it_kept() -> None:
    stream = b"out put" + MARKER + REPORT + b"next cell"
    for cut in range(1, len(stream)):
        splitter = MarkerSplitter(MARKER, with_report=True)
        parts = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        text = b"".join(part for part in parts if isinstance(part, bytes))
        reports = [part for part in parts if isinstance(part, CellReport)]
        assert text == b"out putnext cell", cut
        assert reports == [CellReport("ok", "42", 2, "")], cut


def test_output_that_only_looks_like_a_marker_start_is_released() -> None:
    splitter = MarkerSplitter(MARKER, with_report=False)
    assert splitter.feed(b"abc\x1esandlot") == [b"abc"]  # held back: could be a marker
    assert splitter.feed(b"!") == [b"\x1esandlot!"]  # it was not
    assert splitter.feed(MARKER + b"\n") == [None]


def test_a_forged_report_is_a_protocol_error() -> None:
    splitter = MarkerSplitter(MARKER, with_report=True)
    with pytest.raises(ProtocolError):
        splitter.feed(MARKER + b" {not json}\n")
    with pytest.raises(ProtocolError):
        MarkerSplitter(MARKER, with_report=False).feed(MARKER + b"tail\n")


def test_the_value_crosses_the_redis_codec_and_is_absent_for_other_runs() -> None:
    cell = ExitEvent(Result(Status.OK), value="'x' * 3", seq=4)
    assert event_from_wire(json.loads(json.dumps(event_to_wire(cell)))) == cell
    plain = ExitEvent(Result(Status.OK), seq=2)
    assert "value" not in event_to_wire(plain)
    assert event_from_wire(event_to_wire(plain)) == plain


@pytest.mark.root
async def test_keep_output_false_streams_events_and_keeps_no_copy(box: Box) -> None:
    events: list[OutputEvent | Result] = []
    command = ["/bin/sh", "-c", "echo one; echo two >&2"]
    async for item in box.run(command, limits=DEFAULT_RUN_LIMITS, keep_output=False):
        events.append(item)
    result = events[-1]
    assert isinstance(result, Result) and result.status.value == "ok"
    assert (result.stdout, result.stderr) == (b"", b"")
    streamed = {(e.stream, e.data) for e in events if isinstance(e, OutputEvent)}
    assert streamed == {("stdout", b"one\n"), ("stderr", b"two\n")}


@pytest.mark.root
async def test_distributed_mode_runs_stateful_sessions_through_redis(fresh_redis: RedisServer) -> None:
    """One node with Redis: the session is recorded in the directory, its first cell binds it to the worker,
    which starts the interpreter; later cells and the session's files reach it; DELETE ends it."""
    async with running_service(redis_url=fresh_redis.url) as service, asgi_client(create_app(service)) as client:
        reply = await client.post("/api/v1/sessions", json={"stateful": True})
        assert reply.status_code == 201, reply.text
        sid = reply.json()["session_id"]
        assert service.stateful is not None and service.stateful.find("default", sid) is None  # not started yet
        first = await client.post("/api/v1/run", json={"session_id": sid, "code": "x = 41"})
        assert (first.status_code, first.json()["status"]) == (200, "ok"), first.text
        put = await client.put(f"/api/v1/sessions/{sid}/files/data.txt", content=b"from a file\n")
        assert put.status_code == 201, put.text
        second = await client.post("/api/v1/run", json={"session_id": sid, "code": "x + 1, open('data.txt').read()"})
        assert second.json()["value"] == repr((42, "from a file\n")), second.text
        shell = await client.post("/api/v1/run", json={"session_id": sid, "code": "1", "commands": ["ls"]})
        assert (shell.status_code, shell.json()["error"]["field"]) == (400, "commands"), shell.text
        stronger = await client.post("/api/v1/run", json={"session_id": sid, "code": "1", "isolation": "gvisor"})
        assert stronger.status_code == 400 and "weaker" in stronger.text, stronger.text  # a jail session
        # What creation checks on an API node, as for a run: the language has a REPL, the limits are valid.
        for body, field in (
            ({"stateful": True, "language": "bash"}, "language"),
            ({"stateful": True, "language": "cobol"}, "language"),
            ({"stateful": True, "limits": {"memory_limit": -1}}, "limits.memory_limit"),
            ({"stateful": True, "colour": "red"}, "colour"),
        ):
            refused = await client.post("/api/v1/sessions", json=body)
            assert (refused.status_code, refused.json()["error"]["field"]) == (400, field), (body, refused.text)
        assert (await client.delete(f"/api/v1/sessions/{sid}")).status_code == 204
        gone = await client.post("/api/v1/run", json={"session_id": sid, "code": "x"})
        assert gone.status_code == 404, gone.text
        plain = await client.post("/api/v1/sessions", json={})
        assert plain.status_code == 201, plain.text  # file sessions are as before
