"""POST /api/v1/execute, served by a raw ASGI route in front of FastAPI (``http_execute``).

The route's everyday behaviour (JSON and text bodies, idempotency, bad input,
413, tenants) is tested with the other routes in test_http*, which go through
it; here is what it must do by itself because FastAPI no longer does it for it:
auth answers, query and header parsing, reading a body sent without a JSON
content type (a request if it reads as one, else code in the language ``POST
/run`` detects), the response counter, a client that
leaves mid-body, an unexpected failure, and the OpenAPI entry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from starlette.types import Message

from sandlot.api.http.app import create_app
from sandlot.broker import TaskSpec
from sandlot.broker.memory import MemoryBroker
from sandlot.config import ApiKey
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, client_fixture, running_service, service_fixture, wait_done

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name

KEYS = (ApiKey("key-alice", "alice"), ApiKey("key-chatty", "carol", requests_per_minute=1))


def _requests(service: Service, code: str) -> float:
    labels = {"door": "http", "code": code}
    return service.metrics.registry.get_sample_value("sandlot_requests_total", labels) or 0.0


async def test_auth_answers_as_every_other_route() -> None:
    async with running_service(api_keys=KEYS) as service, asgi_client(create_app(service)) as client:
        body = {"language": "python", "code": "print(1)"}
        for route in ("/api/v1/execute", "/api/v1/run"):
            missing = await client.post(route, json=body)
            assert missing.status_code == 401, route
            assert missing.json()["error"]["code"] == "unauthorized"
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            not_bearer = await client.post(route, json=body, headers={"Authorization": "Basic a2V5LWFsaWNl"})
            assert not_bearer.status_code == 401, route
            unknown = await client.post(route, json=body, headers={"Authorization": "Bearer nope"})
            assert (unknown.status_code, unknown.json()["error"]["code"]) == (403, "forbidden"), route
        alice = await client.post("/api/v1/execute", json=body, headers={"Authorization": "bearer  key-alice "})
        assert alice.status_code == 202, alice.text
        assert (await wait_done(service, "alice", alice.json()["task_id"])).result.stdout == b"1\n"
        chatty = {"Authorization": "Bearer key-chatty"}
        assert (await client.post("/api/v1/execute", json=body, headers=chatty)).status_code == 202
        limited = await client.post("/api/v1/execute", json=body, headers=chatty)
        assert (limited.status_code, limited.json()["error"]["code"]) == (429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1


async def test_the_language_parameter_is_read_as_starlette_reads_it(
    service: Service, client: httpx.AsyncClient
) -> None:
    text = {"Content-Type": "text/plain; charset=utf-8"}
    escaped = await client.post("/api/v1/execute?language=ba%73h", content="echo $0", headers=text)
    assert escaped.status_code == 202, escaped.text
    assert (await wait_done(service, "public", escaped.json()["task_id"])).result.language == "bash"
    last = await client.post("/api/v1/execute?language=bash&language=python", content="print(2)", headers=text)
    assert (await wait_done(service, "public", last.json()["task_id"])).result.stdout == b"2\n"
    unknown = await client.post("/api/v1/execute?language=cobol", content="DISPLAY 1", headers=text)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["field"] == "language"
    # A JSON body's own language wins over the parameter, which only fills in a missing one.
    json_body = await client.post("/api/v1/execute?language=bash", json={"language": "python", "code": "print(3)"})
    assert (await wait_done(service, "public", json_body.json()["task_id"])).result.language == "python"
    filled = await client.post("/api/v1/execute?language=bash", json={"code": "echo 4"})
    assert (await wait_done(service, "public", filled.json()["task_id"])).result.stdout == b"4\n"


@pytest.mark.parametrize(
    ("content_type", "body", "language", "stdout"),
    [
        # What curl -d sends: a JSON request labelled as a form.
        ("application/x-www-form-urlencoded", '{"language": "bash", "code": "echo curl"}', "bash", "curl\n"),
        (None, '  {"code": "print(5)", "language": "python"}', "python", "5\n"),  # no label at all
        ("text/plain", 'package main\nimport "fmt"\nfunc main() { fmt.Println("go") }\n', "go", "go\n"),
        ("text/plain", "#!/bin/bash\necho shebang\n", "bash", "shebang\n"),
        # Braces that are not a request stay code: a Python dict display, invalid JSON.
        ("text/plain", '{"neither": 1} and print("dict")', "python", "dict\n"),
        ("text/plain", "{print('set')}", "python", "set\n"),
    ],
)
async def test_a_body_without_a_json_type_is_a_request_if_it_reads_as_one_else_detected_code(
    service: Service, client: httpx.AsyncClient, content_type: str | None, body: str, language: str, stdout: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = client.build_request("POST", "/api/v1/execute", content=body.encode(), headers=headers)
    assert request.headers.get("Content-Type") == content_type
    response = await client.send(request)
    assert response.status_code == 202, response.text
    result = (await wait_done(service, "public", response.json()["task_id"])).result
    assert (result.language, result.stdout.decode(), result.status.value) == (language, stdout, "ok"), result.stderr


async def test_answers_are_json_and_counted(service: Service, client: httpx.AsyncClient) -> None:
    before = _requests(service, "202"), _requests(service, "400")
    accepted = await client.post("/api/v1/execute", json={"language": "python", "code": "print(1)"})
    assert accepted.status_code == 202
    assert accepted.headers["content-type"] == "application/json"
    assert accepted.json() == {"task_id": accepted.json()["task_id"], "status": "queued"}
    refused = await client.post("/api/v1/execute", json={"language": "python"})
    assert refused.status_code == 400
    assert refused.json() == {"error": {"code": "rejected", "message": "code: required (or files)", "field": "code"}}
    assert (_requests(service, "202"), _requests(service, "400")) == (before[0] + 1, before[1] + 1)


async def test_other_methods_are_405_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/execute")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_a_client_gone_mid_body_queues_nothing_and_is_counted_499(service: Service) -> None:
    app = create_app(service)
    messages: list[Message] = [
        {"type": "http.request", "body": b"print(", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    depth = service.broker.queue_depth()
    before = _requests(service, "499")
    scope = _scope([(b"content-type", b"text/plain")])
    await asyncio.wait_for(app(scope, receive, send), 10.0)
    assert sent == []
    assert service.broker.queue_depth() == depth
    assert _requests(service, "499") == before + 1


class _FailingBroker(MemoryBroker):
    async def submit(self, spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec:
        raise RuntimeError("a bug, not bad input")


async def test_an_unexpected_failure_is_a_logged_500_with_no_detail(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        running_service(broker=_FailingBroker(max_queued=8)) as service,
        asgi_client(create_app(service)) as client,
    ):
        with caplog.at_level(logging.ERROR, logger="sandlot.api.http.execute"):
            response = await client.post("/api/v1/execute", json={"language": "python", "code": "print(1)"})
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal error", "field": None}}
        assert "a bug, not bad input" in caplog.text  # in the log, not in the answer
        assert _requests(service, "500") == 1


async def test_openapi_documents_the_route(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/api/v1/execute"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "text/plain"}
    parameters = {(p["in"], p["name"]) for p in operation["parameters"]}
    assert parameters == {("query", "language"), ("header", "Idempotency-Key")}
    assert "202" in operation["responses"]


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/execute",
        "raw_path": b"/api/v1/execute",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("sandlot", 80),
        "state": {},
    }
