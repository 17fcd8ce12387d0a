"""The judge flow: one compile, then every test in a fresh box, checked; one event per test as it finishes.

Theory of operation
-------------------
``Judge.run`` turns a judge task (``TaskSpec.judge``) into events on one pool:

1. Compile, once: the solution in a box of its own (``Engine.compile_in``), then the
   custom checker's and the interactor's, each in its own. The box's workdir after the
   compile (sources, binary, class files) is read out (``engine.read_workdir``, bounded by
   ``judge_max_artifact_bytes``) and the box goes back to the pool. A solution that
   fails to compile makes every test ``compile_error`` and nothing runs; a checker or
   interactor that fails makes every test ``judge_error`` naming which.
2. Tests: each in a fresh box leased from the pool, the compiled workdir written into
   it, the program run with the test's stdin and limits (``Engine.run_in``). Tests run
   in parallel, at most ``judge_parallel_tests`` at once (default half the pool), each
   lease one box through the pool's fair rotation, so other jobs keep getting boxes.
   A test's time is its box's cgroup CPU time: parallel tests do not share a counter.
3. Verdict: the run's own failure (timeout, memory, runtime error, output limit) is the
   verdict; otherwise the checker decides (``checkers.py``; a custom one runs in a box
   of its own after the solution's is returned, with ``input.txt output.txt answer.txt``,
   testlib's order). An interactive test runs in two boxes at once (``interact.py``).
4. ``stop_on_first_failure``: once test i fails, the tests after it that have not
   finished are cancelled (their boxes killed) and reported ``skipped``; the tests
   before it still finish, so the summary's "first failure" is the first by test order.

Sandbox failures and checker failures are ``judge_error``, never a pass (and never a
wrong answer). The last event is one ExitEvent: status ok (judged; the message is the
summary), compile_error, or rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from sandlot.broker import TaskSpec
from sandlot.engine import Engine, PreparedJob, compile_failure
from sandlot.errors import JudgeFailure, RejectedError, SandlotError
from sandlot.judge import interact
from sandlot.judge.checkers import Checked, check_builtin, verdict_of_exit, verdict_of_run
from sandlot.judge.model import JudgeSpec, JudgeTest, Verdict, summarize, summary_message
from sandlot.judge.validate import prepare_judge, test_limits
from sandlot.models import (
    Event,
    ExitEvent,
    Limits,
    OutputEvent,
    Result,
    StageEvent,
    StageResultEvent,
    Status,
    TestResultEvent,
)
from sandlot.pool import BoxPool
from sandlot.workdir import WorkdirFiles, read_workdir, write_workdir

TEST_OUTPUT_BYTES = 16 * 1024  # of each test's stdout and stderr kept in its event (512 tests: at most 16 MiB)
CHECKER_FILES = ("input.txt", "output.txt", "answer.txt")  # testlib's order: the test, the program's, the answer


@dataclass(frozen=True)
class Compiled:
    prepared: PreparedJob
    files: WorkdirFiles  # the workdir after its compile


class Judge:
    """Created once per worker and passed in; holds no state of any one submission."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Taking two boxes at once (an interactive test) is one at a time per worker: two tests each
        # holding one box and waiting for a second could otherwise wait on each other forever.
        self._pairs = asyncio.Lock()

    async def run(self, spec: TaskSpec, pool: BoxPool) -> AsyncGenerator[Event, None]:
        """Judge one task; yields stamped events ending with exactly one ExitEvent."""
        seq = itertools.count(1)

        def stamp(event: Event) -> Event:
            return dataclasses.replace(event, seq=next(seq), time=time.time())

        judge, main, checker, interactor = prepare_judge(self.engine, spec)
        flow = _Flow(self, spec, judge, pool)

        yield stamp(StageEvent("compile"))
        try:
            solution, compiled = await flow.compile(main, "solution")
        except JudgeFailure as exc:
            for event in flow.all_failed(Verdict.JUDGE_ERROR, str(exc)):
                yield stamp(event)
            yield stamp(flow.exit(Status.OK))
            return
        if compiled is not None:
            yield stamp(StageResultEvent("compile", compiled))
        if solution is None:
            assert compiled is not None
            for event in flow.all_failed(Verdict.COMPILE_ERROR, "the solution did not compile"):
                yield stamp(event)
            yield stamp(
                ExitEvent(dataclasses.replace(compiled, language=spec.language), stages=(("compile", compiled),))
            )
            return
        helpers: dict[str, Compiled] = {}
        try:
            for who, prepared in (("checker", checker), ("interactor", interactor)):
                if prepared is not None:
                    helper, result = await flow.compile(prepared, who)
                    if helper is None:
                        output = result.compile_output.decode("utf-8", "replace").strip() if result else ""
                        raise JudgeFailure(f"the {who} failed to compile: {output[:400]}")
                    helpers[who] = helper
        except JudgeFailure as exc:
            for event in flow.all_failed(Verdict.JUDGE_ERROR, str(exc)):
                yield stamp(event)
            yield stamp(flow.exit(Status.OK))
            return

        async for tested in flow.tests(solution, helpers.get("checker"), helpers.get("interactor")):
            yield stamp(tested)
        yield stamp(flow.exit(Status.OK))


class _Flow:
    """One submission's judging: the shared state of its tests."""

    def __init__(self, judge: Judge, spec: TaskSpec, request: JudgeSpec, pool: BoxPool) -> None:
        self.judge = judge
        self.engine = judge.engine
        self.settings = judge.engine.settings
        self.spec = spec
        self.request = request
        self.pool = pool
        self.results: list[TestResultEvent] = []
        parallel = self.settings.judge_parallel_tests or max(1, pool.size // 2)
        self._slots = asyncio.Semaphore(max(1, min(parallel, pool.size)))

    # ------------------------------------------------------------- compile

    async def compile(self, prepared: PreparedJob, who: str) -> tuple[Compiled | None, Result | None]:
        """Compile in a box of its own; (the compiled workdir or None if it failed, the compile's Result if any)."""
        try:
            async with self.pool.lease(self.spec.tenant) as box:
                result = await self.engine.compile_in(prepared, box)
                if result is not None and result.status is not Status.OK:
                    failed = compile_failure(result)
                    if failed.status is Status.COMPILE_ERROR:
                        return None, failed
                    raise JudgeFailure(f"compiling the {who} failed: {failed.message}")
                files = await asyncio.to_thread(read_workdir, box, self.settings.judge_max_artifact_bytes)
        except JudgeFailure:
            raise
        except RejectedError as exc:
            raise JudgeFailure(f"the compiled {who} cannot be copied into each test's box: {exc}") from exc
        except SandlotError as exc:
            raise JudgeFailure(f"compiling the {who} failed: {exc}") from exc
        return Compiled(prepared, files), result

    # --------------------------------------------------------------- tests

    async def tests(
        self, solution: Compiled, checker: Compiled | None, interactor: Compiled | None
    ) -> AsyncGenerator[TestResultEvent, None]:
        finished: asyncio.Queue[TestResultEvent] = asyncio.Queue()

        async def one(number: int, test: JudgeTest) -> None:
            try:
                async with self._slots:
                    event = await self._judge_test(number, test, solution, checker, interactor)
                    if self.request.stop_on_first_failure and event.verdict != Verdict.ACCEPTED:
                        # Here, still holding its slot: no later test can start after this one failed.
                        for later, task in tasks.items():
                            if later > number:
                                task.cancel()  # a no-op for a test already done
            except asyncio.CancelledError:  # stop_on_first_failure: a later test, not run to its end
                finished.put_nowait(self._event(number, Verdict.SKIPPED, Result(Status.OK), "an earlier test failed"))
                raise
            finished.put_nowait(event)

        tasks = {
            number: asyncio.create_task(one(number, test), name=f"judge-test-{number}")
            for number, test in enumerate(self.request.tests, start=1)
        }
        try:
            for _ in tasks:  # every test task puts exactly one event, cancelled or not
                event = await finished.get()
                self.results.append(event)
                yield event
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _judge_test(
        self, number: int, test: JudgeTest, solution: Compiled, checker: Compiled | None, interactor: Compiled | None
    ) -> TestResultEvent:
        limits = self._limits(test)
        try:
            if interactor is not None:
                result, checked = await self._interactive(test, solution, interactor, limits)
                verdict = checked.verdict
                return self._event(number, verdict, result, checked.comment)
            async with self.pool.lease(self.spec.tenant) as box:
                await asyncio.to_thread(write_workdir, box, solution.files)
                result = await _result_of(
                    self.engine.run_in(solution.prepared, box, stdin=test.stdin, limits=limits, args=test.args)
                )
            failed = verdict_of_run(result)
            if failed is not None:
                return self._event(number, failed, result, result.message)
            if checker is not None:
                checked = await self._custom_check(test, result.stdout, checker)
            else:
                assert isinstance(self.request.checker, str) and test.expected_output is not None
                checked = check_builtin(self.request.checker, result.stdout, test.expected_output)
            return self._event(number, checked.verdict, result, checked.comment)
        except SandlotError as exc:
            return self._event(number, Verdict.JUDGE_ERROR, Result(Status.INTERNAL_ERROR), f"sandbox failure: {exc}")

    async def _custom_check(self, test: JudgeTest, output: bytes, checker: Compiled) -> Checked:
        files = (test.stdin, output, test.expected_output or b"")
        async with self.pool.lease(self.spec.tenant) as box:
            await asyncio.to_thread(write_workdir, box, (*checker.files, *zip(CHECKER_FILES, files, strict=True)))
            limits = checker.prepared.limits
            result = await _result_of(
                self.engine.run_in(checker.prepared, box, stdin=b"", limits=limits, args=CHECKER_FILES)
            )
        if result.status not in (Status.OK, Status.RUNTIME_ERROR):
            return Checked(Verdict.JUDGE_ERROR, f"the checker failed: {result.message or result.status.value}")
        return verdict_of_exit(result.exit_code, result.stderr.decode("utf-8", "replace"), "checker")

    async def _interactive(
        self, test: JudgeTest, solution: Compiled, interactor: Compiled, limits: Limits
    ) -> tuple[Result, Checked]:
        async with self.judge._pairs:
            lease_a = self.pool.lease(self.spec.tenant)
            box_a = await lease_a.__aenter__()
            try:
                lease_b = self.pool.lease(self.spec.tenant)
                box_b = await lease_b.__aenter__()
            except BaseException:
                await lease_a.__aexit__(None, None, None)
                raise
        try:
            files = (test.stdin, b"", test.expected_output or b"")
            await asyncio.to_thread(write_workdir, box_a, solution.files)
            await asyncio.to_thread(write_workdir, box_b, (*interactor.files, *zip(CHECKER_FILES, files, strict=True)))
            # The interactor outlives the solution's wall limit: when both wait on each other, the solution
            # is the one stopped (a timeout, its verdict), never the interactor first.
            helper_limits = dataclasses.replace(
                interactor.prepared.limits,
                wall_time_limit_s=max(interactor.prepared.limits.wall_time_limit_s, limits.wall_time_limit_s + 1.0),
            )
            return await interact.run_pair(
                self.engine,
                solution=(solution.prepared, box_a, limits, test.args),
                interactor=(interactor.prepared, box_b, helper_limits, CHECKER_FILES),
            )
        finally:
            await lease_b.__aexit__(None, None, None)
            await lease_a.__aexit__(None, None, None)

    # ------------------------------------------------------------- helpers

    def _limits(self, test: JudgeTest) -> Limits:
        return test_limits(self.settings, self.spec.limits, test)

    def _event(self, number: int, verdict: Verdict, result: Result, comment: str) -> TestResultEvent:
        test = self.request.tests[number - 1]
        # The output is checked already; what travels and is kept with the task is a bounded excerpt.
        cut = len(result.stdout) > TEST_OUTPUT_BYTES or len(result.stderr) > TEST_OUTPUT_BYTES
        result = dataclasses.replace(
            result,
            stdout=result.stdout[:TEST_OUTPUT_BYTES],
            stderr=result.stderr[:TEST_OUTPUT_BYTES],
            truncated=result.truncated or cut,
            language=self.spec.language,
        )
        return TestResultEvent(number, test.name or str(number), verdict.value, result, comment)

    def all_failed(self, verdict: Verdict, why: str) -> list[TestResultEvent]:
        events = [self._event(n, verdict, Result(Status.OK), why) for n in range(1, len(self.request.tests) + 1)]
        self.results.extend(events)
        return events

    def exit(self, status: Status) -> ExitEvent:
        summary = summarize(self.results, len(self.request.tests))
        return ExitEvent(Result(status, language=self.spec.language, message=summary_message(summary)))


async def _result_of(run: AsyncGenerator[OutputEvent | Result, None]) -> Result:
    result: Result | None = None
    async with contextlib.aclosing(run) as items:
        async for item in items:
            if isinstance(item, Result):
                result = item
    assert result is not None
    return result
