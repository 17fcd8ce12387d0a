"""A session's state in the distributed mode: 2 API nodes and 2 workers, real Redis and real workdirs.

``GET /api/v1/sessions/{id}`` on any API node answers every figure the embedded
mode gives: its times from the session's Redis hash, its workdir's figures from
the worker holding it (``sandlot.sessions_remote`` -> ``sandlot.worker_files``,
op ``stat``). A never-used session is placed nowhere by being described; with
its worker killed the answer keeps what Redis knows, the worker's figures null.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from sandlot.broker.keys import Keys
from sandlot.config import ServerSettings
from tests.distributed.test_distributed_sessions import _owner, _run
from tests.nodes import Cluster, NodeLayout
from tests.test_serve_process import execution

LAYOUT = NodeLayout(
    name="sstate",
    uid_base=1_030_000_000,
    nodes=range(1, 5),
    max_boxes=16,
    drain_deadline_s=10.0,
    settings={"api_keys": "key-a:team-a,key-b:team-b"},
)
A, B = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
SESSION_DISK_BYTES = 2 * 1024 * 1024  # the workers' quotas, apart from the defaults, so the answer is theirs
SESSION_INODES = 500
WRITTEN = 100_000
PAGE = 4096  # tmpfs counts whole pages
WORKER_FIGURES = ("busy", "bytes_used", "files_used", "disk_limit_bytes", "files_limit")
# Runs until the test uploads "go": a run under way for as long as the test needs one, with no sleep in the test.
WAIT_FOR_GO = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.01)\nprint('went')\n"


def _state(client: httpx.Client, session_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/sessions/{session_id}", headers=A)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def _once_busy_is(client: httpx.Client, session_id: str, busy: bool) -> dict[str, Any]:
    """The state once ``busy`` says so: bounded, never a fixed wait. A run is busy from its job's arrival on
    the worker until the box that ran it is given back, which follows the result (off the client's path)."""
    deadline = time.monotonic() + 60.0
    while (state := _state(client, session_id))["busy"] is not busy:
        assert time.monotonic() < deadline, state
    return state


@pytest.mark.timeout(240)
def test_a_sessions_state_has_every_figure_on_any_api_node(cluster: Cluster, rdb: redis.Redis) -> None:
    apis = [cluster.api(1), cluster.api(2)]
    quotas = {"session_disk_bytes": SESSION_DISK_BYTES, "session_inodes": SESSION_INODES}
    workers = {f"node-{n}": cluster.worker(n, pool_size=1, worker_name=f"node-{n}", **quotas) for n in (3, 4)}
    cluster.start(*apis, *workers.values())
    idle_s = ServerSettings().session_idle_s  # the API nodes' default: the idle deadline comes first
    with httpx.Client(base_url=apis[0].url, timeout=60.0) as one, httpx.Client(base_url=apis[1].url) as two:
        before = time.time()
        made = one.post("/api/v1/sessions", headers=A)
        assert made.status_code == 201, made.text
        after = time.time()
        sid = made.json()["session_id"]

        # Never used: every figure, from Redis alone, on the other node; describing it places it nowhere.
        fresh = _state(two, sid)
        assert before - 1 <= fresh["created_at"] <= after + 1, (before, fresh, after)
        assert fresh["created_at"] + idle_s - 1 <= fresh["expires_at"] <= fresh["created_at"] + idle_s + 0.01, fresh
        assert {k: fresh[k] for k in ("session_id", "isolation", "environment", *WORKER_FIGURES)} == {
            "session_id": sid,
            "isolation": "jail",
            "environment": "",
            "busy": False,
            "bytes_used": 0,
            "files_used": 0,
            "disk_limit_bytes": None,  # no worker chose its quota yet
            "files_limit": None,
        }
        assert rdb.hget(Keys().session("team-a", sid), "owner") == b""

        # A run on node 1 writes a file: node 2 tells its bytes and files, and the holding worker's quotas.
        wrote = _run(one, sid, f"open('data.bin', 'wb').write(b'x' * {WRITTEN})\n")
        assert wrote["status"] == "ok", wrote
        owner = _owner(rdb, sid)
        used = _once_busy_is(two, sid, False)
        assert WRITTEN <= used["bytes_used"] <= WRITTEN + 4 * PAGE, used  # data.bin, main.py
        assert used["files_used"] == 3, used  # the workdir, main.py, data.bin
        assert (used["disk_limit_bytes"], used["files_limit"]) == (SESSION_DISK_BYTES, SESSION_INODES), used
        assert used["created_at"] == fresh["created_at"]
        assert used["expires_at"] >= fresh["expires_at"], (fresh, used)  # the run restarted its idle period
        assert _state(one, sid) | {"expires_at": 0} == used | {"expires_at": 0}  # the same on either node

        # A run under way is busy; over, it is not, and what it removed is no longer counted.
        with ThreadPoolExecutor(1) as runner, httpx.Client(base_url=apis[1].url, timeout=120.0) as third:
            waiting = execution(WAIT_FOR_GO + "os.remove('data.bin')\n", {"wall_time_limit": 120})
            running = runner.submit(third.post, "/api/v1/run", json=waiting | {"session_id": sid}, headers=A)
            busy = _once_busy_is(one, sid, True)
            assert busy["bytes_used"] >= WRITTEN, busy
            put = two.put(f"/api/v1/sessions/{sid}/files/go", content=b"", headers=A)
            assert put.status_code == 201, put.text
            went = running.result(120.0)
        assert (went.status_code, went.json()["stdout"]) == (200, "went\n"), went.text
        done = _once_busy_is(two, sid, False)
        assert done["files_used"] == 3, done  # the workdir, main.py, go
        assert done["bytes_used"] < WRITTEN, done

        # Another tenant's id is 404 on either node.
        for client in (one, two):
            other = client.get(f"/api/v1/sessions/{sid}", headers=B)
            assert (other.status_code, other.json()["error"]["code"]) == (404, "not_found"), other.text

        # The holding worker killed: what Redis knows, the worker's figures null; never a 503 for a state.
        workers[owner].proc.kill()
        assert workers[owner].proc.wait(10.0) == -signal.SIGKILL
        lost = _state(one, sid)  # at most the presence TTL: the dead worker is asked until taken for dead
        assert {k: lost[k] for k in WORKER_FIGURES} == dict.fromkeys(WORKER_FIGURES), lost
        assert (lost["created_at"], lost["isolation"]) == (fresh["created_at"], "jail"), lost
        assert _owner(rdb, sid) == owner  # describing it placed it on no other worker

        assert one.delete(f"/api/v1/sessions/{sid}", headers=A).status_code == 204
        assert two.get(f"/api/v1/sessions/{sid}", headers=A).status_code == 404
    for node in cluster.nodes:
        node.stop()
    LAYOUT.sweep()  # the killed worker could not release its boxes
    assert LAYOUT.leftovers() == []
