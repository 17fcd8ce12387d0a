"""File sessions that pin no box, through a real server: many more sessions than boxes, their state, quota, expiry.

Every request goes over loopback HTTP to uvicorn serving the real app; runs are
real programs in real boxes.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

from sandlot.api.http.app import create_app
from sandlot.config import MIB
from tests.api.http.test_http import live_server, running_service, wait_until
from tests.environments.conftest import py_env
from tests.environments.test_environments_run import MARKER

__all__ = ["py_env"]  # a fixture, used by name

SESSIONS = 1_000
POOL = 4
PARALLEL = 32  # clients at once: under max_queued, so none is refused


@pytest.mark.timeout(600)
async def test_a_thousand_sessions_on_a_pool_of_four_each_see_only_their_own_files() -> None:
    async with (
        running_service(pool_size=POOL, max_sessions=SESSIONS, max_queued=64) as service,
        live_server(create_app(service)) as base,
        httpx.AsyncClient(base_url=f"http://{base}", timeout=120) as client,
    ):
        gate = asyncio.Semaphore(PARALLEL)

        async def one(n: int) -> tuple[str, str]:
            async with gate:
                created = await client.post("/api/v1/sessions")
                assert created.status_code == 201, created.text
                sid = created.json()["session_id"]
                run = {"language": "bash", "code": f"echo {n} > mine.txt; ls -A | grep -v main.sh", "session_id": sid}
                result = (await client.post("/api/v1/run", json=run)).json()
                assert result["status"] == "ok", result
                return sid, result["stdout"]

        made = await asyncio.gather(*(one(n) for n in range(SESSIONS)))
        assert service.pool.session_count == SESSIONS
        assert {listing for _, listing in made} == {"mine.txt\n"}  # none saw another's file

        async def check(n: int, sid: str) -> None:
            async with gate:
                got = await client.get(f"/api/v1/sessions/{sid}/files/mine.txt")
                assert got.status_code == 200, got.text
                assert got.content == f"{n}\n".encode()

        await asyncio.gather(*(check(n, sid) for n, (sid, _) in enumerate(made)))
        assert service.pool.busy == 0


async def test_get_session_answers_its_state() -> None:
    async with (
        running_service() as service,
        live_server(create_app(service)) as base,
        httpx.AsyncClient(base_url=f"http://{base}", timeout=60) as client,
    ):
        before = time.time()
        sid = (await client.post("/api/v1/sessions")).json()["session_id"]
        assert (await client.put(f"/api/v1/sessions/{sid}/files/a.txt", content=b"x" * 5000)).status_code == 201
        state = await client.get(f"/api/v1/sessions/{sid}")
        assert state.status_code == 200, state.text
        body = state.json()
        assert body["session_id"] == sid
        assert body["isolation"] == "jail"
        assert body["environment"] == ""
        assert before - 1 <= body["created_at"] <= time.time() + 1
        assert body["created_at"] < body["expires_at"] <= body["created_at"] + service.server.session_ttl_s + 1
        assert body["busy"] is False
        assert body["bytes_used"] >= 5000
        assert body["files_used"] == 2  # the workdir and a.txt
        assert body["disk_limit_bytes"] == service.server.session_disk_bytes
        assert body["files_limit"] == service.server.session_inodes
        assert (await client.get("/api/v1/sessions/not-a-session")).status_code == 404
        assert (await client.delete(f"/api/v1/sessions/{sid}")).status_code == 204
        assert (await client.get(f"/api/v1/sessions/{sid}")).status_code == 404


async def test_a_full_workdir_is_507_to_an_upload_and_enospc_to_a_program() -> None:
    quota = 1 * MIB
    async with (
        running_service(session_disk_bytes=quota, session_inodes=64) as service,
        live_server(create_app(service)) as base,
        httpx.AsyncClient(base_url=f"http://{base}", timeout=60) as client,
    ):
        sid = (await client.post("/api/v1/sessions")).json()["session_id"]
        full = await client.put(f"/api/v1/sessions/{sid}/files/big", content=b"x" * (quota + 1))
        assert full.status_code == 507, full.text
        assert full.json()["error"]["code"] == "workspace_full"
        assert (await client.get(f"/api/v1/sessions/{sid}/files")).json()["files"] == []  # nothing half-written
        run = {"language": "bash", "code": "for i in $(seq 100); do : > f$i || exit 9; done", "session_id": sid}
        result = (await client.post("/api/v1/run", json=run)).json()
        assert result["exit_code"] == 9, result  # the 64-inode quota: ENOSPC to the program
        assert "No space left on device" in result["stderr"]


async def test_expiry_frees_a_sessions_disk() -> None:
    async with running_service(session_ttl_s=1.0, session_idle_s=0.5) as service:
        info = await service.create_session("public")
        session = service.pool.get_session("public", info.id)
        await service.sessions.files("public", info.id).write("data", b"y" * 100_000)
        assert session.usage().bytes_used >= 100_000
        await wait_until(lambda: service.pool.session_count == 0 and session.workdir.closed)
        with pytest.raises(OSError):  # its last reference closed: the tmpfs and its bytes are gone
            os.fstat(session.workdir.fd)


async def test_a_session_created_in_an_environment_runs_there(py_env: str) -> None:
    async with (
        running_service() as service,
        live_server(create_app(service)) as base,
        httpx.AsyncClient(base_url=f"http://{base}", timeout=60) as client,
    ):
        unknown = await client.post("/api/v1/sessions", json={"environment": "no-such-env"})
        assert unknown.status_code == 404, unknown.text
        created = await client.post("/api/v1/sessions", json={"environment": py_env})
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        assert (await client.get(f"/api/v1/sessions/{sid}")).json()["environment"] == py_env
        code = "print(open('/etc/marker').read(), end='')\nopen('kept', 'w').write('x')"
        result = (await client.post("/api/v1/run", json={"language": "python", "code": code, "session_id": sid})).json()
        assert result["status"] == "ok", result
        assert result["stdout"] == MARKER  # the image's file: the run was in the session's environment
        assert (await client.get(f"/api/v1/sessions/{sid}/files/kept")).content == b"x"
