"""Judge mode against the old way, and how much the reported CPU time of one program varies.

1. 100 tests of a C++ solution judged in one ``POST /api/v1/judge`` (one compile, each test in
   a fresh box, ``--parallel`` at once) vs the old way in the same run: 100 ``POST /api/v1/run``
   of the same source, one per test (each compiles again), from as many concurrent clients as
   the judge runs tests at once. Same service, same pool; the two alternate ``--rounds`` times.
   Both must give the same 100 answers.
2. The spread of the reported time (the box's cgroup CPU time) of one C++ program doing a fixed
   amount of work, judged as 50 identical tests one at a time: once with the rest of the pool
   idle, once with every other box busy burning CPU (``while(1)`` runs); min, median, max and
   stdev, with the wall time's for contrast.

Runs an in-process Service (memory broker) with the default settings (state under
/var/lib/sandlot) and the HTTP app over an in-process transport:

    sudo .venv/bin/python benchmarks/judge.py [--pool-size 4] [--tests 100] [--rounds 2] [--spread-runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sandlot.api.http.app import create_app
from sandlot.config import ServerSettings, Settings, load_settings
from sandlot.service import Service

SUM = """#include <iostream>
int main() { long long a, b; std::cin >> a >> b; std::cout << a + b << "\\n"; }
"""
# A fixed amount of work (about 0.1 s of CPU here) whose result the compiler cannot precompute.
WORK = """#include <iostream>
int main() {
    unsigned long long n; std::cin >> n;
    unsigned long long x = n;
    for (unsigned long long i = 0; i < 60000000ULL; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    std::cout << (x == 0 ? "zero" : "done") << "\\n";
}
"""
HOG = "print('burning', flush=True)\nwhile True:\n    pass\n"
_TIMEOUT_S = 3600.0


def _tests(count: int) -> list[dict[str, str]]:
    return [{"stdin": f"{i} {i * 7}\n", "expected_output": f"{i * 8}\n"} for i in range(count)]


async def _judge(client: httpx.AsyncClient, tests: list[dict[str, str]], code: str = SUM) -> tuple[float, Any]:
    start = time.perf_counter()
    response = await client.post("/api/v1/judge", json={"language": "cpp", "code": code, "tests": tests})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


async def _old_way(client: httpx.AsyncClient, tests: list[dict[str, str]], clients: int) -> tuple[float, list[bool]]:
    """One /api/v1/run per test (compiled each time), ``clients`` at once; whether each output was right."""
    slots = asyncio.Semaphore(clients)

    async def one(test: dict[str, str]) -> bool:
        async with slots:
            body = {"language": "cpp", "code": SUM, "stdin": test["stdin"]}
            response = await client.post("/api/v1/run", json=body)
            response.raise_for_status()
            return bool(response.json()["stdout"] == test["expected_output"])

    start = time.perf_counter()
    right = await asyncio.gather(*(one(test) for test in tests))
    return time.perf_counter() - start, list(right)


def _spread(values: list[float]) -> str:
    return (
        f"min {min(values) * 1000:.1f} ms, median {statistics.median(values) * 1000:.1f} ms, "
        f"max {max(values) * 1000:.1f} ms, stdev {statistics.stdev(values) * 1000:.2f} ms "
        f"({statistics.stdev(values) / statistics.mean(values) * 100:.1f}% of the mean)"
    )


async def _time_spread(client: httpx.AsyncClient, runs: int, label: str) -> None:
    tests = [{"stdin": "12345\n", "expected_output": "done\n"} for _ in range(runs)]
    body = {"language": "cpp", "code": WORK, "tests": tests}
    response = await client.post("/api/v1/judge", json=body)
    response.raise_for_status()
    answer = response.json()
    assert answer["verdict"] == "accepted", answer
    cpu = [t["time"] for t in answer["tests"]]
    wall = [t["wall_time"] for t in answer["tests"]]
    print(f"  {label}: cpu_time {_spread(cpu)}")
    print(f"  {' ' * len(label)}  wall_time {_spread(wall)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spread-runs", type=int, default=50)
    options = parser.parse_args()
    pool = options.pool_size

    settings = dataclasses.replace(load_settings(), judge_parallel_tests=pool)
    async with _serving(settings, pool) as (service, client):
        await _judge(client, _tests(2))  # warm-up: caches, the first compile
        tests = _tests(options.tests)
        print(f"1. {options.tests} tests of a C++ solution, pool of {pool} boxes, {pool} at once")
        judged, old = [], []
        for _ in range(options.rounds):
            elapsed, answer = await _judge(client, tests)
            assert answer["passed"] == options.tests, answer["verdict"]
            judged.append(elapsed)
            elapsed, right = await _old_way(client, tests, pool)
            assert all(right)
            old.append(elapsed)
        best_judge, best_old = min(judged), min(old)
        print(f"  one judge request:       {' '.join(f'{t:.2f}' for t in judged)} s (best {best_judge:.2f} s)")
        print(f"  {options.tests} single submissions: {' '.join(f'{t:.2f}' for t in old)} s (best {best_old:.2f} s)")
        print(f"  the old way takes {best_old / best_judge:.1f}x as long")

    print(f"2. reported time of one C++ program, {options.spread_runs} runs one at a time")
    async with _serving(dataclasses.replace(settings, judge_parallel_tests=1), pool) as (service, client):
        await _time_spread(client, options.spread_runs, "pool idle")
        hogs = []
        for _ in range(pool - 1):
            body = {"language": "python", "code": HOG, "limits": {"time_limit": 60, "wall_time_limit": 120}}
            queued = await client.post("/api/v1/execute", json=body)
            hogs.append(queued.json()["task_id"])
        for task_id in hogs:  # each burns from its first output on
            async for event in service.broker.subscribe("public", task_id):
                if event.kind == "output":
                    break
        try:
            await _time_spread(client, options.spread_runs, "pool busy")
        finally:
            for task_id in hogs:
                await client.delete(f"/api/v1/tasks/{task_id}")


@contextlib.asynccontextmanager
async def _serving(settings: Settings, pool: int) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = await Service.start(settings, ServerSettings(pool_size=pool, gvisor_pool_size=0))
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://sandlot", timeout=_TIMEOUT_S) as client:
            yield service, client
    finally:
        await service.stop()


if __name__ == "__main__":
    asyncio.run(main())
