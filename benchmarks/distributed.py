"""The distributed mode under load: ingest of API nodes, and executions/s as workers are added.

Everything runs for real on loopback: a ``redis-server`` (AOF on, ``appendfsync
everysec``, as docs/distributed.md recommends, in a temporary directory that is
removed afterwards), ``sandlot serve --redis URL --no-worker`` API nodes and
``sandlot worker --redis URL`` processes, each with its own state and run
directories, cgroup name and box uid range (as several nodes on one host need).
Every process is started here and stopped by its PID (SIGTERM, then SIGKILL if
it overruns its drain).

  ingest     one API node (--pool-size 1, no worker, SANDLOT_MAX_QUEUED=100000):
             ``hey -n 20000 -c 50 -m POST -T text/plain -d "print('hi')"`` on
             /api/v1/execute. Nothing runs the jobs; they only queue. Then the
             same load split over two API nodes: no load balancer here, so two
             hey runs at once, half the requests and half the clients each, and
             the total is all requests over the longer of the two runs. Each is
             measured ``--rounds`` times on the same nodes (this VM's speed
             wanders by a third between identical runs): every round is printed,
             then the medians and in how many rounds the target was met.
  execution  one API node plus 1, 2, 3 workers (--pool-size 2 each), a fresh
             Redis each time: after a warm-up, ``--jobs`` Python hello jobs are
             POSTed to /api/v1/execute (16 connections) and the clock stops when
             the jobs streams are empty (a job leaves it only once its result is
             stored); every result is then checked (status ok, stdout "hi").

    sudo .venv/bin/python benchmarks/distributed.py \
        [--requests 20000] [--rounds 3] [--jobs 200] [--workers 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from procs import free_port, sandlot_command, stop
from sandlot.broker.keys import Keys

HELLO = "print('hi')"
EXPECTED_STDOUT = "hi\n"
KEYS = Keys()  # the default prefix, as the nodes use

INGEST_RATE_TARGET_PER_S = 6000.0
INGEST_P50_TARGET_MS = 6.0
COMPARABLE = "a comparable engine claims 4,303 requests/s and < 8.6 ms"

UID_BASE = 950_000_000  # clear of the tests' 930_000_000 + n * 1000 ranges
UIDS_PER_NODE = 1000
MAX_BOXES = 64
DRAIN_DEADLINE_S = 10.0
START_TIMEOUT_S = 120.0  # a node's start-up warms the language caches
STOP_TIMEOUT_S = DRAIN_DEADLINE_S + 15.0
REDIS_TIMEOUT_S = 10.0
HEY_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 300.0  # the longest one execution series may take
POLL_S = 0.01
SUBMIT_CONNECTIONS = 16
WARMUP_JOBS = 10
MAX_COUNT = 1_000_000


# ------------------------------------------------------------------ processes


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


@contextlib.contextmanager
def _redis_server() -> Iterator[str]:
    """A redis-server with AOF in a temporary directory; yields its URL; stopped by PID, directory removed."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sandlot-bench-redis-"))
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--logfile", str(workdir / "log")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + REDIS_TIMEOUT_S
        client = redis.Redis.from_url(url)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start (exit {proc.poll()})") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(proc, REDIS_TIMEOUT_S)
        shutil.rmtree(workdir, ignore_errors=True)


def _node_env(n: int) -> dict[str, str]:
    """Node n's own state and run directories, cgroup and uid range; no other SANDLOT_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    return env | {
        "SANDLOT_STATE_DIR": f"/var/lib/sandlot-bench-{n}",
        "SANDLOT_RUN_DIR": f"/run/sandlot-bench-{n}",
        "SANDLOT_CGROUP_NAME": f"sandlot-bench-{n}",
        "SANDLOT_BOX_UID_BASE": str(UID_BASE + n * UIDS_PER_NODE),
        "SANDLOT_MAX_BOXES": str(MAX_BOXES),
        "SANDLOT_MAX_QUEUED": "100000",
        "SANDLOT_DRAIN_DEADLINE_S": str(DRAIN_DEADLINE_S),
    }


@dataclass
class _Node:
    n: int
    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int = 0  # 0: a worker

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"node {self.n} exited with {self.proc.returncode}:\n{self.log.read_text()}")
                if self.http_port:  # up: ready, or waiting for its first live worker (503 no_worker)
                    with contextlib.suppress(httpx.TransportError):
                        ready = client.get(self.url + "/readyz")
                        if ready.status_code == 200 or ready.json().get("status") == "no_worker":
                            return
                elif "sandlot worker running" in self.log.read_text(errors="replace"):
                    return
                time.sleep(0.05)
        raise SystemExit(f"node {self.n} not ready within {START_TIMEOUT_S:g} s:\n{self.log.read_text()}")


@dataclass
class _Cluster:
    """The nodes of one configuration; all stopped by PID on exit."""

    redis_url: str
    logdir: Path
    nodes: list[_Node] = field(default_factory=list)

    def _start(self, n: int, argv: list[str], http_port: int = 0) -> _Node:
        log = self.logdir / f"node-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_node_env(n)
            )
        node = _Node(n, proc, log, http_port)
        self.nodes.append(node)
        return node

    def api(self, n: int) -> _Node:
        port = free_port()
        argv = [*sandlot_command(), "serve", "--redis", self.redis_url, "--no-worker", "--pool-size", "1"]
        argv += ["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(free_port())]
        return self._start(n, argv, port)

    def worker(self, n: int, pool_size: int) -> _Node:
        argv = [*sandlot_command(), "worker", "--redis", self.redis_url, "--pool-size", str(pool_size)]
        return self._start(n, [*argv, "--gvisor-pool-size", "0"])  # jail runs only: no gVisor boxes to keep warm

    def stop(self) -> None:
        for node in reversed(self.nodes):
            code = stop(node.proc, STOP_TIMEOUT_S)
            if code != 0:
                print(f"  (node {node.n} exited with {code})", file=sys.stderr)
        self.nodes.clear()


@contextlib.contextmanager
def _cluster(redis_url: str) -> Iterator[_Cluster]:
    with tempfile.TemporaryDirectory(prefix="sandlot-bench-logs-") as logdir:
        cluster = _Cluster(redis_url, Path(logdir))
        try:
            yield cluster
        finally:
            cluster.stop()


# --------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class _Ingest:
    latencies_s: list[float]
    statuses: list[str]
    wall_s: float

    @property
    def rate_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[max(0, -(-99 * len(ordered) // 100) - 1)] * 1e3

    @property
    def non_2xx(self) -> int:
        return sum(1 for s in self.statuses if not s.startswith("2"))


def _hey_argv(requests: int, clients: int) -> list[str]:
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("hey is not installed")
    return [hey, "-n", str(requests), "-c", str(clients), "-m", "POST", "-T", "text/plain", "-d", HELLO, "-o", "csv"]


def _hey_parse(out: str) -> _Ingest:
    rows = list(csv.DictReader(io.StringIO(out)))
    latencies = [float(r["response-time"]) for r in rows]
    wall = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    return _Ingest(latencies, [r["status-code"] for r in rows], wall)


def _hey_parallel(urls: list[str], requests: int, clients: int) -> list[_Ingest]:
    """One hey per URL, all at once, each with its share of the requests and clients."""
    procs = []
    for url in urls:
        argv = [*_hey_argv(requests // len(urls), clients // len(urls)), url + "/api/v1/execute"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=HEY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise SystemExit("hey did not finish in time") from None
        results.append(_hey_parse(out))
    return results


@dataclass(frozen=True)
class _IngestRun:
    runs: list[_Ingest]
    queued: int  # the jobs streams' length afterwards
    api_cpu_s: float  # CPU the API nodes used during the measured hey runs, together
    redis_cpu_s: float


def _ingest(api_nodes: int, requests: int, clients: int, rounds: int) -> list[_IngestRun]:
    """``rounds`` hey runs against ``api_nodes`` API nodes, each with the CPU the API nodes and Redis spent on it."""
    results = []
    with _redis_server() as url, _cluster(url) as cluster:
        nodes = [cluster.api(n) for n in range(1, api_nodes + 1)]
        for node in nodes:
            node.wait_ready()
        _hey_parallel([node.url for node in nodes], 200 * api_nodes, 10 * api_nodes)  # warm-up
        redis_pid = _redis_pid(url)
        client = redis.Redis.from_url(url)
        try:
            for _ in range(rounds):
                api_before, redis_before = sum(_cpu_s(node.proc.pid) for node in nodes), _cpu_s(redis_pid)
                runs = _hey_parallel([node.url for node in nodes], requests, clients)
                api_cpu = sum(_cpu_s(node.proc.pid) for node in nodes) - api_before
                redis_cpu = _cpu_s(redis_pid) - redis_before
                results.append(_IngestRun(runs, _jobs_entries(client), api_cpu, redis_cpu))
        finally:
            client.close()
    return results


def _met(total: _Ingest) -> bool:
    return total.rate_per_s >= INGEST_RATE_TARGET_PER_S and total.p50_ms <= INGEST_P50_TARGET_MS and total.non_2xx == 0


def _report_ingest(label: str, results: list[_IngestRun]) -> None:
    print(f"{label}:")
    totals = []
    for n, result in enumerate(results, 1):
        runs = result.runs
        latencies = [lat for run in runs for lat in run.latencies_s]
        total = _Ingest(latencies, [s for run in runs for s in run.statuses], max(run.wall_s for run in runs))
        totals.append(total)
        print(
            f"  round {n}: {len(latencies)} requests, {total.rate_per_s:,.0f} requests/s, p50 {total.p50_ms:.2f} ms, "
            f"p99 {total.p99_ms:.2f} ms, non-2xx {total.non_2xx}; CPU per request: API node(s) "
            f"{result.api_cpu_s / len(latencies) * 1e3:.3f} ms, redis-server "
            f"{result.redis_cpu_s / len(latencies) * 1e3:.3f} ms; jobs streams' length after: {result.queued}"
        )
        if len(runs) > 1:
            for i, run in enumerate(runs, 1):
                print(
                    f"    hey #{i}: {len(run.latencies_s)} requests in {run.wall_s:.2f} s, {run.rate_per_s:,.0f}/s, "
                    f"p50 {run.p50_ms:.2f} ms, non-2xx {run.non_2xx}"
                )
    rate = statistics.median(total.rate_per_s for total in totals)
    p50 = statistics.median(total.p50_ms for total in totals)
    met = sum(_met(total) for total in totals)
    print(
        f"  median of {len(totals)} rounds: {rate:,.0f} requests/s, p50 {p50:.2f} ms; target >= "
        f"{INGEST_RATE_TARGET_PER_S:,.0f} requests/s, p50 <= {INGEST_P50_TARGET_MS:g} ms, no non-2xx: met in "
        f"{met} of {len(totals)} rounds ({COMPARABLE})"
    )


# ------------------------------------------------------------------ execution


async def _submit_all(base: str, count: int) -> list[str]:
    ids: list[str] = []
    remaining = count
    limits = httpx.Limits(max_connections=SUBMIT_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/api/v1/execute", content=HELLO, headers={"content-type": "text/plain"})
                if response.status_code != 202:
                    raise SystemExit(f"POST /api/v1/execute answered {response.status_code}: {response.text[:300]}")
                ids.append(response.json()["task_id"])

        await asyncio.gather(*(one() for _ in range(SUBMIT_CONNECTIONS)))
    return ids


def _jobs_entries(client: redis.Redis) -> int:
    """Entries in every jobs stream (tenants', returned, inboxes): queued or not yet acknowledged."""
    return sum(int(client.xlen(stream)) for stream in client.smembers(KEYS.streams))


def _wait_drained(redis_url: str, started: float) -> float:
    """Seconds from ``started`` until the jobs streams are empty: every job's result stored."""
    client = redis.Redis.from_url(redis_url)
    try:
        while _jobs_entries(client) > 0:
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise SystemExit(f"jobs not done within {RUN_TIMEOUT_S:g} s")
            time.sleep(POLL_S)
        return time.perf_counter() - started
    finally:
        client.close()


def _check_results(base: str, ids: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for task_id in ids:
            body = client.get(f"/api/v1/tasks/{task_id}").json()
            result = body.get("result") or {}
            if body.get("status") != "done" or result.get("status") != "ok" or result.get("stdout") != EXPECTED_STDOUT:
                raise SystemExit(f"task {task_id}: unexpected {body}")


def _execution(workers: int, pool_size: int, jobs: int) -> float:
    """Executions/s of ``jobs`` hello jobs with one API node and ``workers`` worker processes."""
    with _redis_server() as url, _cluster(url) as cluster:
        api = cluster.api(1)
        worker_nodes = [cluster.worker(n, pool_size) for n in range(2, 2 + workers)]
        for node in [api, *worker_nodes]:
            node.wait_ready()
        warm = asyncio.run(_submit_all(api.url, WARMUP_JOBS * workers))
        _wait_drained(url, time.perf_counter())
        _check_results(api.url, warm)
        started = time.perf_counter()
        ids = asyncio.run(_submit_all(api.url, jobs))
        submitted = time.perf_counter() - started
        elapsed = _wait_drained(url, started)
        _check_results(api.url, ids)
    rate = jobs / elapsed
    print(
        f"{workers} worker(s) x pool {pool_size}: {jobs} jobs in {elapsed:.2f} s = {rate:.1f} executions/s "
        f"(submitting took {submitted:.2f} s)"
    )
    return rate


# --------------------------------------------------------------------- main


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_COUNT}")
    return value


def _worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(not 1 <= c <= 8 for c in counts):
        raise argparse.ArgumentTypeError("a comma-separated list of 1..8")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=_count, default=20_000, help="ingest requests (default 20000)")
    parser.add_argument("--clients", type=_count, default=50, help="ingest connections (default 50)")
    parser.add_argument("--rounds", type=_count, default=3, help="ingest runs per configuration (default 3)")
    parser.add_argument("--jobs", type=_count, default=200, help="jobs per execution run (default 200)")
    parser.add_argument("--pool-size", type=_count, default=2, help="boxes per worker (default 2)")
    parser.add_argument("--workers", type=_worker_counts, default=[1, 2, 3], help="worker counts (default 1,2,3)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-execution", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start")
    if not args.skip_ingest:
        _report_ingest("ingest, 1 API node", _ingest(1, args.requests, args.clients, args.rounds))
        _report_ingest(
            "ingest, 2 API nodes (two hey at once, half each; summed)",
            _ingest(2, args.requests, args.clients, args.rounds),
        )
    if not args.skip_execution:
        rates = {w: _execution(w, args.pool_size, args.jobs) for w in args.workers}
        first = rates[args.workers[0]]
        print("scaling: " + ", ".join(f"{w} worker(s) {r / first:.2f}x" for w, r in rates.items()))
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
