"""Environments in the distributed mode: real ``redis-server``, an API node that alone has the environment, workers
that fetch it (verified against the registry's content digest) before they run a job in it.

The image is the tests' own busybox root plus a ``/usr/bin/bash`` that is a script for busybox's shell, so
the ``bash`` language is offered there; a run prints the image's ``/etc/marker``, which the host lacks.
Every node's store is emptied of the test image before each test (its digest is the same every run), so a
worker has it only if it fetched it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sandlot.broker.keys import Keys
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import EnvironmentNotFound
from tests.environments.test_environments_shared import ASH
from tests.nodes import Cluster, NodeLayout, loopback_http
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout
from tests.test_serve_process import wait_until

LAYOUT = NodeLayout(
    name="envdist",
    uid_base=1_010_000_000,
    nodes=range(1, 5),
    max_boxes=64,
    drain_deadline_s=15.0,
    settings={"claim_idle_ms": 5000},
)
API, WORKER_A, WORKER_B, OTHER_API = 1, 2, 3, 4
NAME = "envdist-busybox"
LATE = "envdist-late"  # the same image, imported under another name while the nodes run
MARKER = "sandlot-env-marker\n"  # busybox_base's /etc/marker
SHELL = b'#!/bin/sh\nexec /bin/busybox sh "$@"\n'  # "bash" for the languages' probe: busybox's sh runs main.sh
RUN_TIMEOUT_S = 120.0  # a fetch, then a cold jail in the environment, on a loaded machine


def _store(n: int) -> EnvironmentStore:
    return EnvironmentStore(LAYOUT.node_settings(n).state_dir)


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    """The image imported into the API node's store only; every node's store is emptied of it before and after."""

    def forget() -> None:
        for n in LAYOUT.nodes:
            store = _store(n)
            for name in (NAME, LATE):
                with contextlib.suppress(EnvironmentNotFound):
                    store.remove(name)
            if store.root.is_dir():
                store.gc()

    forget()
    shell = layer(Entry("usr/", tarfile.DIRTYPE, mode=0o755), Entry("usr/bin/", tarfile.DIRTYPE, mode=0o755))
    bash = layer(Entry("usr/bin/bash", data=SHELL, mode=0o755))
    write_oci_layout(tmp_path / "image", [busybox_base(), shell, bash])
    outcome = _store(API).import_image(NAME, tmp_path / "image")
    try:
        yield outcome.environment.digest
    finally:
        forget()


def _run(client: httpx.Client, **body: Any) -> httpx.Response:
    job = {"language": "bash", "code": "/bin/busybox cat /etc/marker\n", "environment": NAME} | body
    return client.post("/api/v1/run", json=job, timeout=RUN_TIMEOUT_S)


def _stored(n: int) -> list[str]:
    """What node n's store directory holds besides its bookkeeping (digests, temporary imports)."""
    root = _store(n).root
    return sorted(e for e in os.listdir(root) if e not in {".locks", ".content", "names.json"}) if root.is_dir() else []


@pytest.mark.timeout(400)
def test_an_environment_imported_on_the_api_node_only_runs_on_each_worker(cluster: Cluster, image: str) -> None:
    api, worker_a = cluster.api(API), cluster.worker(WORKER_A)
    cluster.start(api, worker_a)
    assert _stored(WORKER_A) == []  # only the API node has it

    with httpx.Client(base_url=api.url) as client:
        first = _run(client)
        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["stdout"]) == ("ok", MARKER), first.json()
        # Worker A fetched it into its store, under the name and digest the job carried.
        assert _store(WORKER_A).inspect(NAME).digest == image
        again = _run(client)  # already there: no second fetch
        assert (again.json()["status"], again.json()["stdout"]) == ("ok", MARKER), again.json()
        assert worker_a.output().count("fetching environment") == 1

        # The other worker, alone now, fetches it too.
        worker_b = cluster.worker(WORKER_B)
        cluster.start(worker_b)
        assert worker_a.stop() == 0
        assert _stored(WORKER_B) == []
        second = _run(client)
        assert second.status_code == 200, second.text
        assert (second.json()["status"], second.json()["stdout"]) == ("ok", MARKER), second.json()
        assert _store(WORKER_B).inspect(NAME).digest == image
        assert worker_b.output().count("fetching environment") == 1

        # On the host (no environment) the marker is not there: the runs above were in the image.
        host = _run(client, environment="")
        assert host.json()["status"] == "runtime_error", host.json()


@pytest.mark.timeout(300)
def test_a_tampered_transfer_is_refused_and_nothing_is_stored(cluster: Cluster, image: str, rdb: redis.Redis) -> None:
    api, worker = cluster.api(API), cluster.worker(WORKER_A)
    cluster.start(api, worker)
    holders_key = Keys().environment_holders(image)
    holders = {k.decode(): json.loads(v) for k, v in rdb.hgetall(holders_key).items()}
    assert len(holders) == 1, holders
    ((node, holder),) = holders.items()
    assert (node, holder["url"]) == (api.url, f"{api.url}/internal/environments/{image}")

    with httpx.Client() as client:
        # The internal route is no tenant's: without the node's token (or with another) it is a 404.
        assert client.get(holder["url"]).status_code == 404
        assert client.get(holder["url"], headers={"Authorization": "Bearer nope"}).status_code == 404
        real = client.get(holder["url"], headers={"Authorization": f"Bearer {holder['token']}"})
        assert real.status_code == 200
    assert real.content.count(b"sandlot-env-marker") == 1
    tampered = real.content.replace(b"sandlot-env-marker", b"sandlot-env-MARKER")

    with _serving(tampered) as (base, requests):
        elsewhere = holder | {"url": f"{base}/internal/environments/{image}", "token": "t"}  # the same digest
        rdb.hset(holders_key, node, json.dumps(elsewhere))
        with httpx.Client(base_url=api.url) as client:
            refused = _run(client)
        assert requests == [f"/internal/environments/{image}"]  # the worker did fetch the tampered tar
    assert refused.status_code == 500, refused.text  # /api/v1/run's answer to an internal_error
    result = refused.json()
    assert result["status"] == "internal_error", result
    assert "digest mismatch" in result["message"] and NAME in result["message"], result["message"]
    assert result["stdout"] == ""  # it ran nowhere
    assert _stored(WORKER_A) == []  # nothing half-stored: no digest directory, no temporary one

    # With the real holder back, the next job fetches the real environment and runs.
    rdb.hset(holders_key, node, json.dumps(holder))
    with httpx.Client(base_url=api.url) as client:
        fine = _run(client)
    assert (fine.json()["status"], fine.json()["stdout"]) == ("ok", MARKER), fine.json()
    assert _stored(WORKER_A) == [image.removeprefix("sha256:")]


@pytest.mark.timeout(200)
def test_names_resolve_at_submit_on_any_api_node(
    cluster: Cluster, image: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    """An API node without the environment takes jobs for it too; one nobody has is a 404 at the door."""
    api, other_api, worker = cluster.api(API), cluster.api(OTHER_API), cluster.worker(WORKER_A)
    cluster.start(api, other_api, worker)
    assert _stored(OTHER_API) == []
    with httpx.Client(base_url=other_api.url) as client:
        response = client.post(
            "/api/v1/execute", json={"language": "bash", "code": "echo hi\n", "environment": "nobody-has-this"}
        )
        assert response.status_code == 404, response.text
        assert "nobody-has-this" in response.text
        # A language the environment lacks is a 400 naming it, decided at the door from the registry's record.
        response = client.post("/api/v1/execute", json={"language": "python", "code": "1", "environment": NAME})
        assert response.status_code == 400, response.text
        assert f"not available in environment {NAME!r}" in response.text
        ran = _run(client)
        # Listed by this node too (from the registry), with the languages the registering node found.
        listed = {e["name"]: e for e in client.get("/api/v1/environments").json()["environments"]}
    assert ran.status_code == 200, ran.text
    assert (ran.json()["status"], ran.json()["stdout"]) == ("ok", MARKER), ran.json()
    assert _stored(OTHER_API) == []  # the API node resolved it without fetching it
    assert NAME in listed and "bash" in listed[NAME]["languages"] and "python" not in listed[NAME]["languages"]

    # Imported on the first API node while it runs: it registers it by itself (its store watch), and the
    # other API node then takes jobs for it too.
    late = _store(API).import_image(LATE, tmp_path / "image").environment
    name_key = Keys().environment_name(LATE)
    wait_until(lambda: rdb.get(name_key) == late.digest.encode(), 60.0, f"{LATE} registered")
    with httpx.Client(base_url=other_api.url) as client:
        ran = _run(client, environment=LATE)
    assert (ran.json()["status"], ran.json()["stdout"]) == ("ok", MARKER), ran.json()


@pytest.mark.timeout(300)
def test_a_language_the_environment_adds_is_taken_by_an_api_node_without_it(
    cluster: Cluster, image: str, tmp_path: Path
) -> None:
    """The API node lacking the environment checks the language with the environment's own tables (from the
    registry's record), not only its names: a language they add is one this node's table does not know."""
    _store(API).import_image(NAME, tmp_path / "image", languages=ASH)  # as `sandlot env import --languages`
    api, other_api, worker = cluster.api(API), cluster.api(OTHER_API), cluster.worker(WORKER_A)
    cluster.start(api, other_api, worker)
    with httpx.Client(base_url=other_api.url) as client:
        ran = _run(client, language="envf-ash")
        judged = client.post(
            "/api/v1/judge",
            json={
                "language": "envf-ash",
                "code": "/bin/busybox cat /etc/marker\n",
                "environment": NAME,
                "tests": [{"expected_output": MARKER}, {"expected_output": "another\n"}],
                # A checker of the environment's own language: checked there too, then run in its digest.
                "checker": {"language": "envf-ash", "code": "/bin/busybox cmp output.txt answer.txt\n"},
            },
            timeout=RUN_TIMEOUT_S,
        )
    assert ran.status_code == 200, ran.text
    assert (ran.json()["status"], ran.json()["stdout"], ran.json()["language"]) == ("ok", MARKER, "envf-ash")
    assert judged.status_code == 200, judged.text
    assert [t["verdict"] for t in judged.json()["tests"]] == ["accepted", "wrong_answer"], judged.json()
    assert _stored(OTHER_API) == []  # known from the record, not from a copy


@pytest.mark.timeout(300)
def test_language_tables_replaced_while_the_nodes_run_reach_every_node(
    cluster: Cluster, image: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    """`sandlot env import NAME IMAGE --languages FILE` again on a running API node keeps the digest and
    replaces the tables: its store watch registers them, and a worker that holds a copy takes them."""
    api, other_api, worker = cluster.api(API), cluster.api(OTHER_API), cluster.worker(WORKER_A)
    cluster.start(api, other_api, worker)
    with httpx.Client(base_url=other_api.url) as client:
        before = _run(client)  # the worker fetches it, as it is now: without tables
        assert (before.json()["status"], before.json()["stdout"]) == ("ok", MARKER), before.json()
        assert _run(client, language="envf-ash").status_code == 400
    assert _store(WORKER_A).by_digest(image) is not None

    assert _store(API).import_image(NAME, tmp_path / "image", languages=ASH).cached
    key = Keys().environment(image)
    wait_until(lambda: "envf-ash" in json.loads(rdb.get(key) or b"{}")["languages"], 60.0, "the new tables registered")
    with httpx.Client(base_url=other_api.url) as client:
        ran = _run(client, language="envf-ash")
    assert ran.status_code == 200, ran.text  # the worker checks it as the door did
    assert (ran.json()["status"], ran.json()["stdout"]) == ("ok", MARKER), ran.json()
    followed = _store(WORKER_A).by_digest(image)
    assert followed is not None and followed.languages == ASH
    assert worker.output().count("fetching environment") == 1  # the copy it had, with the new tables


@contextlib.contextmanager
def _serving(body: bytes) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback answering every GET with ``body``; yields its base URL and the paths asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_http(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked


@pytest.mark.timeout(300)
def test_a_session_created_in_an_environment_runs_there_on_a_worker_that_lacks_it(cluster: Cluster, image: str) -> None:
    api, worker = cluster.api(API), cluster.worker(WORKER_A)
    cluster.start(api, worker)
    with httpx.Client(base_url=api.url, timeout=RUN_TIMEOUT_S) as client:
        made = client.post("/api/v1/sessions", json={"environment": NAME})
        assert made.status_code == 201, made.text
        sid = made.json()["session_id"]
        # The runs name no environment: the session's own is recorded with it, and the worker fetches it.
        ran = _run(client, session_id=sid, environment="", code="/bin/busybox cat /etc/marker > kept.txt\n")
        assert (ran.status_code, ran.json()["status"]) == (200, "ok"), ran.text
        again = _run(client, session_id=sid, environment="", code="/bin/busybox cat kept.txt\n")
        assert (again.json()["status"], again.json()["stdout"]) == ("ok", MARKER), again.json()
        assert _store(WORKER_A).inspect(NAME).digest == image

        unknown = client.post("/api/v1/sessions", json={"environment": "no-such-environment"})
        assert unknown.status_code == 404, unknown.text
        # A stateful session is checked against what the environment offers (a busybox root: no python).
        stateful = client.post("/api/v1/sessions", json={"stateful": True, "language": "python", "environment": NAME})
        assert (stateful.status_code, stateful.json()["error"]["field"]) == (400, "language"), stateful.text
        assert f"not available in environment {NAME!r}" in stateful.json()["error"]["message"], stateful.text


@pytest.mark.timeout(300)
def test_a_judge0_language_id_of_an_environment_works_on_an_api_node_without_it(
    cluster: Cluster, image: str, tmp_path: Path
) -> None:
    """``[judge0.languages]`` ids name an environment: an API node lacking it lists and takes them too."""
    config = tmp_path / "judge0.toml"
    config.write_text(
        f'[judge0.languages]\n1001 = {{ name = "Bash (busybox)", language = "bash", environment = "{NAME}" }}\n'
    )
    api, other_api = cluster.api(API), cluster.api(OTHER_API, config=config)
    worker = cluster.worker(WORKER_A)
    cluster.start(api, other_api, worker)
    assert _stored(OTHER_API) == []
    with httpx.Client(base_url=other_api.url + "/judge0", timeout=RUN_TIMEOUT_S) as client:
        listed = {entry["id"]: entry["name"] for entry in client.get("/languages").json()}
        assert listed.get(1001) == "Bash (busybox)", listed
        body = {"language_id": 1001, "source_code": "/bin/busybox cat /etc/marker\n"}
        done = client.post("/submissions", params={"wait": "true"}, json=body)
        assert done.status_code == 201, done.text
        assert (done.json()["status"]["description"], done.json()["stdout"]) == ("Accepted", MARKER), done.json()
    assert _stored(OTHER_API) == []  # resolved from the registry, never fetched by the API node
