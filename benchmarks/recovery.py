"""The distributed mode's recovery: time from a worker's SIGKILL to the last of its jobs done, at defaults.

Everything runs for real on loopback, as in ``distributed.py`` (whose Redis and
node helpers this uses): a ``redis-server`` with AOF, one ``sandlot serve
--redis URL --no-worker`` API node and two ``sandlot worker --redis URL``
workers with the default pool (twice the cores) and default settings (nothing
about recovery is shortened). Per round, on a fresh Redis and fresh nodes:

  1. ``--jobs`` jobs of ``time.sleep(--sleep)`` are POSTed to /api/v1/execute;
  2. ``--kill-after`` seconds later, the jobs the first worker holds are read
     from Redis (the pending entries of its consumer, whose name carries its
     PID), and the worker is SIGKILLed;
  3. the clock runs from the SIGKILL until every one of those jobs is done
     (polled in Redis every 50 ms), bounded by ``--timeout``;
  4. every job's event stream must hold exactly one exit event, status ok;
  5. once the nodes stopped, the killed worker's boxes are swept (as its restart would).

``--pythonpath DIR`` runs the nodes from another checkout's ``src`` (e.g. the
commit before presence-based recovery, as a baseline):

    sudo .venv/bin/python benchmarks/recovery.py [--rounds 3] [--jobs 16] [--sleep 2]
    mkdir -p /tmp/sandlot-before && git archive 8cb2253 src | tar -x -C /tmp/sandlot-before
    sudo .venv/bin/python benchmarks/recovery.py --pythonpath /tmp/sandlot-before/src --rounds 1 --timeout 330
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time

import httpx
import redis

from distributed import _Cluster, _cluster, _node_env, _redis_server
from sandlot.broker.keys import WORKERS_GROUP, Keys
from sandlot.config import load_settings
from sandlot.sandbox import Sandbox

KEYS = Keys()
POLL_S = 0.05
DEFAULT_POOL = max(2, (os.cpu_count() or 1) * 2)  # the worker's default --pool-size
VICTIM = 2  # the node number of the worker that is killed


def _held_by(client: redis.Redis, pid: int) -> list[str]:
    """Task ids of the jobs pending to the consumer of process ``pid`` (named host-PID-random by default)."""
    held: list[str] = []
    for raw_stream in client.smembers(KEYS.streams):
        stream = raw_stream.decode()
        try:
            pending = client.xpending_range(stream, WORKERS_GROUP, min="-", max="+", count=1000)
        except redis.ResponseError:  # the stream went meanwhile
            continue
        for item in pending:
            if f"-{pid}-" not in item["consumer"].decode():
                continue
            rows = client.xrange(stream, min=item["message_id"], max=item["message_id"])
            if rows and b"task" in rows[0][1]:
                held.append(rows[0][1][b"task"].decode())
    return held


def _exit_statuses(client: redis.Redis, task_id: str) -> list[str]:
    """The status of every exit event in the task's stream."""
    statuses = []
    for _, fields in client.xrange(KEYS.events(task_id)):
        event = json.loads(fields[b"event"])
        if event["kind"] == "exit":
            statuses.append(event["result"]["status"])
    return statuses


def _sweep(n: int) -> None:
    """Release what node n's killed process could not: its boxes (cgroup kill, unmount), then its group."""
    sandbox = Sandbox(load_settings(environ=_node_env(n)))
    sandbox.sweep_stale()
    sandbox.driver.remove_group()


def _round(cluster: _Cluster, args: argparse.Namespace) -> float | None:
    """One kill; the seconds from it to the last of the victim's jobs done (None: not within the timeout)."""
    api = cluster.api(1)
    victim, other = cluster.worker(VICTIM, DEFAULT_POOL), cluster.worker(VICTIM + 1, DEFAULT_POOL)
    for node in (api, victim, other):
        node.wait_ready()
    code = f"import time\ntime.sleep({args.sleep})\nprint('done')\n"
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        with httpx.Client(base_url=api.url, timeout=30.0) as http:
            ids = []
            for _ in range(args.jobs):
                response = http.post("/api/v1/execute", json={"language": "python", "code": code})
                response.raise_for_status()
                ids.append(response.json()["task_id"])
        time.sleep(args.kill_after)
        held = _held_by(client, victim.proc.pid)
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait()
        remaining = set(held)
        while remaining and time.monotonic() - killed_at < args.timeout:
            remaining = {t for t in remaining if client.hget(KEYS.state(t), "status") != b"done"}
            time.sleep(POLL_S)
        took = time.monotonic() - killed_at
        print(f"  the killed worker held {len(held)} of {len(ids)} jobs", end="")
        if remaining:
            print(f"; {len(remaining)} still not done {args.timeout:g} s after its SIGKILL")
            return None
        print(f"; the last of them done {took:.1f} s after its SIGKILL")
        deadline = time.monotonic() + args.timeout
        while any(client.hget(KEYS.state(t), "status") != b"done" for t in ids):  # the rest, for the checks
            if time.monotonic() > deadline:
                raise SystemExit("the other jobs did not finish")
            time.sleep(POLL_S)
        for task_id in ids:
            statuses = _exit_statuses(client, task_id)
            if statuses != ["ok"]:
                raise SystemExit(f"task {task_id}: exit events {statuses}, want exactly one ok")
        return took
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=2.0, help="each job's run time (s)")
    parser.add_argument("--kill-after", type=float, default=1.0, help="from the last submit to the SIGKILL (s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="the longest wait for the killed jobs (s)")
    parser.add_argument("--pythonpath", default="", help="run the nodes from this src directory (a baseline)")
    args = parser.parse_args()
    if args.pythonpath:
        os.environ["PYTHONPATH"] = args.pythonpath  # the nodes inherit it: it comes before the installed sandlot
    print(f"load average before: {os.getloadavg()[0]:.1f}; workers with --pool-size {DEFAULT_POOL}, defaults")
    times: list[float] = []
    for n in range(1, args.rounds + 1):
        print(f"round {n}:")
        with _redis_server() as url, _cluster(url) as cluster:
            took = _round(cluster, args)
        _sweep(VICTIM)
        if took is not None:
            times.append(took)
    if times:
        print(f"SIGKILL to the last of its jobs done: median {statistics.median(times):.1f} s, max {max(times):.1f} s")
    print(f"{args.rounds - len(times)} of {args.rounds} rounds not recovered within {args.timeout:g} s")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
