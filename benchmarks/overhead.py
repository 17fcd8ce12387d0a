"""Per-run overhead of a sandlot box over the bare process, measured side by side.

For each command, runs alternate between the bare process (posix_spawn + wait,
the cheapest way Python can start it) and a full sandlot run in one open box
(fresh cgroup per run, bubblewrap namespaces, seccomp, accounting read back), so
both see the same machine noise. Prints medians, the difference and the ratio.

    sudo .venv/bin/python benchmarks/overhead.py [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from sandlot.config import load_settings
from sandlot.models import Result, Status
from sandlot.sandbox import Box, Sandbox

COMMANDS = {
    "/bin/true": ["/bin/true"],
    "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
}


def _bare(argv: list[str]) -> float:
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"})
    os.waitpid(pid, 0)
    return time.perf_counter() - start


async def _boxed(box: Box, argv: list[str], settings_limits: object) -> float:
    start = time.perf_counter()
    result: Result | None = None
    async for item in box.run(argv, limits=settings_limits):  # type: ignore[arg-type]
        if isinstance(item, Result):
            result = item
    elapsed = time.perf_counter() - start
    assert result is not None and result.status is Status.OK, result
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    settings = load_settings()
    sandbox = Sandbox(settings)
    box = sandbox.open_box()
    limits = settings.run_defaults
    try:
        print(f"{'command':<18} {'bare p50':>10} {'sandlot p50':>12} {'overhead':>10} {'ratio':>7}  (runs={args.runs})")
        for name, argv in COMMANDS.items():
            for _ in range(5):  # warm page cache and the box
                _bare(argv)
                await _boxed(box, argv, limits)
            bare: list[float] = []
            boxed: list[float] = []
            for _ in range(args.runs):
                bare.append(_bare(argv))
                boxed.append(await _boxed(box, argv, limits))
            b, s = statistics.median(bare), statistics.median(boxed)
            print(f"{name:<18} {b * 1e3:>8.2f}ms {s * 1e3:>10.2f}ms {(s - b) * 1e3:>+8.2f}ms {s / b:>6.2f}x")
    finally:
        box.close()


if __name__ == "__main__":
    asyncio.run(main())
