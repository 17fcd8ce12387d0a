"""Fault injection for the distributed mode: killed workers, a restarted Redis, foreign jobs entries.

Real processes as in ``test_distributed``: one ``redis-server`` per test (its own
data directory under ``tmp_path``, append-only file, fsync always), ``sandlot
serve --redis --no-worker`` API nodes and ``sandlot worker --redis`` workers.
Every node has its own state and run directories, cgroup name and box uid
range (``/var/lib/sandlot-fault-<n>``, ``/run/sandlot-fault-<n>``,
``sandlot-fault-<n>``, its own uids: ``LAYOUT``, see tests/nodes.py), apart from every other
test file's. Every process is stopped by its PID in a ``finally`` and each
node's boxes are swept before and after each test.

The assertions are on counts (tasks submitted, done, exit events, pending
entries), never on wall-clock times; every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from sandlot.broker.keys import WORKERS_GROUP, Keys
from sandlot.config import SERVER_DEFAULTS
from tests.nodes import Cluster, NodeLayout, RedisServer
from tests.test_serve_process import sse_frames, wait_until

MAX_QUEUED = 10_000  # the whole burst fits: no 429 in these tests
DRAIN_DEADLINE_S = 10.0
# Recovery at the defaults (presence TTL, claim_idle_ms, max_deliveries): nothing here is shortened, so a
# killed worker's jobs must come back through its presence expiring, not through the idle backstop.
LAYOUT = NodeLayout(
    "fault",
    uid_base=940_000_000,
    nodes=range(1, 6),
    max_boxes=16,
    drain_deadline_s=DRAIN_DEADLINE_S,
    settings={"max_queued": MAX_QUEUED},
)
KEYS = Keys()

CHAOS_JOBS = 2000
CHAOS_CLIENTS = 4
CHAOS_INTERVAL_S = (1.0, 3.0)  # between two kills
CHAOS_DONE_TIMEOUT_S = 240.0  # after the last submit, for the queue and the stragglers (takeovers included)
TINY_LIMITS = {"wall_time_limit": 5, "time_limit": 2}
# A dead worker's presence lapses after presence_ttl_s (6 s by default) and the next sweep takes its entries
# over: three TTLs bound that with room for a loaded host, far below the idle backstop (claim_idle_ms).
PRESENCE_SETTLE_S = 3 * SERVER_DEFAULTS.presence_ttl_s


# ------------------------------------------------------------------ client


def _submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/v1/execute", json=body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert isinstance(task_id, str)
    return task_id


def _status(client: httpx.Client, task_id: str) -> dict[str, Any] | None:
    """The task's state, or None while the API answers 503 (a Redis outage)."""
    response = client.get(f"/api/v1/tasks/{task_id}")
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_all_done(client: httpx.Client, task_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Every task's result once all are done, bounded; tasks already done are not asked again."""
    deadline = time.monotonic() + timeout_s
    results: dict[str, dict[str, Any]] = {}
    while True:
        for task_id in task_ids:
            if task_id in results:
                continue
            body = _status(client, task_id)
            if body is not None and body["status"] == "done":
                results[task_id] = body["result"]
        missing = [t for t in task_ids if t not in results]
        if not missing:
            return results
        assert time.monotonic() < deadline, f"{len(missing)} tasks not done within {timeout_s:g} s: {missing[:5]}"
        time.sleep(0.5)


def _frames(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """The task's whole event stream (a replay: the task is done)."""
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        return list(sse_frames(response.iter_lines()))


def _exits(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["data"] for frame in frames if frame["event"] == "exit"]


def _pending(rdb: redis.Redis) -> int:
    """Jobs delivered and not yet acknowledged, over every jobs stream."""
    return sum(int(rdb.xpending(stream, WORKERS_GROUP)["pending"]) for stream in rdb.smembers(KEYS.streams))


def _deliveries(rdb: redis.Redis, task_ids: list[str]) -> dict[int, int]:
    """How many tasks were delivered to a worker how many times (the state hashes live for result_ttl_s)."""
    counts: dict[int, int] = {}
    for task_id in task_ids:
        n = int(rdb.hget(KEYS.state(task_id), "deliveries") or 0)
        counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items()))


def _queued(rdb: redis.Redis) -> int:
    return int(rdb.get(KEYS.queued) or 0)


# ------------------------------------------------------------------- tests


@pytest.mark.slow  # ~2.5 min here (2,000 jobs, a kill every 1-3 s), in the default suite
@pytest.mark.timeout(420)
def test_random_worker_kills_lose_no_job_and_each_ends_once(cluster: Cluster, rdb: redis.Redis) -> None:
    api = cluster.api(1)
    workers = {n: cluster.worker(n, pool_size=2) for n in (2, 3, 4)}
    for node in (api, *workers.values()):
        node.wait_ready()

    stop_chaos = threading.Event()
    kills: list[int] = []

    def chaos() -> None:
        rng = random.Random(1234)
        while not stop_chaos.wait(rng.uniform(*CHAOS_INTERVAL_S)):
            n = rng.choice(sorted(workers))
            victim = workers[n]
            victim.proc.kill()
            victim.proc.wait(10.0)
            kills.append(n)
            restarted = workers[n] = cluster.worker(n, pool_size=2)  # same state dir: its stale boxes are swept
            restarted.wait_ready()

    bodies = {i: {"language": "bash", "code": f"echo job-{i}\n", "limits": TINY_LIMITS} for i in range(CHAOS_JOBS)}
    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    started = time.monotonic()
    chaos_thread.start()
    try:
        with (
            httpx.Client(base_url=api.url, timeout=30.0) as client,
            concurrent.futures.ThreadPoolExecutor(CHAOS_CLIENTS) as pool,
        ):
            ids = dict(zip(bodies, pool.map(lambda i: _submit(client, bodies[i]), bodies), strict=True))
            submitted_s = time.monotonic() - started
            results = _wait_all_done(client, list(ids.values()), CHAOS_DONE_TIMEOUT_S)
            done_s = time.monotonic() - started
    finally:
        stop_chaos.set()
        chaos_thread.join(60.0)

    with httpx.Client(base_url=api.url, timeout=30.0) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = dict(zip(ids, pool.map(lambda t: _frames(client, t), ids.values()), strict=True))

    lost, wrong = [], []
    for i, task_id in ids.items():
        result = results[task_id]
        exits = _exits(streams[i])
        assert len(exits) == 1, (i, task_id, exits)
        assert exits[0]["status"] == result["status"], (exits[0], result)
        if result["status"] == "ok":
            if result["stdout"] != f"job-{i}\n":
                wrong.append((i, result))
        elif (result["status"], result.get("message")) == ("internal_error", "worker lost"):
            lost.append(i)
        else:
            wrong.append((i, result))
    print(
        f"\nchaos: {len(ids)} jobs, {len(kills)} kills, {len(lost)} worker lost, "
        f"submitted in {submitted_s:.1f}s, all done in {done_s:.1f}s"
    )
    print(f"chaos: deliveries per task -> number of tasks: {_deliveries(rdb, list(ids.values()))}")
    assert wrong == []
    assert len(kills) >= 1
    assert len(lost) <= len(kills) * 2  # a lost job needs max_deliveries runs on workers killed under it

    # A worker killed after it took a job's entry and before it acknowledged it leaves that entry pending
    # until its presence lapses; then (not after the idle backstop's minutes) it goes back and is acknowledged.
    # The chaos goes on until the last result is in, so the last kill may fall just before this check.
    settled_from = time.monotonic()
    wait_until(lambda: _pending(rdb) == 0, PRESENCE_SETTLE_S, "every delivered entry acknowledged")
    print(f"chaos: XPENDING 0 after {time.monotonic() - settled_from:.1f}s")
    # Every task left the queued count exactly once, even those whose worker died between
    # taking the job and counting it out (before the idempotent dequeue, 1-4 per run leaked).
    queued = _queued(rdb)
    assert queued == 0, queued
    print(f"chaos: XPENDING 0, queued counter {queued}")

    cluster.close()
    LAYOUT.sweep()  # the killed workers could not release their boxes
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(240)
def test_a_redis_restart_with_aof_mid_stream_loses_nothing(
    cluster: Cluster, redis_server: RedisServer, rdb: redis.Redis
) -> None:
    api = cluster.api(1)
    workers = [cluster.worker(2), cluster.worker(3)]
    for node in (api, *workers):
        node.wait_ready()
    count = 50
    codes = {i: f"import time\ntime.sleep(0.5)\nprint('job', {i})\n" for i in range(count)}
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        ids = {i: _submit(client, {"language": "python", "code": code}) for i, code in codes.items()}
        # Mid-way: some done, the rest queued or running.
        deadline = time.monotonic() + 60.0
        while True:
            done = sum(1 for t in ids.values() if (_status(client, t) or {}).get("status") == "done")
            if done >= count // 4:
                break
            assert time.monotonic() < deadline, f"only {done} done within 60 s"
            time.sleep(0.2)
        before = {i: _frames(client, t) for i, t in ids.items() if (_status(client, t) or {})["status"] == "done"}

        # A live follower of the last task (still queued) across the outage, on its own connection.
        live: dict[str, Any] = {}

        def follow() -> None:
            try:
                with httpx.Client(base_url=api.url, timeout=60.0) as own:
                    live["frames"] = _frames(own, ids[count - 1])
            except Exception as exc:  # a cut connection: reported below, then the client replays
                live["error"] = repr(exc)

        follower = threading.Thread(target=follow, name="live-follower", daemon=True)
        follower.start()
        time.sleep(0.5)

        redis_server.stop()  # SIGTERM: redis-server flushes its append-only file and exits
        time.sleep(2.0)
        redis_server.start()  # same port, same directory

        results = _wait_all_done(client, list(ids.values()), 120.0)
        follower.join(90.0)
        assert not follower.is_alive()
        live_frames = live.get("frames", [])
        print(
            f"\nredis restart: the live follower got {len(live_frames)} frames, "
            f"{len(_exits(live_frames))} exit, error {live.get('error')}"
        )
        assert len(_exits(live_frames)) <= 1  # never two exits, live or not
        # The stream is never cut mid-response: it either followed through the outage, or ended
        # with an "unavailable" error frame (then the client reconnects with Last-Event-ID).
        assert "error" not in live, live.get("error")
        events = [f for f in live_frames if f["event"] != "error"]
        if len(events) < len(live_frames):
            assert live_frames[-1]["event"] == "error", live_frames[-1]
            assert live_frames[-1]["data"]["error"]["code"] == "unavailable"
        replay = _frames(client, ids[count - 1])
        assert events == replay[: len(events)]  # what came live is the start of the replay
        for i, task_id in ids.items():
            result = results[task_id]
            assert (result["status"], result["stdout"]) == ("ok", f"job {i}\n"), (i, result)
            frames = _frames(client, task_id)
            assert len(_exits(frames)) == 1, (i, frames)
            stdout = "".join(
                f["data"]["data"] for f in frames if f["event"] == "output" and f["data"]["stream"] == "stdout"
            )
            assert stdout.endswith(f"job {i}\n"), (i, stdout)
            if i in before:  # the replay after the restart is the stream from before it, from the start
                assert frames == before[i], i
        print(f"redis restart: {count} jobs, {len(before)} done before the outage, all {count} ok after")
        print(f"redis restart: deliveries per task -> number of tasks: {_deliveries(rdb, list(ids.values()))}")

    assert _pending(rdb) == 0
    assert _queued(rdb) == 0
    cluster.close()
    LAYOUT.sweep()
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(120)
def test_foreign_jobs_entries_are_dead_lettered_and_workers_keep_serving(cluster: Cluster, rdb: redis.Redis) -> None:
    api = cluster.api(1)
    worker = cluster.worker(2)
    for node in (api, worker):
        node.wait_ready()
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        first = _submit(client, {"language": "bash", "code": "echo before\n"})
        assert _wait_all_done(client, [first], 30.0)[first]["stdout"] == "before\n"

        # Into the stream of the API's tenant (no keys: "public"), ahead of its next job.
        garbage = rdb.xadd(KEYS.tenant_jobs("public"), {"foo": "bar", "\xff": b"\x00\x01"})
        unknown = rdb.xadd(KEYS.tenant_jobs("public"), {"task": "no-such-task", "tenant": "nobody"})
        after = _submit(client, {"language": "bash", "code": "echo after\n"})
        result = _wait_all_done(client, [after], 30.0)[after]
        assert (result["status"], result["stdout"]) == ("ok", "after\n"), result

        deadline = time.monotonic() + 20.0
        while True:
            letters = {
                entry_fields[b"entry"].decode(): entry_fields[b"reason"].decode()
                for _, entry_fields in rdb.xrange(KEYS.deadletter)
            }
            if len(letters) >= 2:
                break
            assert time.monotonic() < deadline, letters
            time.sleep(0.1)
        print(f"\ndead letters: {letters}")
        assert letters[garbage.decode()] == "malformed entry: no task id"
        assert letters[unknown.decode()] == "missing task 'no-such-task'"

        again = _submit(client, {"language": "bash", "code": "echo again\n"})
        assert _wait_all_done(client, [again], 30.0)[again]["stdout"] == "again\n"
    assert worker.proc.poll() is None
    assert _pending(rdb) == 0
    assert _queued(rdb) == 0
    cluster.close()
    assert worker.proc.returncode == 0, worker.output()
    assert LAYOUT.leftovers() == []
