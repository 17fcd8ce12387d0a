"""A judge task checked and prepared: the solution, its checker and interactor, each test's limits.

Run twice with the same answer: by the door (``Service.validate``: a mistake is a 4xx before anything
queues) and by the worker (``Judge.run``), which must not trust a spec that crossed a broker.
"""

from __future__ import annotations

import dataclasses

from sandlot.broker import TaskSpec
from sandlot.config import LimitRequest, Settings
from sandlot.engine import Engine, PreparedJob
from sandlot.errors import RejectedError
from sandlot.judge.checkers import parse_builtin
from sandlot.judge.model import JudgeSpec, JudgeTest, Program
from sandlot.languages import OfferedThere
from sandlot.models import Job, Limits, SourceFile


def prepare_judge(
    engine: Engine, spec: TaskSpec, offered_there: OfferedThere | None = None
) -> tuple[JudgeSpec, PreparedJob, PreparedJob | None, PreparedJob | None]:
    """(the judge request, the solution, the custom checker, the interactor), or RejectedError naming the field.

    ``offered_there``: as ``Engine.prepare``'s, for an API node whose store lacks the environment.
    """
    settings = engine.settings
    judge = JudgeSpec.from_json(spec.judge)
    if spec.session_id is not None:
        raise RejectedError(
            "session_id: judge mode runs every test in a fresh box, not in a session", field="session_id"
        )
    if spec.commands:
        raise RejectedError("commands: not with judge mode", field="commands")
    main = engine.prepare(
        spec.to_job(), spec.limits, spec.compile_limits, qualify_fields=True, offered_there=offered_there
    )
    if not judge.tests:
        raise RejectedError("tests: at least one test is needed", field="tests")
    if len(judge.tests) > settings.judge_max_tests:
        raise RejectedError(
            f"tests: {len(judge.tests)} tests; judge_max_tests is {settings.judge_max_tests}", field="tests"
        )
    checker = None
    if isinstance(judge.checker, str):
        parse_builtin(judge.checker)
    else:
        checker = _helper(engine, judge.checker, main.job, offered_there, "checker")
    interactor = None
    if judge.interactor is not None:
        interactor = _helper(engine, judge.interactor, main.job, offered_there, "interactor")
    needs_answer = judge.interactor is None and isinstance(judge.checker, str)
    for i, test in enumerate(judge.tests):
        where = f"tests[{i}]"
        for name, data in (("stdin", test.stdin), ("expected_output", test.expected_output or b"")):
            if len(data) > settings.judge_max_test_bytes:
                raise RejectedError(
                    f"{where}.{name}: {len(data)} bytes; judge_max_test_bytes is {settings.judge_max_test_bytes}",
                    field=f"{where}.{name}",
                )
        if needs_answer and test.expected_output is None:
            raise RejectedError(
                f"{where}.expected_output: required by the {judge.checker!r} checker", field=f"{where}.expected_output"
            )
        test_limits(settings, spec.limits, test, where=f"{where}.limits")
    return judge, main, checker, interactor


def test_limits(settings: Settings, base: LimitRequest | None, test: JudgeTest, *, where: str = "limits") -> Limits:
    """A test's limits: the submission's, with what the test itself sets instead."""
    if test.limits is None:
        return settings.resolve_limits(base, stage="run", where="limits")
    own = {k: v for k, v in dataclasses.asdict(test.limits).items() if v is not None}
    return settings.resolve_limits(dataclasses.replace(base or LimitRequest(), **own), stage="run", where=where)


test_limits.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


def _helper(
    engine: Engine, program: Program, solution: Job, offered_there: OfferedThere | None, who: str
) -> PreparedJob:
    """A checker or interactor, in the solution's environment: the very digest the solution runs in (its
    name may point to another here), checked as the solution is."""
    job = Job(
        program.language,
        (SourceFile("main", program.code.encode()),),
        environment=solution.environment,
        environment_digest=solution.environment_digest,
    )
    try:
        return engine.prepare(job, offered_there=offered_there)
    except RejectedError as exc:
        raise RejectedError(f"{who}: {exc}", field=who) from exc
