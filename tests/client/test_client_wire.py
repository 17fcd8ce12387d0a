"""The client's protocol logic on answers a live server rarely gives: SSE edge cases, broken streams,
error bodies that are not ours. A MockTransport stands in for the server (the collaborator); what
is checked is the client's own parsing and reconnecting."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from sandlot_client import AsyncSandlot, Busy, Rejected, Sandlot, Status, Unavailable
from sandlot_client._sse import SseEvent, parse_sse
from sandlot_client._wire import execution_body


def test_parse_sse_follows_the_standard() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1",
        "event: output",
        'data: {"a":',
        "data:1}",
        "",
        "retry: 100",
        "event: exit",
        "data: {}",
        "",
        "event: no data is no event",
        "",
        "data: cut off by the end of the stream",
    ]
    assert parse_sse(lines) == [
        SseEvent("output", '{"a":\n1}', "1"),
        SseEvent("exit", "{}", "1"),  # the last id persists
    ]


def _resuming_server(seen: list[str | None]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        if len(seen) == 1:  # the stream ends before the exit event
            body = 'id: 1\nevent: output\ndata: {"stream": "stdout", "stage": "run", "data": "a"}\n\n'
        else:
            body = 'id: 2\nevent: exit\ndata: {"status": "ok", "exit_code": 0, "stdout": "a"}\n\n'
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    return httpx.MockTransport(answer)


def test_a_broken_stream_resumes_after_the_last_event() -> None:
    seen: list[str | None] = []
    outputs: list[str] = []
    with Sandlot("http://sandlot", transport=_resuming_server(seen)) as client:
        result = client.task("t1").result(on_stdout=outputs.append)
    assert (result.status, result.stdout, result.task_id, outputs, seen) == (Status.OK, "a", "t1", ["a"], [None, "1"])


async def test_a_broken_stream_resumes_after_the_last_event_async() -> None:
    seen: list[str | None] = []
    outputs: list[str] = []
    async with AsyncSandlot("http://sandlot", transport=_resuming_server(seen)) as client:
        result = await client.task("t1").result(on_stdout=outputs.append)
    assert (result.stdout, outputs, seen) == ("a", ["a"], [None, "1"])


def test_a_stream_that_keeps_breaking_is_unavailable() -> None:
    empty = httpx.MockTransport(lambda request: httpx.Response(200, text=": keep-alive\n\n"))
    with Sandlot("http://sandlot", transport=empty) as client, pytest.raises(Unavailable) as failure:
        client.task("t1").result()
    assert str(failure.value) == "the event stream of task t1 ended before its result"


def test_retry_after_as_an_http_date_and_answers_that_are_not_ours() -> None:
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": later}, text="draining"),
            httpx.Response(502, text="<html>bad gateway</html>"),
            httpx.Response(202, text="not json"),
            httpx.Response(413, json={"error": {"code": "payload_too_large", "message": "too big", "field": None}}),
        ]
    )
    with Sandlot("http://sandlot", transport=httpx.MockTransport(lambda request: next(answers))) as client:
        with pytest.raises(Busy) as busy:
            client.submit("python", "x")
        assert busy.value.retry_after is not None and 100 < busy.value.retry_after <= 120
        assert str(busy.value).startswith("draining")
        with pytest.raises(Unavailable, match="answered 502: Bad Gateway"):
            client.submit("python", "x")
        with pytest.raises(Unavailable, match="not JSON"):
            client.submit("python", "x")
        with pytest.raises(Rejected, match="too big"):
            client.submit("python", "x")


def test_request_bodies() -> None:
    assert execution_body("python", "print(1)") == {"language": "python", "code": "print(1)"}
    with_files = execution_body("python", b"\xff", files={"a.txt": "t"}, stdin=b"\x00")
    assert with_files["files"] == [
        {"name": "main", "content": "/w==", "encoding": "base64"},
        {"name": "a.txt", "content": "t", "encoding": "utf8"},
    ]
    assert (with_files["stdin"], with_files["stdin_encoding"]) == ("AA==", "base64")
    with pytest.raises(Rejected, match="args"):
        execution_body("python", "x", args="one string")
    with pytest.raises(Rejected, match="str or bytes"):
        execution_body("python", 42)  # type: ignore[arg-type]


def test_the_client_s_copies_match_the_server_s_originals() -> None:
    """The client imports nothing of the server, so its Status, Result and Limits are copies: checked here."""
    import dataclasses

    from sandlot.config import LimitRequest
    from sandlot.models import Result as ServerResult
    from sandlot.models import Status as ServerStatus
    from sandlot_client import Limits, Result

    assert [s.value for s in Status] == [s.value for s in ServerStatus]
    server_keys = set(ServerResult(ServerStatus.OK).to_dict())
    client_fields = {f.name for f in dataclasses.fields(Result)}
    assert server_keys <= client_fields, f"the client's Result lacks {sorted(server_keys - client_fields)}"
    assert [f.name for f in dataclasses.fields(Limits)] == [f.name for f in dataclasses.fields(LimitRequest)]
