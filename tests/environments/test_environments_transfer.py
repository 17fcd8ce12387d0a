"""Moving environments between stores (the distributed mode's transfer), over real HTTP and a real Redis.

A small HTTP server of the test's own stands in for an API node's internal route (the distributed tests
drive the real one): it serves ``pack`` of the source store's root, and can hold a response until the
test lets it go, so what waits for what is decided by the test, never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import http.server
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandlot.broker.redis import RedisBroker
from sandlot.broker.redis_environments import EnvironmentRecord, Holder
from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.environments.build import Builder
from sandlot.environments.shared import SharedEnvironments
from sandlot.environments.spec import Spec
from sandlot.environments.store import EnvironmentStore
from sandlot.environments.transfer import content_digest, fetch, pack
from sandlot.environments.unpack import UnpackLimits
from sandlot.errors import EnvironmentFetchFailed, EnvironmentNotFound, RejectedError
from sandlot.languages import LanguageRegistry, OfferedThere
from sandlot.models import Job, SourceFile
from tests.environments.test_environments_shared import ASH
from tests.nodes import free_ports, loopback_http
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout
from tests.root import require_root


@dataclass
class _Source:
    """What the test server sends for each path (the bytes of a digest's pack), and what was asked."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    held: dict[str, threading.Event] = field(default_factory=dict)  # path -> released when set
    asked: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)  # a held request arrived


@contextlib.contextmanager
def _serving(source: _Source) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            source.asked.append(self.path)
            source.tokens.append(self.headers.get("Authorization", ""))
            gate = source.held.get(self.path)
            if gate is not None:
                source.holding.set()
                gate.wait(60)
            body = source.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_http(Handler) as server:
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            for gate in source.held.values():  # a held request's thread ends before the server does
                gate.set()


def _image(tmp_path: Path, marker: bytes) -> Path:
    extra = layer(
        Entry("etc/linked", tarfile.LNKTYPE, linkname="etc/marker"),  # a hard link travels as a link
        Entry("etc/other", data=marker),
    )
    path = tmp_path / f"image-{hashlib.sha256(marker).hexdigest()[:8]}"
    write_oci_layout(path, [busybox_base(), extra])
    return path


def _stored(store: EnvironmentStore) -> list[str]:
    if not store.root.is_dir():
        return []
    return sorted(e for e in os.listdir(store.root) if e not in {".locks", ".content", "names.json"})


def test_pack_is_canonical_and_a_fetch_makes_the_same_root(tmp_path: Path) -> None:
    require_root("the store is root-owned")
    source = EnvironmentStore(tmp_path / "a")
    env = source.import_image("img", _image(tmp_path, b"one\n")).environment
    root = source.rootfs_of(env)
    packed = b"".join(pack(root))
    assert packed == b"".join(pack(root))  # the same bytes every time
    expected = content_digest(source, env)
    assert expected == "sha256:" + hashlib.sha256(packed).hexdigest()
    assert (source.root / ".content" / env.digest.removeprefix("sha256:")).is_file()  # computed once

    served = _Source(bodies={f"/{env.digest}": packed})
    target = EnvironmentStore(tmp_path / "b")
    with _serving(served) as base:
        outcome = fetch(target, "copy", env.to_json(), expected, f"{base}/{env.digest}", "the-token")
    assert served.tokens == ["Bearer the-token"]
    made = outcome.environment
    assert (made.name, made.digest, made.kind) == ("copy", env.digest, "image")
    assert content_digest(target, made) == expected  # the very same tree
    copied = target.rootfs_of(made)
    assert (copied / "etc" / "linked").stat().st_ino == (copied / "etc" / "marker").stat().st_ino
    assert (copied / "etc" / "marker").read_bytes() == b"sandlot-env-marker\n"


def test_a_transfer_over_the_size_cap_stops_and_stores_nothing(tmp_path: Path) -> None:
    require_root("the store is root-owned")
    source = EnvironmentStore(tmp_path / "a")
    env = source.import_image("img", _image(tmp_path, b"one\n")).environment
    packed = b"".join(pack(source.rootfs_of(env)))
    small = UnpackLimits(max_total_bytes=64 * 1024, max_files=4)  # busybox alone is ~2 MB
    target = EnvironmentStore(tmp_path / "b", limits=small)
    with _serving(_Source(bodies={"/x": packed})) as base, pytest.raises(EnvironmentFetchFailed, match="size cap"):
        fetch(target, "copy", env.to_json(), content_digest(source, env), f"{base}/x", "t")
    assert _stored(target) == []


def test_a_holder_that_fails_is_a_clear_error(tmp_path: Path) -> None:
    require_root("the store is root-owned")
    source = EnvironmentStore(tmp_path / "a")
    env = source.import_image("img", _image(tmp_path, b"one\n")).environment
    target = EnvironmentStore(tmp_path / "b")
    with _serving(_Source()) as base, pytest.raises(EnvironmentFetchFailed, match="HTTP 404"):
        fetch(target, "copy", env.to_json(), content_digest(source, env), f"{base}/missing", "t")
    with pytest.raises(EnvironmentFetchFailed, match="not an http"):
        fetch(target, "copy", env.to_json(), content_digest(source, env), "file:///etc/passwd", "t")
    assert _stored(target) == []


async def test_one_fetch_per_digest_and_other_environments_are_not_held_up(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry
) -> None:
    require_root("the store is root-owned")
    source = EnvironmentStore(tmp_path / "a")
    first = source.import_image("first", _image(tmp_path, b"one\n")).environment
    second = source.import_image("second", _image(tmp_path, b"two\n")).environment
    served = _Source()
    for env in (first, second):
        served.bodies[f"/internal/environments/{env.digest}"] = b"".join(pack(source.rootfs_of(env)))
    gate = served.held[f"/internal/environments/{first.digest}"] = threading.Event()
    with _serving(served) as base:
        holder = SharedEnvironments(source, broker.environments, languages)
        await holder.announce(base)
        target = EnvironmentStore(tmp_path / "b")
        worker = SharedEnvironments(target, broker.environments, languages)

        waiting = [asyncio.create_task(worker.ensure("first", first.digest)) for _ in range(3)]
        assert await asyncio.to_thread(served.holding.wait, 60)  # the first fetch is under way, and held
        await worker.ensure("second", second.digest)  # while the first is held: not blocked by it
        assert target.by_digest(second.digest) is not None
        assert not any(task.done() for task in waiting)
        waiting[0].cancel()  # one job gone: the fetch the others wait for goes on
        gate.set()
        await asyncio.gather(*waiting[1:])
    assert served.asked.count(f"/internal/environments/{first.digest}") == 1
    assert target.inspect("first").digest == first.digest
    await worker.ensure("first", first.digest)  # stored: nothing asked
    assert len(served.asked) == 2


def _built_record(spec: Spec, *, digest: str | None = None) -> EnvironmentRecord:
    digest = digest or spec.digest()
    meta = {"digest": digest, "kind": "built", "source": "spec.toml", "spec": spec.canonical()}
    return EnvironmentRecord(digest, "sha256:" + "0" * 64, meta, ("python",))


@pytest.mark.parametrize("tables", [{}, ASH], ids=["plain", "with-language-tables"])
async def test_a_declared_environment_no_holder_sends_is_built_from_its_recorded_spec(
    tmp_path: Path,
    broker: RedisBroker,
    languages: LanguageRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tables: dict[str, dict[str, Any]],
) -> None:
    """The build tool (mmdebstrap + pip + npm, minutes from the registries) is the collaborator stood in for:
    what is checked is that a worker whose holders all fail builds the very spec the registry recorded."""
    require_root("the store is root-owned")
    built: list[Spec] = []

    def build_tool(_builder: Builder, spec: Spec, rootfs: Path) -> dict[str, dict[str, str]]:
        built.append(spec)
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "built").write_text("yes\n")
        return {"apt": {"python3-numpy": "1:1.24.2-1"}}

    monkeypatch.setattr(Builder, "_run", build_tool)
    # Its [languages.X] tables are part of its spec's digest: built without them, it would be another one.
    spec = Spec(name="datasci", apt=("python3-numpy",), pip=("tabulate==0.9.0",), languages=tables)
    (port,) = free_ports(1)  # reserved, and nothing listens there: the holder is gone
    gone = Holder("http://127.0.0.1", f"http://127.0.0.1:{port}/x", "t", "sha256:" + "0" * 64)
    await broker.environments.register("datasci", _built_record(spec), gone, claim_name=True)
    target = EnvironmentStore(tmp_path / "b")
    worker = SharedEnvironments(target, broker.environments, languages)
    await worker.ensure("datasci", spec.digest())
    assert [(s.apt, s.pip, s.suite, s.languages) for s in built] == [(spec.apt, spec.pip, spec.suite, tables)]
    made = target.inspect("datasci")
    assert (made.digest, made.kind, made.spec, made.languages) == (spec.digest(), "built", spec.canonical(), tables)
    assert (target.rootfs_of(made) / "etc" / "built").read_text() == "yes\n"


async def test_an_environment_nobody_can_send_or_build_fails_the_job_naming_why(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry
) -> None:
    require_root("the store is root-owned")
    worker = SharedEnvironments(EnvironmentStore(tmp_path / "b"), broker.environments, languages)
    with pytest.raises(EnvironmentFetchFailed, match="registered by no node"):
        await worker.ensure("ghost", "sha256:" + "1" * 64)
    # A spec of another build recipe would not make this digest: refused, never built as something else.
    other = Spec(name="old", apt=("bash",))
    stale = "sha256:" + "2" * 64
    await broker.environments.register("old", _built_record(other, digest=stale), None, claim_name=True)
    with pytest.raises(EnvironmentFetchFailed, match="another sandlot version"):
        await worker.ensure("old", stale)
    assert _stored(worker.store) == []


def test_a_job_runs_in_the_digest_it_carries_whatever_its_name_points_to_now(
    tmp_path: Path, settings: Settings, languages: LanguageRegistry
) -> None:
    require_root("the store is root-owned")
    store = EnvironmentStore(tmp_path / "a")
    bash = layer(Entry("usr/", tarfile.DIRTYPE, mode=0o755), Entry("usr/bin/bash", data=b"#!/bin/sh\n", mode=0o755))
    write_oci_layout(tmp_path / "one", [busybox_base(), bash])
    first = store.import_image("env", tmp_path / "one").environment
    write_oci_layout(tmp_path / "two", [busybox_base(), bash, layer(Entry("etc/two", data=b"2"))])
    store.import_image("env", tmp_path / "two")  # the name now points to the second
    engine = Engine(settings, languages, environments=store)
    job = Job(language="bash", files=(SourceFile("main", b"true\n"),), environment="env")
    assert engine.prepare(job).rootfs != store.rootfs_of(first)
    pinned = dataclasses.replace(job, environment_digest=first.digest)
    assert engine.prepare(pinned).rootfs == store.rootfs_of(first)
    # A digest this store lacks is never replaced by what the name points to here.
    with pytest.raises(EnvironmentNotFound):
        engine.prepare(dataclasses.replace(job, environment_digest="sha256:" + "3" * 64))
    # An API node lacking it checks the language against the registered record's languages.
    elsewhere = dataclasses.replace(job, environment_digest="sha256:" + "3" * 64)
    assert engine.prepare(elsewhere, offered_there=OfferedThere(("bash",))).rootfs is None
    with pytest.raises(RejectedError, match="not available in environment 'env'"):
        engine.prepare(dataclasses.replace(elsewhere, language="python"), offered_there=OfferedThere(("bash",)))


async def test_a_name_points_to_the_newest_environment_an_api_node_registered(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry
) -> None:
    require_root("the store is root-owned")
    older_store, newer_store, worker_store = (EnvironmentStore(tmp_path / n) for n in ("a", "b", "c"))
    older = older_store.import_image("env", _image(tmp_path, b"one\n")).environment
    newer = newer_store.import_image("env", _image(tmp_path, b"two\n")).environment
    assert older.created <= newer.created
    registry = broker.environments
    await SharedEnvironments(newer_store, registry, languages).announce("http://api-2")
    assert await registry.digest_of("env") == newer.digest
    # An API node (re)starting with an older import under that name does not take the name back ...
    await SharedEnvironments(older_store, registry, languages).announce("http://api-1")
    assert await registry.digest_of("env") == newer.digest
    # ... and is a holder of its own environment all the same (reachable by digest).
    record = await registry.record(older.digest)
    assert record is not None and [h.node for h in record.holders] == ["http://api-1"]
    # A worker never re-points a name, even with a newer import of its own; it fills only a free one.
    third = _image(tmp_path, b"three\n")
    worker_store.import_image("env", third)
    worker_store.import_image("solo", third)
    await SharedEnvironments(worker_store, registry, languages).announce(None)
    assert await registry.digest_of("env") == newer.digest
    assert await registry.digest_of("solo") == worker_store.inspect("solo").digest
