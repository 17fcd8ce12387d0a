"""Jail vs gVisor, side by side in one run: warm pool boxes, end to end through the engine.

    sudo .venv/bin/python benchmarks/isolation.py --runs 20

For each program: p50/p90 wall time of a whole execution (command sent to a
pre-launched box -> Result) at isolation jail and gvisor, and the ratio. The
box is reset and its next sandbox pre-launched between runs, off the clock,
as the server's pool does. Programs: /bin/true, a Python hello, a Go hello
(compile + run) and an IO-heavy one (2,000 small file writes, then a C compile).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from pathlib import Path

from sandlot.config import load_settings
from sandlot.engine import Engine
from sandlot.languages import LanguageRegistry
from sandlot.models import ExitEvent, Job, SourceFile
from sandlot.sandbox import Box, Sandbox

IO_HEAVY = r"""
cd /tmp && for i in $(seq 1 2000); do echo "line $i" > f$i.txt; done
printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' > m.c && gcc -o m m.c && ./m
"""
PROGRAMS = {
    "/bin/true": ("bash", "/bin/true"),
    "python hello": ("python", "print('hello')"),
    "go hello": ("go", 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }\n'),
    "io heavy": ("bash", IO_HEAVY),
}


async def _one(engine: Engine, box: Box, language: str, code: str) -> float:
    await asyncio.to_thread(box.reset)
    box.prelaunch(engine.prelaunch_binds(box))
    await asyncio.sleep(0.6)  # the sandbox starts off the clock, as in the pool
    prepared = engine.prepare(Job(language=language, files=(SourceFile("main", code.encode()),)))
    started = time.perf_counter()
    async for event in engine.execute(prepared, box):
        if isinstance(event, ExitEvent):
            assert event.result.status.value == "ok", event.result
    return time.perf_counter() - started


async def main(runs: int) -> None:
    settings = dataclasses.replace(
        load_settings(), state_dir=Path("/var/lib/sandlot-bench"), run_dir=Path("/run/sandlot-bench")
    )
    settings = dataclasses.replace(settings, cgroup_name="sandlot-bench", box_uid_base=950_000_000)
    sandbox = Sandbox(settings)
    sandbox.sweep_stale()
    engine = Engine(settings, LanguageRegistry.load(settings.languages_file))
    await asyncio.to_thread(engine.warm_caches)
    boxes = {level: sandbox.open_box(isolation=level) for level in ("jail", "gvisor")}
    try:
        print(f"{'program':14} {'jail p50':>10} {'gvisor p50':>11} {'gvisor p90':>11} {'ratio':>6}")
        for name, (language, code) in PROGRAMS.items():
            times: dict[str, list[float]] = {"jail": [], "gvisor": []}
            for _ in range(runs):
                for level, box in boxes.items():  # interleaved: both levels see the same noise
                    times[level].append(await _one(engine, box, language, code))
            jail = statistics.median(times["jail"]) * 1000
            gvisor = statistics.median(times["gvisor"]) * 1000
            p90 = statistics.quantiles(times["gvisor"], n=10)[-1] * 1000 if runs >= 2 else gvisor
            print(f"{name:14} {jail:8.1f}ms {gvisor:9.1f}ms {p90:9.1f}ms {gvisor / jail:5.1f}x")
    finally:
        for box in boxes.values():
            box.close()
        sandbox.sweep_stale()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
