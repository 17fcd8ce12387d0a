"""``sandlot judge FILE TESTS``: judge a program here, against a directory of N.in/N.out files or a JSON file.

The same flow a server's worker runs (``sandlot.judge.flow``) on a small local pool
(``--parallel`` boxes): one compile, each test in a fresh box, one line per test as it
finishes, then the summary. Exit codes: 0 accepted, 1 any other verdict, 2 a mistake of
the command line or a failure of the sandbox (one line on stderr).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from sandlot.broker import TaskSpec
from sandlot.cli_output import EXIT_NOT_PROGRAM, fail
from sandlot.config import load_settings
from sandlot.engine import Engine
from sandlot.errors import ConfigError, RejectedError, SandlotError
from sandlot.judge.flow import Judge
from sandlot.judge.model import JudgeSpec, Verdict, render_test_result, summarize, summary_dict
from sandlot.judge.parse import parse_judge
from sandlot.languages import LanguageRegistry
from sandlot.models import Event, ExitEvent, StageResultEvent, Status, TestResultEvent
from sandlot.pool import BoxPool
from sandlot.sandbox import Sandbox

_INPUT_SUFFIXES = (".in",)
_ANSWER_SUFFIXES = (".out", ".ans")


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("tests", type=click.Path(path_type=Path, exists=True))
@click.option("-l", "--language", default=None, help="The program's language (default: from FILE's extension).")
@click.option(
    "--checker",
    default="exact",
    show_default=True,
    help="exact, lines, tokens, float:EPS, or a checker program's file (testlib's arguments and exit codes).",
)
@click.option("--interactor", type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Interactor file.")
@click.option("--time-limit", type=float, default=None, help="Seconds of CPU per test.")
@click.option("--wall-time-limit", type=float, default=None, help="Seconds per test.")
@click.option("--memory-limit", type=int, default=None, help="MB per test.")
@click.option("--parallel", type=click.IntRange(1, 64), default=2, show_default=True, help="Tests at once.")
@click.option("--stop-on-first-failure", is_flag=True, help="Skip the tests after the first that fails.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (summary and tests) and nothing else.")
@click.pass_context
def judge(
    ctx: click.Context,
    file: Path,
    tests: Path,
    language: str | None,
    checker: str,
    interactor: Path | None,
    time_limit: float | None,
    wall_time_limit: float | None,
    memory_limit: int | None,
    parallel: int,
    stop_on_first_failure: bool,
    as_json: bool,
) -> None:
    """Judge FILE against TESTS: a directory of N.in and N.out (or N.ans) files, or a JSON file of tests."""
    config: Path | None = ctx.obj.get("config") if ctx.obj else None
    try:
        settings = load_settings(config)
        languages = LanguageRegistry.load(settings.languages_file)
        limits = {"time_limit": time_limit, "wall_time_limit": wall_time_limit, "memory_limit": memory_limit}
        body: dict[str, Any] = {
            "language": language or languages.for_file(file.name).name,
            "files": [{"name": file.name, "content": _read(file)}],
            "tests": load_tests(tests),
            "stop_on_first_failure": stop_on_first_failure,
        }
        if any(v is not None for v in limits.values()):
            body["limits"] = {k: v for k, v in limits.items() if v is not None}
        if Path(checker).is_file():
            body["checker"] = _program(languages, Path(checker))
        else:
            body["checker"] = checker
        if interactor is not None:
            body["interactor"] = _program(languages, interactor)
            if checker == "exact":
                del body["checker"]
        spec = parse_judge(body, tenant="cli")
    except (RejectedError, click.UsageError) as exc:
        raise click.UsageError(str(exc)) from exc
    except ConfigError as exc:
        fail(f"sandlot: configuration error: {exc}")
        return
    engine = Engine(settings, languages)
    try:
        events = asyncio.run(_judge(engine, spec, parallel, as_json))
    except RejectedError as exc:
        raise click.UsageError(str(exc)) from exc
    except SandlotError as exc:
        fail(f"sandlot: sandbox failure: {exc}")
        return
    _finish(events, spec, as_json)


def load_tests(path: Path) -> list[dict[str, Any]]:
    """The tests of a directory (N.in with N.out or N.ans, in N's order) or of a JSON file (a list, or {tests})."""
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise click.UsageError(f"TESTS: {path} is not a JSON file of tests: {exc}") from exc
        tests = data.get("tests") if isinstance(data, dict) else data
        if not isinstance(tests, list):
            raise click.UsageError("TESTS: the JSON must be a list of tests or an object with tests")
        return tests
    inputs = sorted((p for p in path.iterdir() if p.suffix in _INPUT_SUFFIXES), key=_natural)
    if not inputs:
        raise click.UsageError(f"TESTS: no N.in files in {path}")
    tests = []
    for item in inputs:
        test: dict[str, Any] = {"name": item.stem, "stdin": _read(item)}
        answer = next((a for s in _ANSWER_SUFFIXES if (a := item.with_suffix(s)).is_file()), None)
        if answer is not None:
            test["expected_output"] = _read(answer)
        tests.append(test)
    return tests


def _natural(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{path}: cannot read it as UTF-8 text: {exc}") from exc


def _program(languages: LanguageRegistry, path: Path) -> dict[str, str]:
    try:
        return {"language": languages.for_file(path.name).name, "code": _read(path)}
    except RejectedError as exc:
        raise click.UsageError(f"{path}: {exc}") from exc


async def _judge(engine: Engine, spec: TaskSpec, parallel: int, as_json: bool) -> list[Event]:
    sandbox = Sandbox(engine.settings)
    pool = BoxPool(sandbox, parallel, max_waiting=4 * parallel, max_sessions=0, prelaunch_binds=engine.prelaunch_binds)
    await pool.start()
    events: list[Event] = []
    try:
        async for event in Judge(engine).run(spec, pool):
            events.append(event)
            if isinstance(event, TestResultEvent) and not as_json:
                line = render_test_result(event)
                memory = line["memory"] / (1 << 20)
                comment = f"  {event.comment}" if event.comment and event.verdict != Verdict.ACCEPTED else ""
                print(f"test {event.name}: {event.verdict}  {line['time']:.3f} s  {memory:.1f} MB{comment}", flush=True)
    finally:
        await pool.close()
    return events


def _finish(events: list[Event], spec: TaskSpec, as_json: bool) -> None:
    exit_event = events[-1]
    assert isinstance(exit_event, ExitEvent)
    tested = [e for e in events if isinstance(e, TestResultEvent)]

    summary = summarize(tested, len(JudgeSpec.from_json(spec.judge).tests))
    compiled = next((e.result for e in events if isinstance(e, StageResultEvent) and e.stage == "compile"), None)
    compile_output = (compiled or exit_event.result).compile_output.decode("utf-8", "replace")
    if as_json:
        body = {
            **summary_dict(summary),
            "compile_output": compile_output,
            "tests": [render_test_result(t) for t in sorted(tested, key=lambda t: t.test)],
        }
        print(json.dumps(body))
    else:
        if exit_event.result.status is Status.COMPILE_ERROR:
            sys.stderr.write(compile_output)
        print(f"{summary.verdict.value}: {summary.passed}/{summary.total} tests passed", end="")
        print(f", max {summary.max_time:.3f} s, {summary.max_memory / (1 << 20):.1f} MB")
    if exit_event.result.status is Status.INTERNAL_ERROR:
        sys.exit(EXIT_NOT_PROGRAM)
    sys.exit(0 if summary.verdict is Verdict.ACCEPTED else 1)
