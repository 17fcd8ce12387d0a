"""Session file requests of the distributed mode, the API node's side, against a real ``redis-server``.

The end-to-end path (real workers, real workdirs) is tests/distributed/test_distributed_sessions.py;
here: what a request answers when no worker can take it or the one holding the session stays silent,
that every error a worker sends back is raised again as the class it was there, and what a session's
state (``Sessions.describe``) answers from Redis and the worker holding it.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from sandlot.broker import Distributed, SessionRecord
from sandlot.broker.keys import Keys
from sandlot.broker.redis import RedisBroker
from sandlot.broker.redis_session_files import FileRequest, Target
from sandlot.errors import (
    AtCapacity,
    FileBusy,
    FileMissing,
    NoWorker,
    RejectedError,
    SessionNotFound,
    SessionWorkerGone,
)
from sandlot.sessions import Sessions
from sandlot.sessions_remote import RemoteSessionFiles, raise_error
from sandlot.worker_files import _perform, error_header
from sandlot.worker_sessions import SessionBoxes
from tests.nodes import RedisServer, running_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis", append_only=False) as server:
        yield server


@pytest.fixture
async def brokers(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """An API node's broker and a worker's (which says its presence but never answers file requests)."""
    api = RedisBroker(redis_server.url, max_queued=4)
    worker = RedisBroker(redis_server.url, max_queued=4, consumer_name="silent")
    yield api, worker
    await api.close()
    await worker.close()


async def test_a_session_no_live_worker_can_take_is_no_worker(brokers: tuple[RedisBroker, RedisBroker]) -> None:
    api, _ = brokers
    session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
    with pytest.raises(NoWorker, match="no live worker serves isolation 'jail'"):
        await RemoteSessionFiles(api.session_files, "a", session_id, timeout_s=5.0).listing()


async def test_another_tenants_or_an_ended_session_is_not_found(brokers: tuple[RedisBroker, RedisBroker]) -> None:
    api, _ = brokers
    session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
    with pytest.raises(SessionNotFound):
        await RemoteSessionFiles(api.session_files, "b", session_id, timeout_s=5.0).read("x", 10)
    await api.sessions.end("a", session_id)
    with pytest.raises(SessionNotFound):
        await RemoteSessionFiles(api.session_files, "a", session_id, timeout_s=5.0).write("x", b"1")


async def test_a_silent_worker_is_503_after_the_timeout_never_a_hang(brokers: tuple[RedisBroker, RedisBroker]) -> None:
    api, worker = brokers
    await worker.presence([], ["jail"])  # live, serving jail: the request goes to it, which never reads it
    session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
    files = RemoteSessionFiles(api.session_files, "a", session_id, timeout_s=0.5)
    with pytest.raises(SessionWorkerGone, match=r"did not answer within 0\.5 s"):
        await files.write("data.txt", b"x")
    request = await worker.session_files.next_request(1.0)  # it was sent there, and nothing answered
    assert request is not None and request.header["op"] == "write" and request.data == b"x"
    assert request.expired  # a worker that reads it this late drops it


@pytest.mark.parametrize(
    "error",
    [
        FileMissing.at("files.name", "'a.txt' does not exist"),
        FileBusy.at("files.name", "'a' was recreated by the running program; retry"),
        RejectedError.at("files.name", "'link' is a symbolic link; refused"),
        SessionNotFound("session 'x' not found or expired", field="session_id"),
    ],
)
def test_a_refusal_is_raised_again_as_its_class_and_renamed_like_a_local_one(error: RejectedError) -> None:
    with pytest.raises(type(error)) as raised:
        raise_error(error_header(error))
    assert type(raised.value) is type(error)
    assert (str(raised.value), raised.value.field) == (str(error), error.field)
    renamed = raised.value.for_field("path")  # what the doors do with a local refusal
    assert (str(renamed), renamed.field) == (str(error.for_field("path")), error.for_field("path").field)


def test_a_full_workdir_a_full_worker_and_a_failure_keep_their_meaning() -> None:
    with pytest.raises(OSError) as full:
        raise_error(error_header(OSError(errno.EDQUOT, "quota")))
    assert full.value.errno == errno.EDQUOT  # the doors' NO_SPACE_ERRNOS: 507 / a tool error
    with pytest.raises(AtCapacity, match="session limit"):
        raise_error(error_header(AtCapacity("pool", "this worker's session limit (2) is reached")))
    with pytest.raises(SessionWorkerGone, match="failed"):
        raise_error(error_header(ValueError("a bug")))  # never shown as it is
    raise_error({})  # a success raises nothing


async def test_placing_a_session_moves_on_from_a_worker_at_its_session_limit(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file request of a session asks a live worker; one that answers "full" is skipped."""
    api = RedisBroker(redis_server.url, max_queued=4)
    full, roomy = (RedisBroker(redis_server.url, max_queued=4, consumer_name=name) for name in ("a-full", "b-roomy"))
    try:
        for worker in (full, roomy):
            await worker.presence([], ["jail"])
        # The full worker is picked first (the pick is random), so the request must move on to be answered.
        monkeypatch.setattr("sandlot.sessions_remote.random.choice", lambda inboxes: sorted(inboxes)[0])
        session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
        asked: list[str] = []

        async def answer(worker: RedisBroker, header: dict[str, object]) -> None:
            request = await worker.session_files.next_request(5.0)
            assert request is not None
            asked.append(worker.consumer_name)
            await worker.session_files.reply(request, header)

        answers = asyncio.gather(
            answer(full, error_header(AtCapacity("pool", "this worker's session limit (1) is reached"))),
            answer(roomy, {"files": [["a.txt", 1]], "truncated": False}),
        )
        listing = await RemoteSessionFiles(api.session_files, "a", session_id, timeout_s=5.0).listing()
        await answers
        assert (asked, [(f.path, f.size) for f in listing.files]) == (["a-full", "b-roomy"], [("a.txt", 1)])
    finally:
        for broker in (api, full, roomy):
            await broker.close()


# ------------------------------------------------- GET /api/v1/sessions/{id}: Sessions.describe, distributed


def _sessions(api: RedisBroker, timeout_s: float = 5.0) -> Sessions:
    """An API node's sessions (no pool of its own), as ``Service`` makes them."""
    return Sessions(
        {}, api.sessions, session_ttl_s=60.0, session_idle_s=60.0, remote=api.session_files, remote_timeout_s=timeout_s
    )


async def test_a_never_used_session_is_described_from_redis_alone_and_placed_nowhere(
    brokers: tuple[RedisBroker, RedisBroker], redis_server: RedisServer
) -> None:
    api, worker = brokers
    await worker.presence([], ["jail"])  # a live worker that a placing request would go to
    before = time.time()
    idle = await api.sessions.create("a", SessionRecord("jail"), ttl_s=3600.0, idle_s=600.0)  # idle deadline first
    short = await api.sessions.create("a", SessionRecord("jail"), ttl_s=300.0, idle_s=600.0)  # absolute one first
    after = time.time()
    state = await _sessions(api).describe("a", idle)
    assert (state.id, state.isolation, state.environment) == (idle, "jail", "")
    assert before - 1 <= state.created_at <= after + 1, (before, state, after)  # Redis's clock: same host
    assert before + 599 <= state.expires_at <= time.time() + 601, state
    assert (state.busy, state.bytes_used, state.files_used) == (False, 0, 0)  # no workdir yet: nothing in it
    assert (state.disk_limit_bytes, state.files_limit) == (None, None)  # the quota of a worker not chosen yet
    assert before + 299 <= (await _sessions(api).describe("a", short)).expires_at <= after + 301
    # The idle deadline is the key's TTL, which each use re-arms: the answer follows it.
    with redis.Redis.from_url(redis_server.url) as rdb:
        rdb.pexpire(Keys().session("a", idle), 100_000)
    assert before + 99 <= (await _sessions(api).describe("a", idle)).expires_at <= time.time() + 101
    # A read places nothing: no worker was asked, and no worker owns the session.
    assert await worker.session_files.next_request(0.1) is None
    assert await api.session_files.target("a", idle) == Target("pick", [Keys().inbox(worker.consumer_name)])


async def test_the_holding_workers_figures_are_asked_and_its_silence_or_death_leaves_them_null(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    api, worker = brokers
    await worker.presence([], ["jail"])
    session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
    await worker.sessions.bind("a", session_id, have_box=False, room=True)  # its first run placed it there
    figures = {"busy": True, "bytes_used": 4096, "files_used": 3, "disk_limit_bytes": 65536, "files_limit": 99}

    async def answer(header: dict[str, object]) -> dict[str, object]:
        request = await worker.session_files.next_request(5.0)
        assert request is not None
        await worker.session_files.reply(request, header)
        return request.header

    asked, state = await asyncio.gather(answer({"held": True, **figures}), _sessions(api).describe("a", session_id))
    assert (asked["op"], asked["tenant"], asked["session"]) == ("stat", "a", session_id)
    assert {name: getattr(state, name) for name in figures} == figures
    # The owner without the workdir (lost, being opened), silent, or taken for dead: what Redis knows, never a 503.
    _, state = await asyncio.gather(answer({"held": False}), _sessions(api).describe("a", session_id))
    assert (state.isolation, state.busy, state.bytes_used, state.disk_limit_bytes) == ("jail", None, None, None)
    silent = await _sessions(api, timeout_s=0.5).describe("a", session_id)
    assert (silent.created_at, silent.busy, silent.files_used) == (state.created_at, None, None)
    assert (await worker.session_files.next_request(1.0)) is not None  # it was asked, and said nothing
    await worker.leave()  # no longer a live owner: nobody to ask
    gone = await _sessions(api, timeout_s=30.0).describe("a", session_id)
    assert (gone.expires_at, gone.bytes_used, gone.files_limit) == (state.expires_at, None, None)
    assert await worker.session_files.next_request(0.1) is None


async def test_describing_another_tenants_or_an_ended_session_is_not_found(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    api, _ = brokers
    session_id = await api.sessions.create("a", SessionRecord("jail"), ttl_s=60.0, idle_s=60.0)
    with pytest.raises(SessionNotFound):
        await _sessions(api).describe("b", session_id)
    await api.sessions.end("a", session_id)
    with pytest.raises(SessionNotFound):
        await _sessions(api).describe("a", session_id)


class _Untouchable:
    """A broker or SessionBoxes that fails the test if anything of it is used but a lookup of what is held."""

    def stateful_session(self, tenant: str, session_id: str) -> None:
        return None  # no stateful session here either (a lookup: it binds nothing)

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a stat used {name!r}: it must bind nothing")


async def test_a_workers_stat_binds_nothing_and_says_when_it_holds_no_workdir() -> None:
    request = FileRequest({"tenant": "a", "session": "s", "op": "stat", "reply": "r"}, b"")
    untouchable = _Untouchable()
    answer = await _perform(cast(Distributed, untouchable), cast(SessionBoxes, untouchable), {}, request)
    assert answer == ({"held": False}, b"")
