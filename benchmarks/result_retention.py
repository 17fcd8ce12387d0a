"""Server RSS over a soak of ``POST /api/v1/run`` with large outputs: what retained results cost.

Each series starts a real ``sandlot serve`` (free loopback ports, ``--pool-size``
boxes) and stops it by its PID; ``--clients`` connections post, for
``--duration`` seconds, Python programs writing 0 to 200 kB of stdout (sizes
from a fixed seed, the same in every series), checking each answer. The
server's VmRSS is sampled every ``--every`` seconds. Three series:

  unbounded   ``result_memory_bytes`` far above anything the soak makes (what sandlot did before the budget)
  budget      the default TTL (600 s) with ``--budget-mb`` of finished output in memory, the rest on disk
  short TTL   ``result_ttl_s`` 10 s: the baseline, results dropped almost at once

It prints RSS over time for each and the final ratios budget/short-TTL and
unbounded/short-TTL.

    sudo .venv/bin/python benchmarks/result_retention.py [--duration 60] [--budget-mb 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator

import httpx

from procs import free_port, sandlot_command, stop

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
MAX_OUTPUT_BYTES = 200_000
SEED = 12


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def _server(pool_size: int, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    http_port, grpc_port = free_port(), free_port()
    argv = [*sandlot_command(), "serve", "--host", "127.0.0.1", "--http-port", str(http_port)]
    argv += ["--grpc-port", str(grpc_port), "--pool-size", str(pool_size)]
    base = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            with httpx.Client(base_url=base, timeout=2.0) as client:
                while True:
                    if proc.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"sandlot serve exited with {proc.returncode}:\n{log.read()}")
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/readyz").status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise SystemExit("sandlot serve did not get ready")
                    time.sleep(0.2)
            yield base, proc.pid
        finally:
            stop(proc, STOP_TIMEOUT_S)


async def _soak(base: str, pid: int, clients: int, duration_s: float, every_s: float) -> tuple[int, list[float]]:
    sizes = random.Random(SEED)
    done = 0
    end = time.monotonic() + duration_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < end:
            size = sizes.randrange(MAX_OUTPUT_BYTES)
            code = f"import sys\nsys.stdout.write('x' * {size})\n"
            answer = await http.post("/api/v1/run", json={"language": "python", "code": code})
            data = answer.json()
            if answer.status_code != 200 or data.get("status") != "ok" or len(data.get("stdout", "")) != size:
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text[:300]}")
            done += 1

    samples = [_rss_mb(pid)]

    async def sampler() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(every_s)
            samples.append(_rss_mb(pid))

    async with httpx.AsyncClient(base_url=base, timeout=120.0) as http:
        await asyncio.gather(sampler(), *(client(http) for _ in range(clients)))
    return done, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of soak per series")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--budget-mb", type=int, default=32, help="result_memory_bytes of the budget series, MiB")
    args = parser.parse_args()
    series = {
        "unbounded": {"SANDLOT_RESULT_MEMORY_BYTES": str(1 << 40)},
        "budget": {"SANDLOT_RESULT_MEMORY_BYTES": str(args.budget_mb << 20)},
        "short TTL": {"SANDLOT_RESULT_TTL_S": "10", "SANDLOT_RESULT_MEMORY_BYTES": str(1 << 40)},
    }
    final: dict[str, float] = {}
    for name, env in series.items():
        with _server(args.pool_size, env) as (base, pid):
            done, samples = asyncio.run(_soak(base, pid, args.clients, args.duration, args.every))
        final[name] = samples[-1]
        trace = " ".join(f"{mb:.0f}" for mb in samples)
        print(f"{name:>10}: {done / args.duration:5.1f} runs/s, RSS MB every {args.every:g} s: {trace}")
    base_mb = final["short TTL"]
    print(
        f"final RSS: budget/short TTL = {final['budget'] / base_mb:.2f}x, "
        f"unbounded/short TTL = {final['unbounded'] / base_mb:.2f}x, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
