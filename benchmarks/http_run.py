"""Latency and throughput of ``POST /api/v1/run`` on a real ``sandlot serve``, next to bare spawns.

The server is started as a subprocess (``sandlot serve`` on free loopback ports,
the default settings, ``--pool-size`` boxes) and stopped by its PID at the end.
After a warm-up, a Python hello world (``print('hi')``) is posted:

  sequential   one request after another, one keep-alive connection
  concurrent   ``--clients`` connections (asyncio + httpx) sharing a fixed count

Each response is checked (200, status ok, stdout ``hi``). The Python client
shares the cores with the server, so its CPU per request is printed too, and if
``hey`` is installed the concurrent series is repeated with it (a Go client,
status codes checked only) as a cross-check. In the same run the baseline:
bare ``python3 -c "print('hi')"`` started with posix_spawn + wait (stdout to
/dev/null, the cheapest way Python can start it), sequentially and from
``--clients`` threads. The table gives p50/p99 in ms, executions (or spawns)
per second, sandlot/bare ratios, the host's load average and the issue's targets.

    sudo .venv/bin/python benchmarks/http_run.py [--pool-size 4] [--sequential 200] [--concurrent 400]

With ``--isolation gvisor`` every request asks for the gVisor level and the
server's gVisor pool gets the ``--pool-size`` warm sandboxes (its jail pool
keeps its default); the target is then gVisor's (sequential p50), and a third
series is added: ``--paced`` requests one after another with ``--pause`` seconds
between them, so that every request finds a warm sandbox started while the
machine was otherwise idle. Back to back on a 2-core host, the replenishing of
the pool (~0.13 s of CPU per gVisor sandbox) shares the cores with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from procs import free_port, sandlot_command, stop

PYTHON = "/usr/bin/python3"  # the interpreter the python language runs in a box
HELLO = "print('hi')"
BODY: dict[str, str] = {"language": "python", "code": HELLO}  # plus "isolation" when one is asked for
EXPECTED_STDOUT = "hi\n"

SEQUENTIAL_P50_TARGET_MS = 14.0
GVISOR_P50_TARGET_MS = 100.0  # issue 5: gVisor, warm pool, end to end through the server
CONCURRENT_RATE_TARGET_PER_S = 136.0
CONCURRENT_P99_TARGET_MS = 80.0
TARGET_CLIENTS = 8  # the concurrency the throughput target is stated for

START_TIMEOUT_S = 120.0  # start-up warms the language caches
STOP_TIMEOUT_S = 40.0  # above the server's 30 s drain deadline
REQUEST_TIMEOUT_S = 30.0
READY_POLL_S = 0.05  # another process: there is nothing to wait on but its port
WARMUP_SEQUENTIAL = 20
MAX_COUNT = 100_000  # keep every run bounded


@dataclass(frozen=True)
class _Sample:
    """Latencies of one series (seconds) and the wall time the series took."""

    latencies_s: list[float]
    wall_s: float
    client_cpu_s: float | None = None  # this process's CPU over the series, when it is the client

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1e3  # nearest rank

    @property
    def rate_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    @property
    def client_cpu_ms(self) -> str:
        if self.client_cpu_s is None:
            return "-"
        return f"{self.client_cpu_s / len(self.latencies_s) * 1e3:.2f}"


# ------------------------------------------------------------------ server


@contextlib.contextmanager
def _server(pool_size: int, config: Path | None, isolation: str = "jail") -> Iterator[str]:
    """A `sandlot serve` subprocess on loopback; yields its base URL, stops it by PID."""
    http_port, grpc_port = free_port(), free_port()
    argv = sandlot_command()
    if config is not None:
        argv += ["--config", str(config)]
    argv += [
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *(("--gvisor-pool-size", str(pool_size)) if isolation == "gvisor" else ("--pool-size", str(pool_size))),
    ]
    base = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, base, log)
            yield base
        finally:
            stop(proc, STOP_TIMEOUT_S)


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"sandlot serve exited with {proc.returncode}:\n{log.read()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(READY_POLL_S)
    raise SystemExit(f"sandlot serve not ready after {START_TIMEOUT_S:.0f} s")


# ---------------------------------------------------------------- clients


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise SystemExit(f"POST /api/v1/run answered {response.status_code}: {response.text[:500]}")
    data: dict[str, Any] = response.json()
    if data.get("status") != "ok" or data.get("stdout") != EXPECTED_STDOUT:
        raise SystemExit(f"unexpected result: {data}")


def _sequential(base: str, count: int, pause_s: float = 0.0) -> _Sample:
    """One request after another; with ``pause_s``, that long between a response and the next request."""
    latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            response = client.post("/api/v1/run", json=BODY)
            latencies.append(time.perf_counter() - t0)
            _check(response)
        wall = time.perf_counter() - started
    return _Sample(latencies, wall, time.process_time() - cpu)


async def _concurrent(base: str, clients: int, count: int) -> _Sample:
    latencies: list[float] = []
    remaining = count
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1  # one event loop: no lock needed between the check and the take
                t0 = time.perf_counter()
                response = await client.post("/api/v1/run", json=BODY)
                latencies.append(time.perf_counter() - t0)
                _check(response)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return _Sample(latencies, wall, time.process_time() - cpu)


def _hey(base: str, clients: int, count: int) -> _Sample | None:
    """The concurrent series again with hey (Go), whose client costs less CPU; None without hey."""
    hey = shutil.which("hey")
    if hey is None:
        return None
    argv = [hey, "-n", str(count), "-c", str(clients), "-m", "POST", "-T", "application/json"]
    argv += ["-d", json.dumps(BODY), "-o", "csv", f"{base}/api/v1/run"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=REQUEST_TIMEOUT_S * count).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    bad = [r["status-code"] for r in rows if r["status-code"] != "200"]
    if len(rows) != count or bad:
        raise SystemExit(f"hey: {len(rows)} responses, not 200: {bad[:10]}")
    latencies = [float(r["response-time"]) for r in rows]
    wall = max(float(r["offset"]) + float(r["response-time"]) for r in rows)  # offsets count from hey's start
    return _Sample(latencies, wall)


# ---------------------------------------------------------------- baseline


def _spawn_once(devnull: int) -> float:
    argv = [PYTHON, "-c", HELLO]
    t0 = time.perf_counter()
    pid = os.posix_spawn(PYTHON, argv, {"PATH": "/usr/bin:/bin"}, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bare {PYTHON} failed with status {status}")
    return elapsed


def _bare_sequential(count: int) -> _Sample:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        started = time.perf_counter()
        latencies = [_spawn_once(devnull) for _ in range(count)]
        return _Sample(latencies, time.perf_counter() - started)
    finally:
        os.close(devnull)


def _bare_concurrent(threads: int, count: int) -> _Sample:
    devnull = os.open(os.devnull, os.O_WRONLY)
    latencies: list[float] = []
    remaining = [count]
    lock = threading.Lock()

    def one_thread() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            elapsed = _spawn_once(devnull)
            with lock:
                latencies.append(elapsed)

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(one_thread) for _ in range(threads)]:
                future.result()
        return _Sample(latencies, time.perf_counter() - started)
    finally:
        os.close(devnull)


# ------------------------------------------------------------------ report


def _row(label: str, what: str, sample: _Sample, unit: str) -> str:
    return (
        f"{label}  {what:<11} {sample.p50_ms:8.1f} {sample.p99_ms:8.1f} {sample.rate_per_s:9.1f} "
        f"{sample.client_cpu_ms:>13}  {unit}"
    )


def _rows(label: str, ours: _Sample, bare: _Sample, hey: _Sample | None = None) -> list[str]:
    pad = " " * len(label)
    rows = [_row(label, "sandlot", ours, "executions/s (httpx)")]
    if hey is not None:
        rows.append(_row(pad, "sandlot", hey, "executions/s (hey)"))
    rows += [
        _row(pad, "bare spawn", bare, "spawns/s"),
        f"{pad}  {'ratio':<11} {ours.p50_ms / bare.p50_ms:7.2f}x {ours.p99_ms / bare.p99_ms:7.2f}x "
        f"{ours.rate_per_s / bare.rate_per_s:8.2f}x {'':>13}  sandlot (httpx) / bare",
    ]
    return rows


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _report(
    args: argparse.Namespace,
    seq: _Sample,
    conc: _Sample,
    hey: _Sample | None,
    bare_seq: _Sample,
    bare_conc: _Sample,
    paced: _Sample | None = None,
) -> None:
    seq_label = f"sequential ({args.sequential})"
    conc_label = f"{args.clients} clients ({args.concurrent})"
    width = max(len(seq_label), len(conc_label))
    print(
        f"POST /api/v1/run, python {HELLO!r}, isolation {args.isolation}; "
        f"sandlot serve --{'gvisor-' if args.isolation == 'gvisor' else ''}pool-size {args.pool_size}; "
        f"{os.cpu_count()} cores; loopback; load average {args.load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(f"{'':{width}}  {'':11} {'p50 ms':>8} {'p99 ms':>8} {'per s':>9} {'client CPU ms':>13}")
    for line in _rows(seq_label.ljust(width), seq, bare_seq):
        print(line)
    for line in _rows(conc_label.ljust(width), conc, bare_conc, hey):
        print(line)
    print("targets:")
    if args.isolation == "gvisor":
        if paced is not None:
            print(
                f"  gVisor p50 <= {GVISOR_P50_TARGET_MS:.0f} ms, warm pool ({args.paced} requests, "
                f"{args.pause:g} s apart): {paced.p50_ms:.1f} ms (p99 {paced.p99_ms:.1f} ms) "
                f"{_verdict(paced.p50_ms <= GVISOR_P50_TARGET_MS)}"
            )
        print(
            f"  gVisor p50 <= {GVISOR_P50_TARGET_MS:.0f} ms, back to back (pool replenished meanwhile): "
            f"{seq.p50_ms:.1f} ms {_verdict(seq.p50_ms <= GVISOR_P50_TARGET_MS)}"
        )
        return
    print(
        f"  sequential p50 <= {SEQUENTIAL_P50_TARGET_MS:.0f} ms: {seq.p50_ms:.1f} ms "
        f"{_verdict(seq.p50_ms <= SEQUENTIAL_P50_TARGET_MS)}"
    )
    if args.clients == TARGET_CLIENTS:
        print(
            f"  {TARGET_CLIENTS} clients >= {CONCURRENT_RATE_TARGET_PER_S:.0f} executions/s: "
            f"{conc.rate_per_s:.1f}/s {_verdict(conc.rate_per_s >= CONCURRENT_RATE_TARGET_PER_S)}"
        )
        print(
            f"  {TARGET_CLIENTS} clients p99 <= {CONCURRENT_P99_TARGET_MS:.0f} ms: {conc.p99_ms:.1f} ms "
            f"{_verdict(conc.p99_ms <= CONCURRENT_P99_TARGET_MS)}"
        )
    else:
        print(f"  (the throughput target is for {TARGET_CLIENTS} clients; this run used {args.clients})")


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_COUNT}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pool_size_pos", nargs="?", type=_count, metavar="POOL_SIZE", help="same as --pool-size")
    parser.add_argument("--pool-size", type=_count, default=4, help="boxes in the server's pool (default 4)")
    parser.add_argument("--sequential", type=_count, default=200, help="sequential requests (default 200)")
    parser.add_argument("--concurrent", type=_count, default=400, help="requests shared by the clients (default 400)")
    parser.add_argument("--clients", type=_count, default=TARGET_CLIENTS, help="concurrent clients (default 8)")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file for the server")
    parser.add_argument(
        "--isolation", choices=("jail", "gvisor"), default="jail", help="level asked for (default jail)"
    )
    parser.add_argument("--paced", type=_count, default=40, help="gvisor: paced requests (default 40)")
    parser.add_argument("--pause", type=float, default=0.5, help="gvisor: seconds between paced requests (0.5)")
    args = parser.parse_args()
    if args.pool_size_pos is not None:
        args.pool_size = args.pool_size_pos
    args.load_before = os.getloadavg()[0]  # other work on the host skews every number: say how much there was

    if args.isolation != "jail":
        BODY["isolation"] = args.isolation
    with _server(args.pool_size, args.config, args.isolation) as base:
        _sequential(base, WARMUP_SEQUENTIAL)
        asyncio.run(_concurrent(base, args.clients, 2 * args.clients))
        seq = _sequential(base, args.sequential)
        paced = _sequential(base, args.paced, args.pause) if args.isolation == "gvisor" else None
        conc = asyncio.run(_concurrent(base, args.clients, args.concurrent))
        hey = _hey(base, args.clients, args.concurrent)
    # The server is stopped first: the baseline does not share the cores with its idle jails.
    _bare_sequential(WARMUP_SEQUENTIAL)
    bare_seq = _bare_sequential(args.sequential)
    bare_conc = _bare_concurrent(args.clients, args.concurrent)
    _report(args, seq, conc, hey, bare_seq, bare_conc, paced)


if __name__ == "__main__":
    main()
