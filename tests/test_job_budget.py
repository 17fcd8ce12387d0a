"""A job's total wall-clock and CPU budget over all its stages, with real stages in a real box."""

from __future__ import annotations

import dataclasses

from sandlot.config import Settings, load_settings
from sandlot.engine import Engine
from sandlot.languages import LanguageRegistry
from sandlot.models import ExitEvent, Job, SourceFile, StageEvent, Status
from sandlot.sandbox import Box

_BURN = "python3 -c 'import time\nwhile time.process_time() < {s}: pass'"


async def _run(engine: Engine, box: Box, commands: tuple[str, ...]) -> tuple[list[str], ExitEvent]:
    job = Job(language="bash", files=(SourceFile("main.sh", b"true\n"),), commands=commands)
    events = [e async for e in engine.execute(engine.prepare(job), box)]
    exit_event = events[-1]
    assert isinstance(exit_event, ExitEvent)
    return [e.stage for e in events if isinstance(e, StageEvent)], exit_event


async def test_the_wall_budget_caps_later_stages(settings: Settings, languages: LanguageRegistry, box: Box) -> None:
    engine = Engine(dataclasses.replace(settings, job_wall_time_budget_s=4.0), languages)
    # Each stage alone is well inside the per-stage wall limit (10 s); together they are not.
    stages, exit_event = await _run(engine, box, ("sleep 1", "sleep 1", "sleep 8", "echo never"))
    assert "command 4" not in stages
    result = exit_event.result
    assert result.status is Status.TIMEOUT
    assert "wall-clock time budget ran out (4 s" in result.message
    assert sum(r.wall_time for _, r in exit_event.stages) < 4.0 + 1.0  # cut at the budget, not at 10 s


async def test_the_cpu_budget_caps_later_stages(settings: Settings, languages: LanguageRegistry, box: Box) -> None:
    engine = Engine(dataclasses.replace(settings, job_cpu_time_budget_s=1.0), languages)
    # A 0.5 s burn, then one that would run to its own 5 s CPU limit: the job has 1 s in all.
    stages, exit_event = await _run(engine, box, (_BURN.format(s=0.5), _BURN.format(s=30)))
    assert stages == ["command 1", "command 2"]
    assert exit_event.stages[0][1].status is Status.OK
    result = exit_event.result
    assert result.status is Status.TIMEOUT
    assert "CPU time budget ran out (1 s" in result.message
    assert result.cpu_time < 1.0


async def test_a_stage_within_its_own_limit_is_not_blamed_on_the_budget(engine: Engine, box: Box) -> None:
    _, exit_event = await _run(engine, box, ("sleep 30",))
    assert exit_event.result.status is Status.TIMEOUT
    assert exit_event.result.message.startswith("wall-clock time limit exceeded")


def test_the_budgets_are_settings() -> None:
    environ = {"SANDLOT_JOB_WALL_TIME_BUDGET_S": "30", "SANDLOT_JOB_CPU_TIME_BUDGET_S": "7.5"}
    settings = load_settings(environ=environ)
    assert (settings.job_wall_time_budget_s, settings.job_cpu_time_budget_s) == (30.0, 7.5)
    assert load_settings(environ={}).job_wall_time_budget_s == 240.0
