"""Per-run overhead of a sandlot box over the bare process, measured side by side.

For each command, runs rotate between three modes so all see the same machine
noise:
  bare         posix_spawn + wait (the cheapest way Python can start it)
  cold         a full sandlot run: fresh cgroup, helper -> bwrap -> init -> command
  prelaunched  what a server's pool does: the box's next jail (fresh namespaces
               and cgroup) was launched after the previous run; the run only sends
               its command. Full accounting either way.
Each run is followed by the same pause in every mode (a request gap): the pool
uses it to launch the next jail, the way a server does between requests.

    sudo .venv/bin/python benchmarks/overhead.py [--runs 100] [--gap-ms 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from sandlot.config import load_settings
from sandlot.models import Limits, Result, Status
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


async def _boxed(box: Box, argv: list[str], limits: Limits) -> tuple[float, float]:
    """(time until the Result is in hand, time until the box is free again)."""
    start = time.perf_counter()
    result: Result | None = None
    to_result = 0.0
    async for item in box.run(argv, limits=limits):
        if isinstance(item, Result):
            result = item
            to_result = time.perf_counter() - start
    released = time.perf_counter() - start
    assert result is not None and result.status is Status.OK, result
    return to_result, released


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=30.0)
    args = parser.parse_args()
    gap = args.gap_ms / 1000
    settings = load_settings()
    sandbox = Sandbox(settings)
    box = sandbox.open_box()
    limits = settings.run_defaults
    try:
        print(
            f"runs={args.runs} gap={args.gap_ms:g} ms   (p50 ms until the Result is in hand; overhead, ratio vs bare)"
        )
        columns = ("bare", "cold", "overhead", "ratio", "prelaunched", "overhead", "ratio")
        widths = (7, 7, 9, 6, 12, 9, 6)
        print(f"{'command':<16} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
        for name, argv in COMMANDS.items():
            bare: list[float] = []
            cold: list[float] = []
            warm: list[float] = []
            warm_free: list[float] = []
            for i in range(args.runs + 5):  # the first five warm the page cache
                b = _bare(argv)
                await asyncio.sleep(gap)
                c, _ = await _boxed(box, argv, limits)
                box.prelaunch()
                await asyncio.sleep(gap)
                w, w_free = await _boxed(box, argv, limits)
                await asyncio.sleep(gap)
                if i >= 5:
                    bare.append(b)
                    cold.append(c)
                    warm.append(w)
                    warm_free.append(w_free)
            b, c, w, f = (statistics.median(x) * 1e3 for x in (bare, cold, warm, warm_free))
            row = f"{name:<16} {b:>7.2f} {c:>7.2f} {c - b:>+9.2f} {c / b:>5.2f}x"
            row += f" {w:>12.2f} {w - b:>+9.2f} {w / b:>5.2f}x   (box free again after {f:.2f})"
            print(row)
    finally:
        box.close()


if __name__ == "__main__":
    asyncio.run(main())
