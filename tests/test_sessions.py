"""The doors' sessions: the pool's own in embedded mode, the broker's directory in distributed mode.

The directory here is a small fake (the Redis one has its own tests in
``test_broker_redis`` and ``test_distributed``): what is checked is which side
``Sessions`` asks, and that the file operations refuse rather than reach a box
this process does not hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandlot.broker import SessionBinding, SessionRecord, SessionSummary
from sandlot.errors import IsolationUnavailable, RejectedError, SessionFilesUnavailable, SessionNotFound
from sandlot.pool import BoxPool
from sandlot.sandbox import Sandbox
from sandlot.sessions import Sessions


class _Directory:
    """A SessionDirectory in a dict: (tenant, id) -> (ttl_s, idle_s, isolation)."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], tuple[float, float, str]] = {}

    async def create(self, tenant: str, record: SessionRecord, *, ttl_s: float, idle_s: float) -> str:
        session_id = f"s{len(self.sessions)}"
        self.sessions[(tenant, session_id)] = (ttl_s, idle_s, record.isolation)
        return session_id

    async def isolation(self, tenant: str, session_id: str) -> str | None:
        found = self.sessions.get((tenant, session_id))
        return None if found is None else found[2]

    async def record(self, tenant: str, session_id: str) -> SessionRecord | None:
        found = self.sessions.get((tenant, session_id))
        return None if found is None else SessionRecord(found[2])

    async def room(self, level: str, *, stateful: bool) -> tuple[int, int]:
        return (0, 0)  # no live worker: a session waits for one

    async def summary(self, tenant: str, session_id: str) -> SessionSummary | None:
        found = self.sessions.get((tenant, session_id))
        return None if found is None else SessionSummary(found[2], "", 0.0, found[0], placed=False)

    async def end(self, tenant: str, session_id: str) -> bool:
        return self.sessions.pop((tenant, session_id), None) is not None

    async def exists(self, tenant: str, session_id: str) -> bool:
        return (tenant, session_id) in self.sessions

    async def bind(
        self, tenant: str, session_id: str, *, have_box: bool, room: bool, stateful: bool = False
    ) -> SessionBinding:
        raise AssertionError("doors never bind: workers do")


@pytest.fixture
async def pool(sandbox: Sandbox) -> AsyncIterator[BoxPool]:
    pool = BoxPool(sandbox, 2, max_waiting=4)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def test_embedded_sessions_are_the_pools(pool: BoxPool) -> None:
    problems = {"gvisor": "the gVisor pool is turned off"}
    sessions = Sessions({"jail": pool}, None, session_ttl_s=60.0, session_idle_s=30.0, problems=problems)
    assert not sessions.distributed
    created = await sessions.create("a", "jail")
    assert (created.isolation, pool.get_session("a", created.id).id) == ("jail", created.id)
    assert 0 < created.expires_in_s <= pool.sessions.ttl_s
    assert await sessions.level_for_run("a", created.id, "") == "jail"
    assert await sessions.level_for_run("a", created.id, "jail") == "jail"
    with pytest.raises(RejectedError, match="weaker than the requested 'gvisor'"):
        await sessions.level_for_run("a", created.id, "gvisor")  # never run weaker than asked
    with pytest.raises(SessionNotFound):
        await sessions.level_for_run("b", created.id, "")  # another tenant's id finds nothing
    with pytest.raises(IsolationUnavailable, match="the gVisor pool is turned off"):
        await sessions.create("a", "gvisor")
    assert await sessions.exists("a", created.id)
    assert sessions.local("a", created.id) is pool.get_session("a", created.id)
    await sessions.end("a", created.id)
    assert not await sessions.exists("a", created.id)
    with pytest.raises(SessionNotFound):
        await sessions.end("a", created.id)


async def test_a_file_operation_on_a_session_ended_meanwhile_is_not_found(pool: BoxPool) -> None:
    """A route finds the session, reads the body, then writes: an end in between is a 404, never an fd reused."""
    sessions = Sessions({"jail": pool}, None, session_ttl_s=60.0, session_idle_s=30.0)
    created = await sessions.create("a", "jail")
    files = sessions.files("a", created.id)
    await files.write("a.txt", b"x")
    assert await files.read("a.txt", 10) == b"x"
    await sessions.end("a", created.id)
    with pytest.raises(SessionNotFound):
        await files.write("b.txt", b"y")
    with pytest.raises(SessionNotFound):
        await files.listing()


async def test_distributed_sessions_live_in_the_directory_and_refuse_file_operations(pool: BoxPool) -> None:
    directory = _Directory()
    sessions = Sessions({"jail": pool}, directory, session_ttl_s=60.0, session_idle_s=30.0)
    assert sessions.distributed
    created = await sessions.create("a", "jail")
    assert (created.expires_in_s, directory.sessions[("a", created.id)]) == (60.0, (60.0, 30.0, "jail"))
    assert pool.session_count == 0  # no box is pinned here: a worker opens it with the first run
    # A level no pool here has: the workers' pools decide, the directory records it.
    strong = await sessions.create("a", "gvisor")
    assert (strong.isolation, directory.sessions[("a", strong.id)][2]) == ("gvisor", "gvisor")
    assert await sessions.level_for_run("a", strong.id, "") == "gvisor"  # a run goes at the session's level
    assert await sessions.level_for_run("a", strong.id, "jail") == "gvisor"  # stronger than asked is fine
    with pytest.raises(RejectedError, match="weaker than the requested 'gvisor'"):
        await sessions.level_for_run("a", created.id, "gvisor")
    with pytest.raises(SessionNotFound):
        await sessions.level_for_run("a", "unknown", "")
    assert await sessions.exists("a", created.id)
    assert not await sessions.exists("b", created.id)
    with pytest.raises(SessionFilesUnavailable) as refused:
        sessions.local("a", created.id)
    assert refused.value.field == "session_id"
    await sessions.end("a", created.id)
    with pytest.raises(SessionNotFound):
        await sessions.end("a", created.id)
