"""Sessions in the distributed mode: 2 API nodes and 2 workers, real Redis and real boxes.

The file routes of any API node reach the worker holding the session's
workdir (``sandlot.sessions_remote`` -> ``sandlot.worker_files``), whatever
node the session was made on and wherever its runs went. Killed, that worker
takes the files with it: the requests say so (503, never a hang) and the
session goes on with an empty workdir. A stateful session's cells reach the
worker holding its interpreter the same way, and start a fresh one elsewhere
when that worker dies. A worker at its session limit gives a new session to
one with room; with room nowhere, creation is a 429 and a run is refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sandlot.broker.keys import Keys
from sandlot.models import NOTICE_SESSION_RESET
from tests.api.mcp.test_mcp import _http_client, _structured
from tests.nodes import Cluster, NodeLayout, RedisServer
from tests.test_serve_process import execution, wait_until

LAYOUT = NodeLayout(
    name="sess",
    uid_base=1_020_000_000,
    nodes=range(1, 5),
    max_boxes=16,
    drain_deadline_s=10.0,
    settings={"api_keys": "key-a:team-a,key-b:team-b"},
)
A, B = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
SESSION_DISK_BYTES = 1024 * 1024  # the workers' session workdirs: a 2 MiB upload (the body cap) overfills one
RESET_TIMEOUT_S = 60.0  # a killed worker's presence expires (6 s at the default TTL), then its sessions move

# Reads what was uploaded, writes a file, and plants links to a host file and a host directory.
STEP = """import os
print(open('in/data.txt').read().upper(), end='')
open('out.txt', 'w').write('from the run\\n')
os.symlink('/etc/passwd', 'link')
os.symlink('/etc', 'up')
"""


def _run(client: httpx.Client, session_id: str, code: str) -> dict[str, Any]:
    response = client.post("/api/v1/run", json=execution(code) | {"session_id": session_id}, headers=A)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _owner(rdb: redis.Redis, session_id: str) -> str:
    owner = rdb.hget(Keys().session("team-a", session_id), "owner")
    assert isinstance(owner, bytes), owner
    return owner.decode().rsplit(":", 1)[-1]  # "" while no worker holds it


def _listing(client: httpx.Client, session_id: str) -> dict[str, int]:
    response = client.get(f"/api/v1/sessions/{session_id}/files", headers=A)
    assert response.status_code == 200, response.text
    return {entry["path"]: entry["size"] for entry in response.json()["files"]}


async def _through_mcp(url: str, session_id: str) -> tuple[dict[str, Any], str, set[str]]:
    """write_file, read_file and list_files in the session, over MCP: (written, read back, paths listed)."""
    async with _http_client(url, Authorization=A["Authorization"]) as client:
        in_session = {"session_id": session_id}
        written = _structured(
            await client.call_tool("write_file", {**in_session, "path": "mcp.txt", "content": "via\n"})
        )
        read = _structured(await client.call_tool("read_file", {**in_session, "path": "mcp.txt"}))
        listed = _structured(await client.call_tool("list_files", in_session))
    return written, read["content"], {row["path"] for row in listed["files"]}


@pytest.mark.timeout(240)
def test_session_files_through_any_api_node_reach_the_worker_holding_them(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    apis = [cluster.api(1), cluster.api(2)]
    workers = {
        f"node-{n}": cluster.worker(n, pool_size=1, worker_name=f"node-{n}", session_disk_bytes=SESSION_DISK_BYTES)
        for n in (3, 4)
    }
    cluster.start(*apis, *workers.values())
    rdb = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        with httpx.Client(base_url=apis[0].url, timeout=60.0) as one, httpx.Client(base_url=apis[1].url) as two:
            made = one.post("/api/v1/sessions", headers=A)
            assert made.status_code == 201, made.text
            sid = made.json()["session_id"]
            files = f"/api/v1/sessions/{sid}/files"

            # Before any run: the upload picks a worker, as a first run would, and the session stays there.
            put = one.put(f"{files}/in/data.txt", content=b"uploaded through node 1\n", headers=A)
            assert (put.status_code, put.json()) == (201, {"path": "in/data.txt", "size": 24}), put.text
            owner = _owner(rdb, sid)
            result = _run(two, sid, STEP)
            assert (result["status"], result["stdout"]) == ("ok", "UPLOADED THROUGH NODE 1\n"), result
            assert _owner(rdb, sid) == owner

            got = two.get(f"{files}/out.txt", headers=A)
            assert (got.status_code, got.content) == (200, b"from the run\n"), got.text
            listed = _listing(one, sid)  # the link is no regular file; main.py is the run's source
            assert listed.keys() == {"in/data.txt", "out.txt", "main.py"}, listed
            assert (listed["in/data.txt"], listed["out.txt"]) == (24, 13), listed

            # The worker's answers keep their meaning: a planted link refused, a missing file 404.
            link = two.get(f"{files}/link", headers=A)
            assert (link.status_code, link.json()["error"]["field"]) == (400, "path"), link.text
            assert "link" in link.json()["error"]["message"], link.text
            through = one.put(f"{files}/up/planted.txt", content=b"x", headers=A)
            assert (through.status_code, through.json()["error"]["field"]) == (400, "path"), through.text
            assert not os.path.lexists("/etc/planted.txt")
            passwd = Path("/etc/passwd").read_bytes()
            replaced = one.put(f"{files}/link", content=b"x", headers=A)  # the link replaced, never followed
            assert replaced.status_code == 201, replaced.text
            assert Path("/etc/passwd").read_bytes() == passwd
            assert two.get(f"{files}/link", headers=A).content == b"x"
            missing = one.get(f"{files}/nothing.txt", headers=A)
            assert missing.status_code == 404, missing.text
            full = two.put(f"{files}/big.bin", content=bytes(SESSION_DISK_BYTES + 4096), headers=A)
            assert (full.status_code, full.json()["error"]["code"]) == (507, "workspace_full"), full.text
            assert one.get(f"{files}/big.bin", headers=A).status_code == 404  # nothing half-written left

            # Another tenant's id finds nothing, on either node.
            for client in (one, two):
                assert client.get(files, headers=B).status_code == 404
                assert client.get(f"{files}/out.txt", headers=B).status_code == 404
                assert client.put(f"{files}/x.txt", content=b"x", headers=B).status_code == 404
            assert _listing(two, sid) == listed | {"link": 1}

            # The MCP file tools go the same way.
            mcp = asyncio.run(_through_mcp(apis[1].url + "/mcp", sid))
            assert mcp == (
                {"path": "mcp.txt", "size": 4},
                "via\n",
                {"in/data.txt", "out.txt", "main.py", "link", "mcp.txt"},
            )
            assert one.get(f"{files}/mcp.txt", headers=A).content == b"via\n"

            # The holding worker killed: its files are gone. Requests say so (503, bounded by the presence
            # TTL), and once it is taken for dead the session goes on in an empty workdir on the other worker.
            workers[owner].proc.kill()
            assert workers[owner].proc.wait(10.0) == -signal.SIGKILL
            answers: list[httpx.Response] = []
            deadline = time.monotonic() + RESET_TIMEOUT_S
            while not answers or answers[-1].status_code == 503:
                assert time.monotonic() < deadline, [a.text for a in answers]
                answers.append(one.get(files, headers=A))  # each bounded: never a hang
            *gone, back = answers
            for answer in gone:  # the holder did not answer in time, or (taken for dead) its files were lost
                message = answer.json()["error"]["message"]
                assert "did not answer within 6 s" in message or "lost with the worker" in message, message
            assert back.status_code == 200 and back.json()["files"] == [], back.text
            assert any("lost with the worker" in a.json()["error"]["message"] for a in gone), [a.text for a in gone]
            (survivor,) = set(workers) - {owner}
            assert _owner(rdb, sid) == survivor
            after = _run(two, sid, "import os\nprint(sorted(set(os.listdir('.')) - {'main.py'}))\n")
            assert (after["status"], after["stdout"], after["message"]) == ("ok", "[]\n", ""), after
    finally:
        rdb.close()
    for node in cluster.nodes:
        node.stop()
    LAYOUT.sweep()  # the killed worker could not release its boxes
    assert LAYOUT.leftovers() == []


def _cell(client: httpx.Client, session_id: str, code: str, headers: dict[str, str] = A) -> dict[str, Any]:
    response = client.post("/api/v1/run", json={"session_id": session_id, "code": code}, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _stateful(client: httpx.Client) -> str:
    made = client.post("/api/v1/sessions", json={"stateful": True, "language": "python"}, headers=A)
    assert made.status_code == 201, made.text
    assert (made.json()["stateful"], made.json()["language"]) == (True, "python"), made.text
    return str(made.json()["session_id"])


async def _notebook_through_mcp(first_url: str, second_url: str) -> tuple[str, str, bool]:
    """open_session on one API node, cells through run_code on both, close_session: (values..., ended)."""
    auth = {"Authorization": A["Authorization"]}
    async with _http_client(first_url, **auth) as one, _http_client(second_url, **auth) as two:
        opened = _structured(await one.call_tool("open_session", {"language": "python"}))
        cell = {"language": "python", "session_id": opened["session_id"]}
        set_z = _structured(await one.call_tool("run_code", {**cell, "code": "z = 5\nz"}))
        doubled = _structured(await two.call_tool("run_code", {**cell, "code": "z * 2"}))
        closed = _structured(await two.call_tool("close_session", {"session_id": opened["session_id"]}))
    return set_z["value"], doubled["value"], closed["ended"]


@pytest.mark.timeout(240)
def test_stateful_cells_reach_their_interpreter_through_any_api_node_and_start_afresh_when_its_worker_dies(
    cluster: Cluster, rdb: redis.Redis
) -> None:
    apis = [cluster.api(1), cluster.api(2)]
    # A pool of 4: room for 3 stateful sessions each (a box is kept for plain runs): the survivor takes the one
    # whose worker dies whatever it holds then.
    workers = {f"node-{n}": cluster.worker(n, pool_size=4, worker_name=f"node-{n}") for n in (3, 4)}
    cluster.start(*apis, *workers.values())
    with (
        httpx.Client(base_url=apis[0].url, timeout=90.0) as one,
        httpx.Client(base_url=apis[1].url, timeout=90.0) as two,
    ):
        sid, other = _stateful(one), _stateful(two)
        assert (first := _cell(one, sid, "import math\nx = 41"))["status"] == "ok", first
        owner = _owner(rdb, sid)
        for client in (two, one, two):  # each cell routed to the worker holding the interpreter
            got = _cell(client, sid, "x = x + 1\nx, math.floor(2.5)")
            assert got["status"] == "ok", got
        assert got["value"] == "(44, 2)", got
        assert _owner(rdb, sid) == owner
        fresh = _cell(one, other, "'x' in globals()")  # two sessions never share state
        assert (fresh["status"], fresh["value"]) == ("ok", "False"), fresh
        foreign = two.post("/api/v1/run", json={"session_id": sid, "code": "x"}, headers=B)
        assert foreign.status_code == 404, foreign.text  # another tenant's id finds nothing

        # The session's files are its interpreter's box's workdir, through either node.
        files = f"/api/v1/sessions/{sid}/files"
        assert two.put(f"{files}/data.txt", content=b"uploaded\n", headers=A).status_code == 201
        read = _cell(one, sid, "open('data.txt').read()")
        assert read["value"] == repr("uploaded\n"), read
        _cell(two, sid, "open('made.txt', 'w').write('by a cell')")
        assert one.get(f"{files}/made.txt", headers=A).content == b"by a cell"
        # MCP's notebook tools go the same way, through either node.
        assert asyncio.run(_notebook_through_mcp(apis[0].url + "/mcp", apis[1].url + "/mcp")) == ("5", "10", True)
        state = two.get(f"/api/v1/sessions/{sid}", headers=A).json()  # the holding worker's figures
        assert (state["stateful"], state["language"], state["busy"]) == (True, "python", False), state
        assert 0 < state["bytes_used"] <= state["disk_limit_bytes"], state

        # Its worker killed: the next cell waits for it to be taken for dead, then starts a fresh interpreter
        # on the other worker, and says so.
        workers[owner].proc.kill()
        assert workers[owner].proc.wait(10.0) == -signal.SIGKILL
        after = _cell(two, sid, "'x' in globals()")
        assert (after["status"], after["value"]) == ("ok", "False"), after
        assert after["message"].startswith(NOTICE_SESSION_RESET), after
        assert "interpreter was lost with its worker" in after["message"], after
        (survivor,) = set(workers) - {owner}
        assert _owner(rdb, sid) == survivor
        kept = _cell(one, sid, "y = 7\ny * 6")
        assert (kept["value"], kept["message"]) == ("42", ""), kept

        assert one.delete(f"/api/v1/sessions/{sid}", headers=A).status_code == 204
        gone = two.post("/api/v1/run", json={"session_id": sid, "code": "y"}, headers=A)
        assert gone.status_code == 404, gone.text
    for node in cluster.nodes:
        node.stop()
    LAYOUT.sweep()  # the killed worker could not release its boxes
    assert LAYOUT.leftovers() == []


def _room(rdb: redis.Redis, worker: str) -> str:
    """What the worker's last presence said of its room (``level:files:stateful``: files first)."""
    room = rdb.hget(f"{Keys().workers}:names", f"{Keys().inbox(worker)}|room")
    return room.decode() if isinstance(room, bytes) else ""


def _session(client: httpx.Client) -> str:
    made = client.post("/api/v1/sessions", headers=A)
    assert made.status_code == 201, made.text
    return str(made.json()["session_id"])


def _start_run(client: httpx.Client, session_id: str, code: str) -> str:
    response = client.post("/api/v1/execute", json=execution(code) | {"session_id": session_id}, headers=A)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def _result(client: httpx.Client, task_id: str) -> dict[str, Any]:
    states: list[dict[str, Any]] = []

    def done() -> bool:
        response = client.get(f"/api/v1/tasks/{task_id}", headers=A)
        assert response.status_code == 200, response.text
        states.append(response.json())
        return states[-1]["status"] == "done"

    wait_until(done, 90.0, f"task {task_id} is done")
    result: dict[str, Any] = states[-1]["result"]
    return result


@pytest.mark.timeout(240)
def test_a_session_moves_on_from_a_worker_at_its_session_limit_and_is_refused_when_none_has_room(
    cluster: Cluster, rdb: redis.Redis
) -> None:
    api = cluster.api(1)
    small = cluster.worker(3, pool_size=1, worker_name="node-3", max_sessions=1)
    cluster.start(api, small)
    with httpx.Client(base_url=api.url, timeout=90.0) as client:
        held = _session(client)
        assert _run(client, held, "print(1)")["status"] == "ok"  # node-3 holds its one session now
        wait_until(lambda: _room(rdb, "node-3").startswith("jail:0:"), 30.0, "node-3 says it has no room")
        refused = client.post("/api/v1/sessions", headers=A)  # the only worker is full: said at once
        assert refused.status_code == 429, refused.text
        assert "holds as many sessions (max_sessions)" in refused.json()["error"]["message"], refused.text

        big = cluster.worker(4, pool_size=1, worker_name="node-4", max_sessions=2)
        cluster.start(big)
        late = _session(client)  # created while node-4 has room; run once nobody has
        busy = _session(client)
        blocker = _start_run(client, busy, "import time\ntime.sleep(120)")
        wait_until(
            lambda: rdb.hget(Keys().session("team-a", busy), "boxed") == Keys().inbox("node-4").encode(),
            60.0,
            "the blocking run's session is on node-4",
        )
        # node-4's one box runs the blocker, so only node-3 takes the next run: its session cannot open there
        # (node-3 is at its limit) and moves to node-4, whose room its presence said.
        moved = _session(client)
        task = _start_run(client, moved, "print('ran on the worker with room')")
        wait_until(lambda: _owner(rdb, moved) == "node-4", 60.0, "node-3 gave the session to node-4")
        assert client.delete(f"/api/v1/tasks/{blocker}", headers=A).status_code == 200
        result = _result(client, task)
        assert (result["status"], result["stdout"]) == ("ok", "ran on the worker with room\n"), result

        # Both at their limits now: a run of a session no worker holds is refused at the API node, saying why
        # (a 429 with Retry-After, as creating one is), and nothing is queued.
        wait_until(lambda: _room(rdb, "node-4").startswith("jail:0:"), 30.0, "node-4 says it has no room")
        nowhere = client.post("/api/v1/run", json=execution("print('never')") | {"session_id": late}, headers=A)
        assert nowhere.status_code == 429, nowhere.text
        assert "holds as many sessions (max_sessions)" in nowhere.json()["error"]["message"], nowhere.text
        assert int(nowhere.headers["retry-after"]) > 0
        assert _owner(rdb, late) == ""
        assert client.post("/api/v1/sessions", headers=A).status_code == 429
        # The sessions held go on as before.
        assert _run(client, held, "print(2)")["stdout"] == "2\n"
        assert _run(client, moved, "print(3)")["stdout"] == "3\n"


@pytest.mark.timeout(240)
def test_a_stateful_session_at_the_gvisor_level_runs_in_a_gvisor_box_of_a_worker(cluster: Cluster) -> None:
    api, worker = cluster.api(1), cluster.worker(3, pool_size=2, gvisor_pool_size=1, worker_name="node-3")
    cluster.start(api, worker)
    with httpx.Client(base_url=api.url, timeout=90.0) as client:
        body = {"stateful": True, "language": "python", "isolation": "gvisor"}
        made = client.post("/api/v1/sessions", json=body, headers=A)
        assert made.status_code == 201, made.text
        sid = made.json()["session_id"]
        assert _cell(client, sid, "import os\nx = 20")["status"] == "ok"
        # gVisor's own kernel answers uname: the interpreter is in a gVisor box, and keeps its state there.
        got = _cell(client, sid, "x * 2, os.uname().release")
        assert got["status"] == "ok", got
        assert got["value"].startswith("(40, '4.4.0"), got  # runsc reports Linux 4.4.0
        weaker = client.post("/api/v1/run", json={"session_id": sid, "code": "1", "isolation": "jail"}, headers=A)
        assert weaker.status_code == 200 and weaker.json()["status"] == "ok", weaker.text  # stronger than asked
        state = client.get(f"/api/v1/sessions/{sid}", headers=A).json()
        assert (state["isolation"], state["stateful"]) == ("gvisor", True), state
