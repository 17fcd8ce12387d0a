"""``sandlot run``'s way through a run, ordered for start-up: judges call it once per test.

Theory of operation
-------------------
cli.py imports ``cli_defer`` first: asyncio, json and subprocess are registered
but not executed. ``open_box`` then takes a box and pre-launches its jail
synchronously (``Box.prelaunch``, the server's pool's path, binding only the
job's language): the helper joins the box's cgroups, bubblewrap builds the
namespaces and the init waits for a command. Meanwhile ``asyncio.run(stream(...))``
loads asyncio (~35 ms here) and drives ``Engine.execute`` on that box, whose
``Box.run`` sets the run's limits and sends the command; output is written as
it comes. The caller closes the box on the main thread and exits without the
interpreter's teardown (``cli_output.exit_at_once``). docs/benchmarks.md has
the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import BinaryIO

from sandlot import cli_stdin
from sandlot.cli_output import FirstUseNotice
from sandlot.engine import Engine, PreparedJob, rejected
from sandlot.errors import ConfigError, IsolationUnavailable, RejectedError, SandboxError, SandlotError
from sandlot.models import ExitEvent, OutputEvent, Result, Status
from sandlot.sandbox import Box, Sandbox


def open_box(engine: Engine, prepared: PreparedJob, isolation: str) -> Box | Result:
    """Take a box and start its jail now, before asyncio is loaded; or the Result saying why not.

    The jail is pre-launched as the server's pool does it (``Box.prelaunch``): helper,
    bubblewrap and the box's init start and wait for the command, which ``Box.run``
    then sends. Only what this job's language binds is bound.
    """
    try:
        box = Sandbox(engine.settings).open_box(None, isolation=isolation)
    except ConfigError as exc:  # the host's set-up, not the program: says what to change
        message = f"configuration error: {exc}"
        return Result(status=Status.INTERNAL_ERROR, message=message, language=prepared.language.name)
    except (SandboxError, IsolationUnavailable) as exc:  # e.g. --isolation gvisor where runsc cannot run
        message = f"sandbox failure: {exc}"
        return Result(status=Status.INTERNAL_ERROR, message=message, language=prepared.language.name)
    try:  # in the job's environment's root, if it names one; a failure to start only means a cold start
        box.prelaunch(engine.job_binds(prepared, box), prepared.rootfs)
    except SandlotError:
        pass  # say, a language cache that cannot be warmed: the run meets it again and reports it
    except BaseException:
        box.close()
        raise
    return box


async def stream(
    engine: Engine,
    prepared: PreparedJob,
    box: Box,
    as_json: bool,
    live_stdin_fd: int | None,
    notice: FirstUseNotice,
) -> Result:
    """Run the prepared job in box, writing its output as it comes (not with --json); its Result."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    out: BinaryIO = sys.stdout.buffer
    err: BinaryIO = sys.stderr.buffer
    result: Result | None = None
    try:
        # aclosing: if writing fails (a closed pipe), the run is ended and its cgroup
        # released here, before the box is closed (by the caller).
        stdin = None if live_stdin_fd is None else cli_stdin.live(live_stdin_fd)
        async with contextlib.aclosing(engine.execute(prepared, box, stdin=stdin)) as events:
            async for event in events:
                notice.done()  # the first event comes after any first-use work
                if isinstance(event, OutputEvent) and not as_json:
                    target = out if event.stream == "stdout" and event.stage == "run" else err
                    target.write(event.data)
                    target.flush()
                elif isinstance(event, ExitEvent):
                    result = event.result
    except RejectedError as exc:
        result = rejected(str(exc), prepared.language.name)
    except SandlotError as exc:
        result = Result(
            status=Status.INTERNAL_ERROR, message=f"sandbox failure: {exc}", language=prepared.language.name
        )
    finally:
        notice.done()
    assert result is not None
    return result
