"""A run in a file session vs a plain run, side by side, and the cost of an idle session (issue 16).

Starts a pool of ``--pool`` boxes with pre-launched jails (as ``sandlot serve`` does), opens
``--sessions`` idle sessions (each its own tmpfs workdir), then times ``lease + run /bin/true``
alternately as a plain run and as a run of one session (whose workdir is bound over the box's
/box), ``--runs`` times each per round, two rounds; prints median and minimum of each and the
median difference. Also prints the kernel memory the idle sessions took (MemAvailable, Slab and
Shmem before/after, per session) and the state disk they use (none: tmpfs).

    sudo .venv/bin/python benchmarks/session_run.py [--runs 200] [--sessions 1000] [--pool 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import make_settings, run_in

from sandlot.models import Status
from sandlot.pool import BoxPool
from sandlot.sandbox import Sandbox


def _meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}


async def _main(runs: int, n_sessions: int, size: int) -> None:
    settings = make_settings()
    sandbox = Sandbox(settings)
    pool = BoxPool(sandbox, size, max_waiting=8, max_sessions=n_sessions + 1, prelaunch_binds=lambda box: [])
    await pool.start()
    limits = settings.run_defaults
    try:
        before = _meminfo()
        idle = [await pool.create_session("bench") for _ in range(n_sessions)]
        after = _meminfo()
        per = {
            k: (before[k] - after[k] if k == "MemAvailable" else after[k] - before[k])
            for k in ("MemAvailable", "Slab", "Shmem")
        }
        print(
            f"{n_sessions} idle sessions: "
            + ", ".join(f"{k} {v / max(1, n_sessions) / 1024:.1f} KiB/session" for k, v in per.items())
        )
        print(f"state disk: none ({len(idle)} detached tmpfs workdirs, held by fds: no path, no disk blocks)")
        session = await pool.create_session("bench")

        async def plain() -> None:
            async with pool.lease("bench") as box:
                result = await run_in(box, ["/bin/true"], limits)
            assert result.status is Status.OK, result

        async def in_session() -> None:
            async with pool.lease("bench", session.id) as box:
                result = await run_in(box, ["/bin/true"], limits)
            assert result.status is Status.OK, result

        medians: dict[str, list[float]] = {"plain": [], "session": []}
        for _ in range(2):
            times: dict[str, list[float]] = {"plain": [], "session": []}
            for _ in range(runs):
                for label, one in (("plain", plain), ("session", in_session)):
                    started = time.perf_counter()
                    await one()
                    times[label].append(time.perf_counter() - started)
            for label, ts in times.items():
                median = 1000 * statistics.median(ts)
                medians[label].append(median)
                print(f"{label:<8} median {median:6.2f} ms   min {1000 * min(ts):6.2f} ms   ({runs} runs)")
        diff = statistics.median(medians["session"]) - statistics.median(medians["plain"])
        ratio = statistics.median(medians["session"]) / statistics.median(medians["plain"])
        print(f"session - plain: {diff:+.2f} ms (median of round medians), ratio {ratio:.3f}")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(_main(args.runs, args.sessions, args.pool))


if __name__ == "__main__":
    main()
