"""Bad input through the HTTP door: always a 4xx JSON error naming the field, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sandlot.api.http.app import create_app
from tests.api.http.test_http import asgi_client, client_fixture, running_service, service_fixture

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"language": "python", "code": "print(1)", "limits": {"time_limit": NaN}}', "body"),
        (b'{"language": "python", "code": "print(1)", "limits": {"time_limit": 1e999}}', "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b'{"language": 3, "code": "print(1)"}', "language"),
        (b'{"language": "python", "code": ["print(1)"]}', "code"),
        (b'{"language": "python", "code": "print(1)", "colour": "red"}', "colour"),
        (b'{"language": "cobol", "code": "DISPLAY 1"}', "language"),
        (b'{"language": "python", "code": "print(1)", "limits": {"time_limit": 1000}}', "limits.time_limit"),
        (b'{"language": "python", "code": "print(1)", "limits": {"memory_limit": "lots"}}', "limits.memory_limit"),
        (b'{"language": "python", "code": "print(1)", "args": [1]}', "args"),
        (b'{"language": "python", "code": "   "}', "code"),
        (b'{"language": "python", "code": "print(1)", "isolation": "vm"}', "isolation"),
        (b'{"language": "python", "code": "print(1)", "session_id": "nope"}', "session_id"),
        (b'{"language": "python", "code": "print(\xff)"}', "body"),
    ],
)
@pytest.mark.parametrize("route", ["/api/v1/run", "/api/v1/execute"])
async def test_bad_requests_name_the_field(client: httpx.AsyncClient, route: str, body: bytes, field: str) -> None:
    response = await client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["code"] in ("rejected", "not_found")
    assert error["message"]


async def test_non_utf8_text_body_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/execute", content=b"print('\xfe')", headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "code"


async def test_oversized_bodies_are_refused_before_buffering() -> None:
    async with running_service(max_body_bytes=1024) as service, asgi_client(create_app(service)) as client:
        declared = await client.post("/api/v1/execute", content=b"x" * 2048)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(8):
                yield b"#" * 512

        streamed = await client.post("/api/v1/execute", content=chunks())
        assert streamed.status_code == 413
        fits = await client.post("/api/v1/execute", content=b"print(1)")
        assert fits.status_code == 202
        counted = service.metrics.registry.get_sample_value("sandlot_requests_total", {"door": "http", "code": "413"})
        assert counted == 2


async def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await client.put("/api/v1/run")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
