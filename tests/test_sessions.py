"""The doors' sessions: the pool's own in embedded mode, the broker's directory in distributed mode.

The directory here is a small fake (the Redis one has its own tests in
``test_broker_redis`` and ``test_distributed``): what is checked is which side
``Sessions`` asks, and that the file operations refuse rather than reach a box
this process does not hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandlot.broker import SessionBinding
from sandlot.pool import BoxPool, SessionNotFound
from sandlot.sandbox import Sandbox
from sandlot.sessions import SessionFilesUnavailable, Sessions


class _Directory:
    """A SessionDirectory in a dict: (tenant, id) -> (ttl_s, idle_s)."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], tuple[float, float]] = {}

    async def create(self, tenant: str, *, ttl_s: float, idle_s: float) -> str:
        session_id = f"s{len(self.sessions)}"
        self.sessions[(tenant, session_id)] = (ttl_s, idle_s)
        return session_id

    async def end(self, tenant: str, session_id: str) -> bool:
        return self.sessions.pop((tenant, session_id), None) is not None

    async def exists(self, tenant: str, session_id: str) -> bool:
        return (tenant, session_id) in self.sessions

    async def bind(self, tenant: str, session_id: str, *, have_box: bool, room: bool) -> SessionBinding:
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
    sessions = Sessions(pool, None, session_ttl_s=60.0, session_idle_s=30.0)
    assert not sessions.distributed
    created = await sessions.create("a")
    assert pool.get_session("a", created.id).id == created.id
    assert 0 < created.expires_in_s <= pool.session_ttl_s
    sessions.check("a", created.id)
    with pytest.raises(SessionNotFound):
        sessions.check("b", created.id)
    assert await sessions.exists("a", created.id)
    assert sessions.local("a", created.id).box is pool.get_session("a", created.id).box
    await sessions.end("a", created.id)
    assert not await sessions.exists("a", created.id)
    with pytest.raises(SessionNotFound):
        await sessions.end("a", created.id)


async def test_distributed_sessions_live_in_the_directory_and_refuse_file_operations(pool: BoxPool) -> None:
    directory = _Directory()
    sessions = Sessions(pool, directory, session_ttl_s=60.0, session_idle_s=30.0)
    assert sessions.distributed
    created = await sessions.create("a")
    assert (created.expires_in_s, directory.sessions[("a", created.id)]) == (60.0, (60.0, 30.0))
    assert pool.session_count == 0  # no box is pinned here: a worker opens it with the first run
    sessions.check("a", "unknown")  # no I/O here: the broker's submit refuses unknown sessions
    assert await sessions.exists("a", created.id)
    assert not await sessions.exists("b", created.id)
    with pytest.raises(SessionFilesUnavailable) as refused:
        sessions.local("a", created.id)
    assert refused.value.field == "session_id"
    await sessions.end("a", created.id)
    with pytest.raises(SessionNotFound):
        await sessions.end("a", created.id)
