"""A dead or frozen worker's jobs, end to end, AT DEFAULT SETTINGS: real redis-server, API node and workers.

No timeout is shortened here (the layout sets no ``claim_idle_ms``, no presence
TTL): a killed worker's jobs must come back through its presence expiring
(``presence_ttl_s``), not through the idle backstop (``claim_idle_ms``,
270 s by default). Waits are bounded generously (the host is shared) but well
below the backstop, so a test passing through the backstop would fail; timings
are printed, never asserted tightly. Every node has its own state and run
directories, cgroup name and box uids (``LAYOUT``, see tests/nodes.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
import httpx
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import TextContent

from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.broker.keys import Keys
from sandlot.config import SERVER_DEFAULTS
from tests.distributed.test_distributed_faults import _exits, _frames, _pending, _queued, _submit, _wait_all_done
from tests.nodes import Cluster, NodeLayout
from tests.test_serve_process import read_until_output, sse_frames, wait_until

LAYOUT = NodeLayout(
    "recover",
    uid_base=970_000_000,  # apart from the other files' layouts and the benchmarks' 950_000_000
    nodes=range(1, 5),
    max_boxes=16,
    drain_deadline_s=10.0,
    settings={},  # the defaults, on purpose
)
KEYS = Keys()
DEFAULT_CLAIM_IDLE_S = 270.0  # the backstop at the default maxima: every bound below stays far under it
MARGIN_S = 40.0  # a loaded, shared host: generous, and still far below the backstop
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep({s})\nprint('finished', flush=True)\n"
LONG_LIMITS = {"wall_time_limit": 60}


async def _mcp_run_code(url: str) -> str:
    """run_code over the node's streamable HTTP MCP door: the text of its (error) answer."""
    async with (
        create_mcp_http_client() as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client,
    ):
        answer = await client.call_tool("run_code", {"language": "python", "code": "print('x')"})
    assert answer.is_error, answer
    return " ".join(part.text for part in answer.content if isinstance(part, TextContent))


def _python(code: str, **extra: Any) -> dict[str, Any]:
    return {"language": "python", "code": code, "limits": LONG_LIMITS, **extra}


def _kinds_and_text(frames: list[dict[str, Any]]) -> list[str]:
    """The stream as readable items: output lines, notice codes, the exit status."""
    items: list[str] = []
    partial = ""  # a line may come in several chunks
    for frame in frames:
        data = frame["data"]
        if frame["event"] == "output":
            partial += data["data"]
            *lines, partial = partial.split("\n")
            items += [line + "\n" for line in lines]
        elif frame["event"] == "notice":
            items.append(f"<{data['code']}>")
        elif frame["event"] == "exit":
            items.append(f"<exit {data['status']}>")
    return items


def _claimed(rdb: redis.Redis, task_id: str) -> bool:
    return rdb.hget(KEYS.state(task_id), "entry") is not None


@pytest.mark.timeout(300)
def test_a_killed_workers_running_and_waiting_jobs_end_within_seconds(cluster: Cluster, rdb: redis.Redis) -> None:
    api = cluster.api(1)
    workers = {n: cluster.worker(n, pool_size=2) for n in (2, 3)}
    cluster.start(api, *workers.values())
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        created = client.post("/api/v1/sessions")
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        running = _submit(client, _python(SLEEPER.format(s=4), session_id=session_id))
        with client.stream("GET", f"/api/v1/tasks/{running}/events") as response:
            read_until_output(sse_frames(response.iter_lines()), "started\n")
        (victim_n,) = [n for n, w in workers.items() if "python3" in w.box_processes().values()]
        victim = workers[victim_n]
        # The session's next run goes to the same worker and waits there for the first: claimed, not started.
        waiting = _submit(client, _python("print('second')\n", session_id=session_id))
        wait_until(lambda: _claimed(rdb, waiting), 30.0, "the session's second run claimed")
        assert rdb.hget(KEYS.state(waiting), "status") == b"queued"  # claimed, never started
        others = [_submit(client, _python(SLEEPER.format(s=1))) for _ in range(4)]

        victim.proc.kill()
        killed_at = time.monotonic()
        assert victim.proc.wait(10.0) == -signal.SIGKILL
        bound_s = SERVER_DEFAULTS.presence_ttl_s + 4 + MARGIN_S  # the TTL, the run itself, a margin
        assert bound_s < DEFAULT_CLAIM_IDLE_S
        results = _wait_all_done(client, [running, waiting], bound_s)
        recovered_s = time.monotonic() - killed_at
        results |= _wait_all_done(client, others, bound_s)
        print(f"\nkilled worker's 2 jobs (1 running, 1 claimed) done {recovered_s:.1f}s after its SIGKILL")

        assert (results[running]["status"], results[running]["stdout"]) == ("ok", "started\nfinished\n")
        assert (results[waiting]["status"], results[waiting]["stdout"]) == ("ok", "second\n")
        assert all(results[t]["status"] == "ok" for t in others), [results[t] for t in others]
        streams = {t: _frames(client, t) for t in (running, waiting, *others)}
        for task_id, frames in streams.items():
            assert len(_exits(frames)) == 1, (task_id, frames)
        items = _kinds_and_text(streams[running])
        # What it printed on the dead worker, then the notice that it runs again, then the run on the other.
        assert items[0] == "started\n" and "<requeued>" in items, items
        assert items[-3:] == ["started\n", "finished\n", "<exit ok>"], items
        assert "<requeued>" not in _kinds_and_text(streams[waiting])  # it had not started: nothing to say
        for task_id in (running, waiting):
            assert int(rdb.hget(KEYS.state(task_id), "deliveries") or 0) == 2  # counted against max_deliveries

    assert _pending(rdb) == 0
    assert _queued(rdb) == 0
    cluster.close()
    LAYOUT.sweep()  # the killed worker could not release its boxes
    assert LAYOUT.leftovers() == []


@pytest.mark.timeout(300)
def test_a_frozen_worker_that_comes_back_publishes_nothing_and_stops_its_run(
    cluster: Cluster, rdb: redis.Redis
) -> None:
    api = cluster.api(1)
    workers = {n: cluster.worker(n, pool_size=2) for n in (2, 3)}
    cluster.start(api, *workers.values())
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        task_id = _submit(client, _python(SLEEPER.format(s=20)))
        with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            read_until_output(sse_frames(response.iter_lines()), "started\n")
        (victim_n,) = [n for n, w in workers.items() if "python3" in w.box_processes().values()]
        victim = workers[victim_n]
        (survivor,) = [w for n, w in workers.items() if n != victim_n]

        victim.proc.send_signal(signal.SIGSTOP)  # its program keeps running in its box; the worker is silent
        try:
            # Past its presence TTL the job goes to the other worker and starts again there.
            wait_until(
                lambda: "python3" in survivor.box_processes().values(),
                SERVER_DEFAULTS.presence_ttl_s + MARGIN_S,
                "the job started again on the other worker",
            )
            assert "python3" in victim.box_processes().values()  # the frozen worker's copy still runs
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        # Back: it learns its job moved on, and stops its copy (long before that copy's 20 s are up).
        wait_until(lambda: "python3" not in victim.box_processes().values(), 15.0, "the frozen worker's run stopped")
        result = _wait_all_done(client, [task_id], 20 + MARGIN_S)[task_id]
        assert (result["status"], result["stdout"]) == ("ok", "started\nfinished\n"), result
        items = _kinds_and_text(_frames(client, task_id))
        assert items == ["started\n", "<requeued>", "started\n", "finished\n", "<exit ok>"], items

        after = client.post("/api/v1/run", json=_python("print('after')\n"))  # both workers serve on
        assert (after.status_code, after.json()["stdout"]) == (200, "after\n"), after.text
    assert victim.proc.poll() is None  # frozen and back, never dead
    assert _pending(rdb) == 0
    for node in cluster.nodes:
        assert node.stop() == 0, node.output()
    assert LAYOUT.leftovers() == []  # its boxes were released like any others


@pytest.mark.timeout(120)
def test_readiness_and_synchronous_runs_say_when_no_worker_serves_the_level(cluster: Cluster) -> None:
    api = cluster.api(1)
    api.wait_ready()
    with httpx.Client(base_url=api.url, timeout=30.0) as client:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (503, "no_worker"), ready.text
        hung = client.post("/api/v1/run", json=_python("print('x')\n"))
        assert hung.status_code == 503, hung.text  # at once, not a hang
        assert "no live worker serves isolation 'jail'" in hung.json()["error"]["message"]
        text = client.post("/run", content="print('x')\n")
        assert text.status_code == 503, text.text
        piston_body = {"language": "python", "version": "*", "files": [{"content": "1"}]}
        piston = client.post("/api/v2/execute", json=piston_body)
        assert piston.status_code == 503, piston.text
        judge0_body = {"language_id": 71, "source_code": "print('x')"}
        judge0 = client.post("/judge0/submissions", params={"wait": "true"}, json=judge0_body)
        assert judge0.status_code == 503, judge0.text
        assert "no live worker" in judge0.text
        assert client.post("/judge0/submissions", json=judge0_body).status_code == 201  # without wait: queued
        assert "no live worker serves isolation 'jail'" in asyncio.run(_mcp_run_code(api.url))
        with grpc.insecure_channel(f"127.0.0.1:{api.grpc_port}") as channel:
            execute = channel.unary_stream("/sandlot.v1.Sandlot/Execute", pb.ExecuteRequest.SerializeToString)
            with pytest.raises(grpc.RpcError) as refused:
                list(execute(pb.ExecuteRequest(language="python", code="print('x')"), timeout=30))
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
            assert "no live worker" in (refused.value.details() or "")
        queued = _submit(client, _python("print('queued')\n"))  # an asynchronous submit still queues

        worker = cluster.worker(2, pool_size=1)
        worker.wait_ready()
        assert client.get("/readyz").status_code == 200
        gvisor = client.get("/readyz", params={"isolation": "gvisor"})  # this worker has no gVisor pool
        assert (gvisor.status_code, gvisor.json()["status"]) == (503, "no_worker"), gvisor.text
        assert _wait_all_done(client, [queued], 60.0)[queued]["stdout"] == "queued\n"
        ran = client.post("/api/v1/run", json=_python("print('now')\n"))
        assert (ran.status_code, ran.json()["stdout"]) == (200, "now\n"), ran.text

        assert worker.stop() == 0  # a stopping worker leaves at once: not counted any more
        assert client.get("/readyz").json()["status"] == "no_worker"
    assert api.stop() == 0
    assert LAYOUT.leftovers() == []
