"""Many boxes at once: each run sees only its own workdir, runs as its own host uid, and gets its own output."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

from sandlot.config import LimitRequest
from sandlot.engine import Engine
from sandlot.models import Status
from sandlot.sandbox import Sandbox
from tests.conftest import Run, run_job

_RUNS = 20

# Writes its own marker, waits so that every run overlaps, then reports what it sees.
_PROGRAM = """
import json, os, sys, time
i = sys.argv[1]
with open(f"/box/mine-{i}", "w") as f:
    f.write(i)
time.sleep(0.3)
with open("/proc/self/uid_map") as f:
    uid_map = f.read().split()
print(json.dumps({"i": i, "files": sorted(os.listdir("/box")), "uid_map": uid_map, "uid": os.getuid()}))
"""


@dataclass(frozen=True)
class _Outcome:
    index: int
    slot_uid: int
    file_uid: int  # the host owner of the file the run wrote
    run: Run


async def _one(sandbox: Sandbox, engine: Engine, index: int) -> _Outcome:
    box = await asyncio.to_thread(sandbox.open_box)
    try:
        run = await run_job(
            engine, box, "python", _PROGRAM, args=(str(index),), limits=LimitRequest(time_limit=5, wall_time_limit=60)
        )
        file_uid = os.stat(box.workdir / f"mine-{index}", follow_symlinks=False).st_uid
        return _Outcome(index, box.slot.uid, file_uid, run)
    finally:
        await asyncio.to_thread(box.close)


async def test_concurrent_runs_are_isolated(sandbox: Sandbox, engine: Engine) -> None:
    outcomes = await asyncio.gather(*(_one(sandbox, engine, i) for i in range(_RUNS)))

    for outcome in outcomes:
        result = outcome.run.result
        assert result.status is Status.OK, (outcome.index, result)
        assert result.stderr == b""
        # Exactly one line, and it is this run's own: nothing of another run's output got mixed in.
        lines = outcome.run.stdout.splitlines()
        assert len(lines) == 1, lines
        seen = json.loads(lines[0])
        assert seen["i"] == str(outcome.index)
        assert seen["files"] == sorted(["main.py", f"mine-{outcome.index}"])
        # Inside, every box is uid 1000, mapped to one uid of the parent namespace only.
        assert seen["uid"] == 1000
        inside, _outside, count = (int(x) for x in seen["uid_map"])
        assert (inside, count) == (1000, 1)
        # On the host, that uid is the box's own (bwrap nests a user namespace for
        # --disable-userns, so the map seen inside does not show the host uid).
        assert outcome.file_uid == outcome.slot_uid

    host_uids = {o.file_uid for o in outcomes}
    assert len(host_uids) == _RUNS
