"""The OpenAPI document against live answers: every route it lists, success and errors.

Each answer is checked with ``jsonschema`` against what the document declares
for its route and status code: the status must be declared, the content type
must be one declared for it, and a JSON body must validate against its schema
(the document's models forbid undeclared fields, so a new field fails here
until it is declared). The last test fails if a route of the document was never
answered with success here, so a new route cannot go unchecked.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from sandlot.api.common.auth import Authenticator
from sandlot.api.http.app import create_app
from sandlot.config import ApiKey
from sandlot.service import Service
from tests.api.http.test_http import (
    LONG_LIMITS,
    SLEEPER,
    asgi_client,
    running_service,
    wait_done,
    wait_running,
    wait_until,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module")]


class Document:
    """The served document, and which (method, path, status) answers were checked against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, response: httpx.Response, method: str, path: str) -> httpx.Response:
        """Fail unless ``response`` is what the document says ``method path`` answers; return it."""
        where = f"{method.upper()} {path} -> {response.status_code}"
        declared = self.spec["paths"][path][method]["responses"].get(str(response.status_code))
        assert declared is not None, f"{where}: status not in the document ({response.text[:200]})"
        self.checked.add((method, path, response.status_code))
        content = declared.get("content")
        if not content:
            assert response.content == b"", f"{where}: a body the document does not declare"
            return response
        media = response.headers["content-type"].split(";", 1)[0].strip()
        assert media in content, f"{where}: {media} is not among {sorted(content)}"
        instance = response.json() if media == "application/json" else response.text
        schema = {**content[media].get("schema", {}), "components": self.spec["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
        assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
        return response


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="service")
async def service_fixture() -> AsyncIterator[Service]:
    async with running_service() as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="client")
async def client_fixture(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(service)) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="doc")
async def doc_fixture(client: httpx.AsyncClient) -> Document:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return Document(response.json())


async def test_the_document_declares_the_real_error_shape(doc: Document) -> None:
    spec = doc.spec
    assert spec["openapi"].startswith("3.1")
    Draft202012Validator.check_schema({"components": spec["components"]})
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: a phantom 422"
            assert not path.startswith(("/judge0", "/api/v2")), "Judge0 and Piston are documented upstream"
            for status, answer in responses.items():
                for media, declared in answer.get("content", {}).items():
                    assert declared.get("schema"), f"{method} {path} {status} {media}: untyped"
                    if media == "application/json":
                        assert declared["schema"] != {}, f"{method} {path} {status}: untyped"
            for declared in operation.get("requestBody", {}).get("content", {}).values():
                if "example" in declared:  # what Swagger UI's "try it out" starts from must be valid
                    Draft202012Validator(declared["schema"]).validate(declared["example"])
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "field"}
    execute = spec["paths"]["/api/v1/execute"]["post"]
    assert "language" in [p["name"] for p in execute["parameters"] if p["in"] == "query"]
    assert {"application/json", "text/plain"} <= set(execute["requestBody"]["content"])


async def test_runs_and_their_errors(doc: Document, client: httpx.AsyncClient) -> None:
    run = "/api/v1/run"
    ok = doc.check(await client.post(run, json={"language": "python", "code": "print(1)"}), "post", run)
    assert ok.json()["stdout"] == "1\n"
    fetched = {"language": "bash", "code": "echo hi > out.txt", "fetch_files": ["out.txt"]}
    assert doc.check(await client.post(run, json=fetched), "post", run).json()["files"][0]["name"] == "out.txt"
    failing = doc.check(await client.post(run, json={"language": "c", "code": "int main( {"}), "post", run)
    assert failing.json()["status"] == "compile_error"
    assert doc.check(await client.post(run, content=b"{"), "post", run).status_code == 400
    unknown = doc.check(await client.post(run, json={"language": "cobol?", "code": "x"}), "post", run)
    assert unknown.json()["error"]["field"] == "language"
    no_env = doc.check(
        await client.post(run, json={"language": "python", "code": "1", "environment": "nope"}), "post", run
    )
    assert no_env.status_code == 404 and no_env.json()["error"]["field"] == "environment"
    limits = doc.check(await client.post(run, json={"code": "1", "limits": {"time_limit": -1}}), "post", run)
    assert limits.status_code == 400
    too_big = b"x" * (2 * 1024 * 1024 + 1)
    assert doc.check(await client.post(run, content=too_big), "post", run).status_code == 413
    text = doc.check(await client.post("/run", content="print('text')"), "post", "/run")
    assert text.text == "text\n"
    shebang = doc.check(await client.post("/run", content="#!/usr/bin/nonesuch\n"), "post", "/run")
    assert shebang.status_code == 400
    assert doc.check(await client.post("/run", content=too_big), "post", "/run").status_code == 413


async def test_judge_routes(doc: Document, client: httpx.AsyncClient, service: Service) -> None:
    judge, one = "/api/v1/judge", "/api/v1/judge/{task_id}"
    body = {"language": "python", "code": "print(input())", "tests": [{"stdin": "1", "expected_output": "1\n"}]}
    judged = doc.check(await client.post(judge, json={**body, "include_output": True}), "post", judge).json()
    assert judged["verdict"] == "accepted" and judged["tests"][0]["stdout"] == "1\n"
    assert doc.check(await client.post(judge, json={**body, "tests": []}), "post", judge).status_code == 400
    slow = {**body, "code": SLEEPER, "limits": LONG_LIMITS}
    queued = doc.check(await client.post(judge, params={"wait": "false"}, json=slow), "post", judge).json()
    assert doc.check(await client.get(f"{judge}/{queued['task_id']}"), "get", one).status_code == 202
    cancelled = await client.delete(f"/api/v1/tasks/{queued['task_id']}")
    assert cancelled.status_code == 200
    await wait_done(service, "public", queued["task_id"])
    assert doc.check(await client.get(f"{judge}/{queued['task_id']}"), "get", one).status_code == 200
    assert doc.check(await client.get(f"{judge}/nonesuch"), "get", one).status_code == 404


async def test_run_takes_bytes_and_gives_bytes_as_declared(doc: Document, client: httpx.AsyncClient) -> None:
    """``sandlot run``'s warm path (cli_warm.py): stdin and output as base64, the language from the file name."""
    run = "/api/v1/run"
    program = b"import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])\n"
    body = {
        "files": [{"name": "rev.py", "content": base64.b64encode(program).decode(), "encoding": "base64"}],
        "stdin": base64.b64encode(b"\n\xff\x00ab").decode(),
        "stdin_encoding": "base64",
        "output_encoding": "base64",
    }
    declared = doc.spec["paths"][run]["post"]["requestBody"]["content"]["application/json"]["schema"]
    Draft202012Validator(declared).validate(body)
    answer = doc.check(await client.post(run, json=body), "post", run).json()
    assert (answer["status"], answer["language"]) == ("ok", "python")
    assert base64.b64decode(answer["stdout"]) == b"ba\x00\xff\n"  # as text it would be U+FFFD
    for field, value in (("output_encoding", "hex"), ("stdin_encoding", "hex")):
        refused = doc.check(await client.post(run, json={**body, field: value}), "post", run)
        assert (refused.status_code, refused.json()["error"]["field"]) == (400, field)
    bad_stdin = doc.check(await client.post(run, json={**body, "stdin": "%%"}), "post", run)
    assert (bad_stdin.status_code, bad_stdin.json()["error"]["field"]) == (400, "stdin")
    with_data = {"files": [{"name": "data.txt", "content": "hi"}, {"name": "main.py", "content": "print(1)"}]}
    assert doc.check(await client.post(run, json=with_data), "post", run).json()["stdout"] == "1\n"  # main's
    unknown = {**body, "files": [{"name": "x.nope", "content": "1"}]}
    assert doc.check(await client.post(run, json=unknown), "post", run).json()["error"]["field"] == "language"


async def test_tasks_and_their_errors(doc: Document, service: Service, client: httpx.AsyncClient) -> None:
    execute, task, events = "/api/v1/execute", "/api/v1/tasks/{task_id}", "/api/v1/tasks/{task_id}/events"
    queued = doc.check(await client.post(execute, json={"language": "python", "code": "print(2)"}), "post", execute)
    assert queued.status_code == 202
    task_id = queued.json()["task_id"]
    raw = doc.check(await client.post(execute, content="echo raw", params={"language": "bash"}), "post", execute)
    assert raw.status_code == 202
    assert doc.check(await client.post(execute, content=b"\xff"), "post", execute).status_code == 400
    assert doc.check(await client.post(execute, json=[1]), "post", execute).status_code == 400

    await wait_done(service, "public", task_id)
    done = doc.check(await client.get(f"/api/v1/tasks/{task_id}"), "get", task)
    assert done.json()["result"]["stdout"] == "2\n"
    assert doc.check(await client.get("/api/v1/tasks/nope"), "get", task).status_code == 404
    stream = doc.check(await client.get(f"/api/v1/tasks/{task_id}/events"), "get", events)
    assert "event: exit" in stream.text
    assert doc.check(await client.get("/api/v1/tasks/nope/events"), "get", events).status_code == 404
    assert doc.check(await client.delete(f"/api/v1/tasks/{task_id}"), "delete", task).status_code == 409
    assert doc.check(await client.delete("/api/v1/tasks/nope"), "delete", task).status_code == 404

    sleeper = await client.post(execute, json={"language": "python", "code": SLEEPER, "limits": LONG_LIMITS})
    running = doc.check(sleeper, "post", execute).json()["task_id"]
    await wait_running(service, "public", running)
    state = doc.check(await client.get(f"/api/v1/tasks/{running}"), "get", task)
    assert state.json()["status"] == "running"
    cancelled = doc.check(await client.delete(f"/api/v1/tasks/{running}"), "delete", task)
    assert cancelled.json()["cancelled"] is True
    await wait_done(service, "public", running)


async def test_sessions_and_their_errors(doc: Document, client: httpx.AsyncClient, service: Service) -> None:
    sessions, one = "/api/v1/sessions", "/api/v1/sessions/{session_id}"
    # A session takes a free box (never a queued one): wait until the earlier tests' boxes are back.
    await wait_until(lambda: service.pool.busy == 0 and service.pool.available == service.pool.size)
    files, file = f"{one}/files", f"{one}/files/{{path}}"
    created = doc.check(await client.post(sessions), "post", sessions)
    assert created.status_code == 201
    sid = created.json()["session_id"]
    assert doc.check(await client.post(sessions, json=[]), "post", sessions).status_code == 400
    assert doc.check(await client.post(sessions, json={"isolation": 1}), "post", sessions).status_code == 400

    put = doc.check(await client.put(f"{sessions}/{sid}/files/a.txt", content=b"abc"), "put", file)
    assert put.json() == {"path": "a.txt", "size": 3}
    escape = doc.check(await client.put(f"{sessions}/{sid}/files/..%2Fx", content=b"x"), "put", file)
    assert escape.status_code in (400, 404)
    assert doc.check(await client.put(f"{sessions}/nope/files/a", content=b"x"), "put", file).status_code == 404
    listed = doc.check(await client.get(f"{sessions}/{sid}/files"), "get", files)
    assert listed.json()["files"] == [{"path": "a.txt", "size": 3}]
    assert doc.check(await client.get(f"{sessions}/nope/files"), "get", files).status_code == 404
    got = doc.check(await client.get(f"{sessions}/{sid}/files/a.txt"), "get", file)
    assert got.content == b"abc"
    assert doc.check(await client.get(f"{sessions}/{sid}/files/missing"), "get", file).status_code == 404
    state = doc.check(await client.get(f"{sessions}/{sid}"), "get", one)
    assert state.status_code == 200 and state.json()["session_id"] == sid
    assert doc.check(await client.get(f"{sessions}/nope"), "get", one).status_code == 404
    assert doc.check(await client.delete(f"{sessions}/{sid}"), "delete", one).status_code == 204
    assert doc.check(await client.delete(f"{sessions}/{sid}"), "delete", one).status_code == 404


async def test_service_routes(doc: Document, client: httpx.AsyncClient) -> None:
    languages = doc.check(await client.get("/api/v1/languages"), "get", "/api/v1/languages")
    assert "python" in [lang["name"] for lang in languages.json()["languages"]]
    environments = doc.check(await client.get("/api/v1/environments"), "get", "/api/v1/environments")
    assert isinstance(environments.json()["environments"], list)  # the shape; runs in one: test_environments_run
    for path in ("/healthz", "/readyz", "/metrics"):
        assert doc.check(await client.get(path), "get", path).status_code == 200


async def test_a_busy_then_draining_server_answers_as_documented(doc: Document) -> None:
    """429 when the queue is full, then 503 once the server stops accepting (what a SIGTERM does first)."""
    run, execute = "/api/v1/run", "/api/v1/execute"
    async with running_service(pool_size=1, max_queued=1) as service, asgi_client(create_app(service)) as client:
        body = {"language": "python", "code": SLEEPER, "limits": LONG_LIMITS}
        holding = doc.check(await client.post(execute, json=body), "post", execute).json()["task_id"]
        await wait_running(service, "public", holding)  # the only box is busy
        queued = doc.check(await client.post(execute, json=body), "post", execute).json()["task_id"]
        assert doc.check(await client.post(execute, json=body), "post", execute).status_code == 429
        assert doc.check(await client.post(run, json=body), "post", run).status_code == 429
        assert doc.check(await client.post("/run", content=SLEEPER), "post", "/run").status_code == 429
        service.accepting = False
        try:
            assert doc.check(await client.get("/readyz"), "get", "/readyz").status_code == 503
            assert doc.check(await client.post(execute, json=body), "post", execute).status_code == 503
            assert doc.check(await client.post(run, json=body), "post", run).status_code == 503
            assert doc.check(await client.post("/run", content="print(1)"), "post", "/run").status_code == 503
        finally:
            service.accepting = True
        for task_id in (holding, queued):
            assert doc.check(await client.delete(f"/api/v1/tasks/{task_id}"), "delete", "/api/v1/tasks/{task_id}")


async def test_every_keyed_route_answers_401_and_403_as_documented(doc: Document, service: Service) -> None:
    keyed = create_app(service, authenticator=Authenticator([ApiKey("key-docs", "docs")]))
    async with asgi_client(keyed) as client:
        for path, item in doc.spec["paths"].items():
            url = path.replace("{task_id}", "t").replace("{session_id}", "s").replace("{path}", "f")
            for method, operation in item.items():
                if "401" not in operation["responses"]:
                    continue
                missing = await client.request(method, url, content=b"{}")
                assert doc.check(missing, method, path).status_code == 401
                unknown = await client.request(method, url, content=b"{}", headers={"Authorization": "Bearer no"})
                assert doc.check(unknown, method, path).status_code == 403


async def test_every_route_was_checked_with_success_and_an_error(doc: Document) -> None:
    """Last in the module: what the tests above left unchecked."""
    for path, item in doc.spec["paths"].items():
        for method, operation in item.items():
            statuses = {s for m, p, s in doc.checked if (m, p) == (method, path)}
            assert any(s < 300 for s in statuses), f"{method.upper()} {path}: no success answer checked"
            declares_errors = any(int(s) >= 400 for s in operation["responses"] if s.isdigit())
            if declares_errors:
                assert any(s >= 400 for s in statuses), f"{method.upper()} {path}: no error answer checked"
