"""Output written before a kill is delivered whole, and a kill always ends the run.

The monitor reads a killed box's pipes up to EOF before it builds the Result.
These tests kill at the moments that matter: while data the program wrote sits
unread in the pipe (the event loop is held, so nothing can read it first), and
while a process outside the box still holds the pipe (no EOF ever comes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.models import OutputEvent, Result, StageEvent, Status
from sandlot.sandbox import Box, Sandbox
from tests.conftest import run_job

_PYTHON = "/usr/bin/python3"
_BULK = 50_000  # what the program writes while the test holds the loop: fits in a 64 KiB pipe
_WAIT_S = 60.0  # a bound for a run that should end within a second or two; hit only by a hang

# Writes its first line, then the bulk, then opens the FIFO: once the host's open of its read end
# returns, every byte is in the pipe. Then it blocks until killed.
_WRITER = f"""
import os, time
os.write(1, b"first\\n")
os.write(1, b"x" * {_BULK})
os.close(os.open("sync", os.O_WRONLY))
time.sleep(600)
"""


def _fifo(box: Box, name: str) -> Path:
    path = box.workdir / name
    os.mkfifo(path, 0o600)
    os.chown(path, box.slot.uid, box.slot.gid)
    return path


async def _run_and_kill_at_sync(
    box: Box, settings: Settings, on_sync: Callable[[], None] | None = None
) -> tuple[bytes, Result]:
    """Run _WRITER; at its first output event, wait (holding the loop) until it wrote everything, then cancel."""
    sync = _fifo(box, "sync")
    box.write_file("main.py", _WRITER.encode())
    limits = dataclasses.replace(settings.run_defaults, wall_time_limit_s=_WAIT_S)
    streamed = bytearray()
    result: Result | None = None
    async with asyncio.timeout(_WAIT_S):
        async for item in box.run([_PYTHON, "-u", "main.py"], limits=limits):
            if isinstance(item, OutputEvent):
                if not streamed:
                    # Blocking on purpose: the loop must not run (nor read the pipe) until the kill.
                    fd = os.open(sync, os.O_RDONLY)
                    os.close(fd)
                    if on_sync is not None:
                        on_sync()
                    box.cancel_run()
                streamed += item.data
            elif isinstance(item, Result):
                result = item
    assert result is not None
    return bytes(streamed), result


async def test_output_unread_at_a_cancel_is_delivered_whole(box: Box, settings: Settings) -> None:
    streamed, result = await _run_and_kill_at_sync(box, settings)
    expected = b"first\n" + b"x" * _BULK
    assert result.stdout == expected
    assert streamed == expected  # the events carry it too, in order
    assert result.status is Status.SIGNALED
    assert "cancelled" in result.message


async def test_a_cancel_during_the_compile_says_cancelled_not_compile_error(engine: Engine, box: Box) -> None:
    box.cancel_run()  # as a cancel that lands while the compiler runs: the stage is killed at once
    run = await run_job(engine, box, "c", "int main(void) { return 0; }\n")
    assert run.result.status is Status.SIGNALED, run.result
    assert run.result.cancelled
    assert not any(isinstance(e, StageEvent) and e.stage == "run" for e in run.events)


async def test_a_pipe_held_outside_the_box_does_not_hang_the_run(
    box: Box, sandbox: Sandbox, settings: Settings
) -> None:
    held: list[int] = []

    def hold_stdout() -> None:
        # Root opens the box's stdout pipe through /proc: a writer the kill cannot end.
        cgroup = sandbox.driver.open_existing(box.slot.cgroup_name)
        assert cgroup is not None
        pid = sorted(cgroup.pids())[0]
        held.append(os.open(f"/proc/{pid}/fd/1", os.O_WRONLY))

    try:
        _, result = await _run_and_kill_at_sync(box, settings, hold_stdout)
    finally:
        for fd in held:
            os.close(fd)
    assert held
    assert result.stdout == b"first\n" + b"x" * _BULK
    assert "cancelled" in result.message
