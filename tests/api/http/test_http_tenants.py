"""API keys, quotas, tenant scoping and sessions (files kept between runs) through the HTTP door."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sandlot.api.common.auth import Authenticator
from sandlot.api.http.app import create_app
from sandlot.config import ApiKey
from sandlot.errors import AuthError
from sandlot.service import Service
from tests.api.http.test_http import (
    LONG_LIMITS,
    SLEEPER,
    asgi_client,
    client_fixture,
    running_service,
    service_fixture,
    wait_done,
)

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
KEYS = (
    ApiKey("key-alice", "alice", max_concurrent=1),
    ApiKey("key-bob", "bob"),
    ApiKey("key-chatty", "carol", requests_per_minute=3),
)


@pytest.fixture(name="keyed")
async def keyed_fixture() -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    async with running_service(api_keys=KEYS) as service, asgi_client(create_app(service)) as client:
        yield service, client


# --------------------------------------------------------------------- auth


async def test_keys_are_required_except_on_probes(keyed: tuple[Service, httpx.AsyncClient]) -> None:
    _, client = keyed
    missing = await client.get("/api/v1/languages")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    unknown = await client.get("/api/v1/languages", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 403
    not_bearer = await client.get("/api/v1/languages", headers={"Authorization": "Basic a2V5LWFsaWNl"})
    assert not_bearer.status_code == 401
    assert (await client.post("/run", content="print(1)")).status_code == 401
    assert (await client.get("/api/v1/languages", headers=ALICE)).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert (await client.get(path)).status_code == 200, path


async def test_requests_per_minute(keyed: tuple[Service, httpx.AsyncClient]) -> None:
    _, client = keyed
    chatty = {"Authorization": "Bearer key-chatty"}
    for _ in range(3):
        assert (await client.get("/api/v1/languages", headers=chatty)).status_code == 200
    limited = await client.get("/api/v1/languages", headers=chatty)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await client.get("/api/v1/languages", headers=BOB)).status_code == 200  # buckets are per key


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    auth = Authenticator((ApiKey("k", "t", requests_per_minute=60),), clock=lambda: now[0])
    for _ in range(60):
        auth.authenticate("k")
    with pytest.raises(AuthError, match="per minute") as raised:
        auth.authenticate("k")
    assert raised.value.status == 429
    assert raised.value.retry_after_s == pytest.approx(1.0)
    now[0] += 1.0  # one token per second
    assert auth.authenticate("k").tenant == "t"


async def test_max_concurrent_executions(keyed: tuple[Service, httpx.AsyncClient]) -> None:
    service, client = keyed
    body = {"language": "python", "code": SLEEPER, "limits": LONG_LIMITS}
    first = await client.post("/api/v1/execute", json=body, headers=ALICE)
    assert first.status_code == 202
    second = await client.post("/api/v1/execute", json=body, headers=ALICE)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_executions"
    assert "Retry-After" in second.headers
    assert (await client.post("/api/v1/execute", json=body, headers=BOB)).status_code == 202  # bob is unlimited

    task_id = first.json()["task_id"]
    assert (await client.delete(f"/api/v1/tasks/{task_id}", headers=ALICE)).status_code == 200
    await wait_done(service, "alice", task_id)
    quick = await client.post("/api/v1/run", json={"language": "python", "code": "print(1)"}, headers=ALICE)
    assert quick.status_code == 200  # the slot is free again once the task is done


async def test_tenants_cannot_see_each_other(keyed: tuple[Service, httpx.AsyncClient]) -> None:
    service, client = keyed
    task_id = (
        await client.post("/api/v1/execute", json={"language": "python", "code": "print(1)"}, headers=ALICE)
    ).json()["task_id"]
    await wait_done(service, "alice", task_id)
    assert (await client.get(f"/api/v1/tasks/{task_id}", headers=ALICE)).status_code == 200
    assert (await client.get(f"/api/v1/tasks/{task_id}", headers=BOB)).status_code == 404
    assert (await client.get(f"/api/v1/tasks/{task_id}/events", headers=BOB)).status_code == 404
    assert (await client.delete(f"/api/v1/tasks/{task_id}", headers=BOB)).status_code == 404

    session_id = (await client.post("/api/v1/sessions", headers=ALICE)).json()["session_id"]
    assert (await client.put(f"/api/v1/sessions/{session_id}/files/a.txt", content=b"A", headers=ALICE)).is_success
    for method, path in (
        ("GET", f"/api/v1/sessions/{session_id}/files"),
        ("GET", f"/api/v1/sessions/{session_id}/files/a.txt"),
        ("PUT", f"/api/v1/sessions/{session_id}/files/b.txt"),
        ("DELETE", f"/api/v1/sessions/{session_id}"),
    ):
        response = await client.request(method, path, content=b"B" if method == "PUT" else None, headers=BOB)
        assert response.status_code == 404, (method, path)
    run = {"language": "python", "code": "print(open('a.txt').read())", "session_id": session_id}
    stolen = await client.post("/api/v1/run", json=run, headers=BOB)
    assert stolen.status_code == 404
    assert stolen.json()["error"]["field"] == "session_id"
    assert (await client.post("/api/v1/run", json=run, headers=ALICE)).json()["stdout"] == "A\n"


# ----------------------------------------------------------------- sessions


async def test_a_session_keeps_its_files(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/sessions")
    assert created.status_code == 201
    session_id = created.json()["session_id"]
    assert created.json()["expires_in_s"] > 0
    files = f"/api/v1/sessions/{session_id}/files"

    uploaded = await client.put(f"{files}/data/in.txt", content=b"21")
    assert uploaded.status_code == 201
    first = {
        "language": "python",
        "code": "n = int(open('data/in.txt').read())\nopen('out.txt', 'w').write(str(n * 2))\nprint(n)",
        "session_id": session_id,
    }
    assert (await client.post("/api/v1/run", json=first)).json()["stdout"] == "21\n"
    second = {"language": "bash", "code": "cat out.txt", "session_id": session_id}
    assert (await client.post("/api/v1/run", json=second)).json()["stdout"] == "42"

    listing = (await client.get(files)).json()["files"]
    assert {"path": "out.txt", "size": 2} in listing
    assert {"path": "data/in.txt", "size": 2} in listing
    download = await client.get(f"{files}/out.txt")
    assert download.status_code == 200
    assert download.content == b"42"
    assert download.headers["content-type"] == "application/octet-stream"
    assert (await client.get(f"{files}/absent.txt")).status_code == 404

    assert (await client.delete(f"/api/v1/sessions/{session_id}")).status_code == 204
    assert (await client.delete(f"/api/v1/sessions/{session_id}")).status_code == 404
    assert (await client.get(files)).status_code == 404
    gone = await client.post("/api/v1/run", json=second)
    assert gone.status_code == 404


async def test_session_files_refuse_escapes_and_planted_links(client: httpx.AsyncClient) -> None:
    session_id = (await client.post("/api/v1/sessions")).json()["session_id"]
    files = f"/api/v1/sessions/{session_id}/files"
    plant = {
        "language": "bash",
        "code": "ln -s /etc/passwd link && mkfifo pipe && echo ok",
        "session_id": session_id,
    }
    assert (await client.post("/api/v1/run", json=plant)).json()["stdout"] == "ok\n"

    link = await client.get(f"{files}/link")
    assert link.status_code == 400
    assert link.json()["error"]["field"] == "path"
    assert (await client.get(f"{files}/pipe")).status_code == 400
    for escape in ("%2E%2E/%2E%2E/etc/passwd", "/etc/passwd"):
        response = await client.get(f"{files}/{escape}")
        assert response.status_code == 400, escape
        assert (await client.put(f"{files}/{escape}", content=b"x")).status_code == 400
    # Writing over a planted link replaces the link; the file it pointed to is untouched.
    assert (await client.put(f"{files}/link", content=b"mine")).status_code == 201
    assert (await client.get(f"{files}/link")).content == b"mine"
    with open("/etc/passwd", "rb") as passwd:
        assert passwd.read() != b"mine"


async def test_the_session_limit_answers_429() -> None:
    async with running_service(pool_size=2, max_sessions=1) as service, asgi_client(create_app(service)) as client:
        assert (await client.post("/api/v1/sessions")).status_code == 201
        refused = await client.post("/api/v1/sessions")  # max_sessions, not the pool, bounds them
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "pool_full"
        assert int(refused.headers["Retry-After"]) >= 1
        assert service.pool.session_count == 1
