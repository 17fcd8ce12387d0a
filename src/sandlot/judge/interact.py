"""An interactive test: the solution and the interactor, each in its own box, talking through the host.

Theory of operation
-------------------
Each side's stdout arrives here as output events (``Box.run``); each chunk is queued
for the other side's stdin (an async iterator the box feeds to its stdin pipe). When
a side ends, its queue gets None: the other side reads end of file. Nothing waits
without a bound: each side has its wall limit, and the interactor's is longer than
the solution's, so two programs waiting on each other end with the solution's timeout.

The verdict: if the interactor ended first with a rejection (it caught a wrong
guess and left; the solution then died of the closed pipe, or waited), that is it.
Otherwise a solution that failed (timeout, memory, runtime error) fails by itself;
else the interactor's exit code decides, as a checker's does (testlib's convention).
The interactor gets the test's input as ``input.txt`` (and ``output.txt``,
``answer.txt``, testlib's argument order) and its stderr is the comment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from sandlot.engine import Engine, PreparedJob
from sandlot.judge.checkers import Checked, verdict_of_exit, verdict_of_run
from sandlot.judge.model import Verdict
from sandlot.models import Limits, OutputEvent, Result, Status
from sandlot.sandbox import Box

Side = tuple[PreparedJob, Box, Limits, tuple[str, ...]]  # what runs, where, with which limits and arguments


async def run_pair(engine: Engine, *, solution: Side, interactor: Side) -> tuple[Result, Checked]:
    """Run both sides cross-connected; (the solution's Result, the verdict)."""
    to_solution: asyncio.Queue[bytes | None] = asyncio.Queue()
    to_interactor: asyncio.Queue[bytes | None] = asyncio.Queue()
    ended: list[str] = []  # the order in which the two sides ended

    async def side(
        who: str, what: Side, stdin: asyncio.Queue[bytes | None], out: asyncio.Queue[bytes | None]
    ) -> Result:
        prepared, box, limits, args = what
        run = engine.run_in(prepared, box, stdin=_stream(stdin), limits=limits, args=args)
        return await _pump(run, out, who, ended)

    sides = [
        asyncio.create_task(side("solution", solution, to_solution, to_interactor)),
        asyncio.create_task(side("interactor", interactor, to_interactor, to_solution)),
    ]
    try:
        solved, judged = await asyncio.gather(*sides)
    finally:
        # One side failed (the sandbox): the other must not run on in a box about to go back to the pool.
        for task in sides:
            task.cancel()
        for task in sides:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    comment = judged.stderr.decode("utf-8", "replace")
    if judged.status not in (Status.OK, Status.RUNTIME_ERROR):
        return solved, Checked(Verdict.JUDGE_ERROR, f"the interactor failed: {judged.message or judged.status.value}")
    verdict = verdict_of_exit(judged.exit_code, comment, "interactor")
    if ended[0] == "interactor" and verdict.verdict is not Verdict.ACCEPTED:
        return solved, verdict
    if solved.status is not Status.OK:
        failed = verdict_of_run(solved)
        assert failed is not None
        return solved, Checked(failed, solved.message)
    return solved, verdict


async def _pump(
    run: AsyncGenerator[OutputEvent | Result, None], out: asyncio.Queue[bytes | None], who: str, ended: list[str]
) -> Result:
    result: Result | None = None
    try:
        async with contextlib.aclosing(run) as items:
            async for item in items:
                if isinstance(item, Result):
                    result = item
                    ended.append(who)
                    out.put_nowait(None)  # the other side reads end of file now, before this box's teardown
                elif item.stream == "stdout":
                    out.put_nowait(item.data)
    finally:
        out.put_nowait(None)
    assert result is not None
    return result


async def _stream(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes | None]:
    while True:
        chunk = await queue.get()
        yield chunk
        if chunk is None:
            return
