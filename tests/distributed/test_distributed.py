"""The distributed mode end to end: real ``redis-server``, real ``sandlot serve --no-worker`` and ``sandlot worker``.

Every node is its own process with its own state and run directories, cgroup
name and box uid range (``LAYOUT``, see tests/nodes.py), so no two pools ever share a slot and
each node's leftovers can be told apart. Redis runs per test on a free loopback
port with an append-only file, so a restart on the same port and directory
keeps the queue (the outage test). Every process is stopped by its PID in a
``finally``; the hosts' boxes are swept before and after each test and checked
to be gone.

``CLAIM_IDLE_MS`` is small, so a killed worker's job is taken over within
seconds; the runs are made longer than it, so a live worker's job would be
taken over too if heartbeats did not keep it.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import queue
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from sandlot.broker.keys import Keys
from tests.nodes import GRACE_S, Cluster, NodeLayout, RedisServer, loopback_http
from tests.test_serve_process import HELLO, SLEEP_3S, execution, read_until_output, sse_frames, submit, wait_until

CLAIM_IDLE_MS = 2000
DRAIN_DEADLINE_S = 15.0  # far above the 3 s runs: a drain finishes them
STOP_TIMEOUT_S = DRAIN_DEADLINE_S + GRACE_S  # the drain plus the listeners' grace, before SIGKILL
RESULT_TIMEOUT_S = 30.0  # a reclaim (claim idle, then the next reclaim pass) and a rerun fit well inside
SLEEP_6S = SLEEP_3S.replace("sleep(3)", "sleep(6)")  # three claim timeouts: an idle worker would take it over
PRESENCE_GONE_TIMEOUT_S = 60.0  # a killed worker's presence expires (15 s at most), then a run in a fresh box
LAYOUT = NodeLayout(
    "dist",
    uid_base=930_000_000,
    nodes=range(1, 6),
    max_boxes=64,  # well inside a node's uid range
    drain_deadline_s=DRAIN_DEADLINE_S,
    settings={"claim_idle_ms": CLAIM_IDLE_MS},
)


# ------------------------------------------------------------------ client


def _result(client: httpx.Client, task_id: str, timeout_s: float = RESULT_TIMEOUT_S) -> dict[str, Any]:
    """The task's result once it is done (polled: the test is an outside client), bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/api/v1/tasks/{task_id}").json()
        if body["status"] == "done":
            result: dict[str, Any] = body["result"]
            return result
        assert time.monotonic() < deadline, f"task {task_id} not done within {timeout_s:g} s: {body}"
        time.sleep(0.1)


def _exits(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """Every exit event in the task's whole event stream (a replay: the task is done)."""
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        frames = list(sse_frames(response.iter_lines()))
    return [frame["data"] for frame in frames if frame["event"] == "exit"]


def _submit_body(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/v1/execute", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def _stdout_of(client: httpx.Client, task_id: str) -> str:
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        frames = list(sse_frames(response.iter_lines()))
    return "".join(f["data"]["data"] for f in frames if f["event"] == "output" and f["data"]["stream"] == "stdout")


# ------------------------------------------------------------------- tests


@pytest.mark.timeout(180)
def test_api_nodes_without_workers_and_two_workers_run_every_job(cluster: Cluster) -> None:
    api, other_api = cluster.api(1), cluster.api(2)
    workers = [cluster.worker(3, pool_size=2), cluster.worker(4, pool_size=2)]
    cluster.start(api, other_api, *workers)
    codes = {i: f"import time\ntime.sleep(1)\nprint('job', {i} * {i})\n" for i in range(10)}

    with httpx.Client(base_url=api.url, timeout=60.0) as client, httpx.Client(base_url=other_api.url) as second:
        # A run of three claim timeouts: heartbeats keep it on its worker (one "started", not two).
        long_id = submit(client, SLEEP_6S)
        with second.stream("GET", f"/api/v1/tasks/{long_id}/events") as response:  # live, on the other node
            assert response.status_code == 200
            read_until_output(sse_frames(response.iter_lines()), "started\n")

        with concurrent.futures.ThreadPoolExecutor(len(codes)) as pool:
            futures = {i: pool.submit(client.post, "/api/v1/run", json=execution(code)) for i, code in codes.items()}
            # Both workers run jobs at once: python3 under each one's box uids.
            wait_until(
                lambda: all("python3" in w.box_processes().values() for w in workers), 20.0, "both workers running"
            )
            responses = {i: future.result(timeout=60.0) for i, future in futures.items()}

        for i, response in responses.items():
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["status"], body["stdout"]) == ("ok", f"job {i * i}\n"), body

        long_result = _result(second, long_id)
        assert (long_result["status"], long_result["stdout"]) == ("ok", "started\nfinished\n"), long_result
        assert _stdout_of(second, long_id) == "started\nfinished\n"  # run once: never taken over
        assert len(_exits(second, long_id)) == 1

    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(120)
def test_a_killed_workers_job_ends_once_on_the_other_worker(cluster: Cluster) -> None:
    api = cluster.api(1)
    workers = [cluster.worker(2), cluster.worker(3)]
    cluster.start(api, *workers)
    with httpx.Client(base_url=api.url, timeout=10.0) as client:
        task_id = submit(client, SLEEP_3S)
        with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            read_until_output(sse_frames(response.iter_lines()), "started\n")
        (victim,) = [w for w in workers if "python3" in w.box_processes().values()]
        victim.proc.kill()
        assert victim.proc.wait(10.0) == -signal.SIGKILL

        result = _result(client, task_id)
        if result["status"] == "ok":  # taken over after claim_idle_ms and run again from the start
            assert result["stdout"] == "started\nfinished\n", result
        else:
            assert (result["status"], result["message"]) == ("internal_error", "worker lost"), result
        assert len(_exits(client, task_id)) == 1
        assert _result(client, task_id) == result  # and it stays that one result

        after = client.post("/api/v1/run", json=execution(HELLO))  # the survivor still serves
        assert (after.status_code, after.json()["stdout"]) == (200, "hello\n"), after.text
    for node in cluster.nodes:
        node.stop()
    LAYOUT.sweep()  # the killed worker could not release its box; its slot is stale now
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(120)
def test_sigterm_lets_the_worker_finish_its_job_then_exit_0(cluster: Cluster) -> None:
    api, worker = cluster.api(1), cluster.worker(2)
    cluster.start(api, worker)
    with httpx.Client(base_url=api.url, timeout=10.0) as client:
        task_id = submit(client, SLEEP_3S)
        with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            frames = sse_frames(response.iter_lines())
            read_until_output(frames, "started\n")
            worker.proc.send_signal(signal.SIGTERM)
            rest = list(frames)
        assert rest[-1]["event"] == "exit"
        assert (rest[-1]["data"]["status"], rest[-1]["data"]["stdout"]) == ("ok", "started\nfinished\n")
        assert worker.proc.wait(DRAIN_DEADLINE_S) == 0, worker.output()
        assert "sandlot worker stopped; boxes released" in worker.output()

        later = submit(client, HELLO)  # nobody claims it: the worker stopped claiming
        assert client.get(f"/api/v1/tasks/{later}").json()["status"] == "queued"
    assert [path for path in LAYOUT.leftovers() if "sandlot-dist-2" in str(path)] == []  # the worker released its box
    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(120)
def test_a_redis_outage_answers_503_and_the_api_recovers_by_itself(cluster: Cluster) -> None:
    api, worker = cluster.api(1), cluster.worker(2)
    cluster.start(api, worker)
    with httpx.Client(base_url=api.url, timeout=10.0) as client:
        before = client.post("/api/v1/run", json=execution(HELLO))
        assert (before.status_code, before.json()["stdout"]) == (200, "hello\n"), before.text

        cluster.redis.stop()
        refused = client.post("/api/v1/execute", json=execution(HELLO))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        assert int(refused.headers["Retry-After"]) >= 1

        cluster.redis.start()  # same port, same append-only file
        deadline = time.monotonic() + 20.0
        while (response := client.post("/api/v1/execute", json=execution(HELLO))).status_code == 503:
            assert time.monotonic() < deadline, "the API did not recover within 20 s"
            time.sleep(0.2)
        assert response.status_code == 202, response.text
        result = _result(client, response.json()["task_id"])
        assert (result["status"], result["stdout"]) == ("ok", "hello\n"), result
    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []


def _frames(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """The task's whole event stream (a replay: the task is done)."""
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        return list(sse_frames(response.iter_lines()))


def _stdout(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["data"] for f in frames if f["event"] == "output" and f["data"]["stream"] == "stdout")


def _notices(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["data"]["code"] for frame in frames if frame["event"] == "notice"]


# A session's run: what earlier runs of the session left in the workdir.
SESSION_STEP = """try:
    print('found', open('state.txt').read())
except FileNotFoundError:
    print('missing')
open('state.txt', 'a').write('x')
"""


def _session_step(
    client: httpx.Client, session_id: str, timeout_s: float = RESULT_TIMEOUT_S
) -> tuple[str, list[dict[str, Any]]]:
    """Run SESSION_STEP in the session: (what it found, the task's events)."""
    response = client.post("/api/v1/execute", json=execution(SESSION_STEP) | {"session_id": session_id})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    result = _result(client, task_id, timeout_s)  # bounded: never a hang
    assert result["status"] == "ok", result
    return result["stdout"].strip(), _frames(client, task_id)


def _session_owner(rdb: redis.Redis, session_id: str) -> str:
    """The worker (its SANDLOT_WORKER_NAME) the session is bound to, as recorded in Redis."""
    owner = rdb.hget(Keys().session("public", session_id), "owner")  # no API keys: the tenant is "public"
    assert isinstance(owner, bytes), owner
    return owner.decode().rsplit(":", 1)[1]


@pytest.mark.timeout(180)
def test_a_sessions_runs_stay_on_its_worker_and_start_afresh_when_that_worker_is_killed(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    api = cluster.api(1)
    # claim_idle_ms far above the test: a dead worker's sessions move on with its presence, which expires
    # within seconds whatever claim_idle_ms is.
    workers = {
        f"node-{n}": cluster.worker(n, pool_size=2, worker_name=f"node-{n}", claim_idle_ms=600_000) for n in (2, 3)
    }
    cluster.start(api, *workers.values())
    rdb = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        with httpx.Client(base_url=api.url, timeout=30.0) as client:
            created = client.post("/api/v1/sessions")
            assert created.status_code == 201, created.text
            session_id = created.json()["session_id"]

            owners, steps = set(), []
            for _ in range(6):
                steps.append(_session_step(client, session_id))
                owners.add(_session_owner(rdb, session_id))
            # Every run in one box on one worker: each found what the ones before it wrote.
            assert [found for found, _ in steps] == ["missing", *(f"found {'x' * i}" for i in range(1, 6))]
            (owner,) = owners
            assert all(_notices(frames) == [] for _, frames in steps)
            plain = client.post("/api/v1/run", json=execution(HELLO))  # the other worker serves the rest
            assert (plain.status_code, plain.json()["stdout"]) == (200, "hello\n"), plain.text

            workers[owner].proc.kill()
            assert workers[owner].proc.wait(10.0) == -signal.SIGKILL
            found, frames = _session_step(client, session_id, PRESENCE_GONE_TIMEOUT_S)
            assert found == "missing"  # a fresh box...
            (survivor,) = set(workers) - {owner}
            assert _session_owner(rdb, session_id) == survivor  # ...on the other worker
            assert _notices(frames) == ["session_reset"]
            kinds = [frame["event"] for frame in frames]
            assert kinds.index("notice") < kinds.index("output"), kinds  # said before any output

            found, frames = _session_step(client, session_id)
            assert (found, _notices(frames)) == ("found x", [])  # and kept there from now on
            assert _session_owner(rdb, session_id) == survivor

            ended = client.delete(f"/api/v1/sessions/{session_id}")
            assert ended.status_code == 204, ended.text
            gone = client.post("/api/v1/execute", json=execution(HELLO) | {"session_id": session_id})
            assert gone.status_code == 404, gone.text
    finally:
        rdb.close()
    for node in cluster.nodes:
        node.stop()
    LAYOUT.sweep()  # the killed worker could not release its boxes
    assert LAYOUT.leftovers() == []


LEVEL_STEP = SESSION_STEP + "import os\nprint('uid', os.getuid())\n"


@pytest.mark.timeout(180)
def test_a_gvisor_sessions_runs_go_at_its_level_on_a_worker(cluster: Cluster, redis_server: RedisServer) -> None:
    """The level is chosen when the session is made, recorded in Redis, and every run of it goes at it."""
    api, worker = cluster.api(1), cluster.worker(2, pool_size=1, gvisor_pool_size=1)
    cluster.start(api, worker)
    rdb = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        with httpx.Client(base_url=api.url, timeout=30.0) as client:
            made = client.post("/api/v1/sessions", json={"isolation": "gvisor"})
            assert made.status_code == 201, made.text
            assert made.json()["isolation"] == "gvisor"
            session_id = made.json()["session_id"]
            assert rdb.hget(Keys().session("public", session_id), "isolation") == b"gvisor"

            seen = []
            for asked in ("", "jail"):  # the server's default, or a weaker ask: the session's level either way
                body = execution(LEVEL_STEP) | {"session_id": session_id}
                reply = client.post("/api/v1/run", json=body | ({"isolation": asked} if asked else {}))
                assert reply.status_code == 200, reply.text
                seen.append(reply.json()["stdout"].split("\n")[:2])
            assert [found for found, _ in seen] == ["missing", "found x"]  # one box, kept between runs
            assert all(uid != "uid 1000" for _, uid in seen), seen  # the slot's own uid: gVisor, not the jail

            plain = client.post("/api/v1/run", json=execution(LEVEL_STEP))  # no session: the default level
            assert plain.status_code == 200, plain.text
            assert plain.json()["stdout"].split("\n")[:2] == ["missing", "uid 1000"]

            jail = client.post("/api/v1/sessions").json()["session_id"]
            stronger = client.post("/api/v1/run", json=execution(HELLO) | {"session_id": jail, "isolation": "gvisor"})
            assert stronger.status_code == 400, stronger.text  # never run weaker than asked
            assert "weaker than the requested 'gvisor'" in stronger.text
    finally:
        rdb.close()


@pytest.mark.timeout(180)
def test_sigterm_hands_jobs_back_and_another_worker_runs_each_once(cluster: Cluster, redis_server: RedisServer) -> None:
    # A claim timeout far above the test: only a hand-back can move a job to the other worker in time.
    slow_reclaim = {"claim_idle_ms": 600_000}
    api = cluster.api(1, **slow_reclaim)
    stopping = cluster.worker(2, pool_size=2, drain_deadline_s=3, **slow_reclaim)  # a 3 s drain < the 6 s run
    cluster.start(api, stopping)
    keys = Keys()
    rdb = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        # The session pins one of the worker's two boxes; the long run takes it, and the session's next
        # run is claimed too (a box is free) and waits there for the long one: claimed, not started.
        session_id = client.post("/api/v1/sessions").json()["session_id"]
        in_session = {"session_id": session_id}
        pinning = client.post("/api/v1/run", json=execution(HELLO) | in_session)
        assert (pinning.status_code, pinning.json()["stdout"]) == (200, "hello\n"), pinning.text
        long_id = _submit_body(client, execution(SLEEP_6S) | in_session)
        with client.stream("GET", f"/api/v1/tasks/{long_id}/events") as response:
            read_until_output(sse_frames(response.iter_lines()), "started\n")
        waiting_id = _submit_body(client, execution(HELLO) | in_session)
        wait_until(lambda: rdb.hget(keys.state(waiting_id), "entry") is not None, 20.0, "claimed")

        stopping.proc.send_signal(signal.SIGTERM)
        assert stopping.proc.wait(STOP_TIMEOUT_S) == 0, stopping.output()
        for task_id in (long_id, waiting_id):
            assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "queued"  # back, not failed

        taker = cluster.worker(3, **slow_reclaim)
        cluster.start(taker)
        waiting, long = _result(client, waiting_id), _result(client, long_id)
        assert (waiting["status"], waiting["stdout"]) == ("ok", "hello\n"), waiting
        assert (long["status"], long["stdout"]) == ("ok", "started\nfinished\n"), long
        waiting_frames, long_frames = _frames(client, waiting_id), _frames(client, long_id)
        # The waiting one went back first (at once), and starts the session afresh on the other worker (the
        # notice says so); the long one, handed back at the drain deadline, follows it in that box, and its
        # client is told the run starts again.
        assert _notices(waiting_frames) == ["session_reset"], (waiting_frames, long_frames)
        assert _notices(long_frames) == ["requeued"]
        assert _stdout(long_frames) == "started\nstarted\nfinished\n"
        for frames in (waiting_frames, long_frames):
            assert [frame["event"] for frame in frames].count("exit") == 1

    try:
        for task_id in (long_id, waiting_id):  # handing back does not count as a delivery
            assert int(rdb.hget(keys.state(task_id), "deliveries") or 0) == 1
        assert int(rdb.get(keys.queued) or 0) == 0
    finally:
        rdb.close()
    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []


class _Callbacks(http.server.BaseHTTPRequestHandler):
    """Records each Judge0 callback (a PUT) in the server's ``received`` queue."""

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.put((self.path, json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def callbacks() -> Iterator[tuple[str, queue.Queue[tuple[str, dict[str, Any]]]]]:
    """A loopback HTTP receiver for Judge0 callbacks: (its URL, the callbacks received)."""
    with loopback_http(_Callbacks) as server:
        server.received = queue.Queue()  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_judge0_expected_output_and_callback_travel_with_the_task(
    cluster: Cluster, callbacks: tuple[str, queue.Queue[tuple[str, dict[str, Any]]]]
) -> None:
    url, received = callbacks
    taker, reader = (cluster.api(n, judge0_callback_allow_private=1) for n in (1, 2))  # callbacks to loopback
    cluster.start(taker, reader, cluster.worker(3))
    python, wrong_answer, accepted = 71, 4, 3
    with httpx.Client(base_url=taker.url + "/judge0", timeout=30.0) as here:
        tokens = {}
        for expected, hook in (("other\n", "/wrong"), ("out\n", "/right")):
            body = {"source_code": "print('out')", "language_id": python, "expected_output": expected}
            created = here.post("/submissions", json=body | {"callback_url": url + hook})
            assert created.status_code == 201, created.text
            tokens[hook] = created.json()["token"]

        calls = dict(received.get(timeout=RESULT_TIMEOUT_S) for _ in tokens)  # sent by the API node that took them
        assert calls["/hook/wrong"]["status"]["id"] == wrong_answer, calls
        assert calls["/hook/right"]["status"]["id"] == accepted, calls
        assert {calls[f"/hook{hook}"]["token"] for hook in tokens} == set(tokens.values())

    fields = {"fields": "status,stdout,expected_output,callback_url", "base64_encoded": "false"}
    with httpx.Client(base_url=reader.url + "/judge0", timeout=30.0) as there:  # never saw these submissions
        for hook, status in (("/wrong", wrong_answer), ("/right", accepted)):
            shown = there.get(f"/submissions/{tokens[hook]}", params=fields).json()
            expected = "other\n" if hook == "/wrong" else "out\n"
            assert shown == {
                "status": {"id": status, "description": shown["status"]["description"]},
                "stdout": "out\n",
                "expected_output": expected,
                "callback_url": url + hook,
            }, shown
    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []
