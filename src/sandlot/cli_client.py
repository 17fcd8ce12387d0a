"""Client commands: send programs to a running sandlot server and follow them.

``sandlot submit`` and ``sandlot result`` speak HTTP through the client library
(``sandlot_client``, its own distribution in clients/python) and exit exactly as
``sandlot run`` does (sandlot/cli_output.py), plus 3 from ``result`` while the
task is not done. The library's typed answers are turned into sandlot's own
``Result`` here, so the exit-code contract stays in one place (cli_output).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import click

from sandlot import cli_stdin
from sandlot.cli_output import (
    EXIT_COMPILE_ERROR,
    EXIT_NOT_PROGRAM,
    ProgramOptions,
    finish,
    program_options,
    read_input,
    reader_left,
)
from sandlot.errors import RejectedError
from sandlot.languages import LanguageRegistry
from sandlot.models import Result, Status

try:
    import sandlot_client
except ImportError as missing:  # sandlot installed without clients/python (its wheel alone, say)
    _CLIENT_MISSING: ImportError | None = missing
else:
    _CLIENT_MISSING = None

DEFAULT_SERVER = "http://127.0.0.1:8080"
EXIT_NOT_DONE = 3  # `sandlot result`: the task is still queued or running
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_CANCEL_TIMEOUT_S = 5.0  # after Ctrl-C, how long the DELETE may take before we give up on it


class _Interrupted(BaseException):
    """A signal asked us to stop while following a task (BaseException: nothing on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Shared by submit and result.
_server_option = click.option(
    "--server", envvar="SANDLOT_SERVER", show_envvar=True, default=DEFAULT_SERVER, show_default=True, help="Server URL."
)
_api_key_option = click.option(
    "--api-key",
    envvar="SANDLOT_API_KEY",
    show_envvar=True,
    default=None,
    help="API key, sent as Authorization: Bearer.",
)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_server_option
@click.option("--session", "session_id", default=None, help="Run in this session's box (its files persist).")
@click.option("--async", "detach", is_flag=True, help="Print the task id and exit 0; see `sandlot result`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object and nothing else on stdout.")
@click.option("--env", "environment", metavar="NAME", default="", help="Run in this environment (server side).")
@program_options
@_api_key_option
def submit(
    file: Path,
    args: tuple[str, ...],
    server: str,
    session_id: str | None,
    detach: bool,
    as_json: bool,
    program: ProgramOptions,
    api_key: str | None,
    environment: str,
) -> None:
    """Run FILE on a sandlot server, streaming its output; ARGS after -- go to the program.

    Exits like `sandlot run`: the program's code, 128+N for signal N, 1 for a
    compile error, 2 for anything not the program's doing (the server refused
    or could not be reached). --json adds task_id to run's JSON. Ctrl-C
    (or SIGTERM, SIGHUP) cancels the task and exits 128+N.
    """
    _need_client(as_json)
    language, limits, isolation = program.language, program.limits, program.isolation
    lang = language or ""
    try:
        # The language from the file's extension as declared (whether it is installed is the server's business).
        lang = language or LanguageRegistry.load().declared_for_file(file.name).name
        source = read_input(file, "FILE")
        stdin = cli_stdin.choose(program.stdin_path, program.no_stdin, live=False)
        assert isinstance(stdin, bytes)  # live=False: never a stream (HTTP sends stdin in the request)
        client = sandlot_client.Sandlot(server, api_key=api_key)
    except RejectedError as exc:
        _finish_failure(Status.REJECTED, str(exc), lang, None, as_json)
    except sandlot_client.SandlotError as exc:
        _fail(exc, lang, None, as_json)
    with client:
        try:
            task = client.submit(
                lang,
                files=[(file.name, source)],
                stdin=stdin,
                args=args,
                limits={k: v for k, v in asdict(limits).items() if v is not None} if limits else None,
                session_id=session_id,
                isolation=isolation,
                environment=environment or None,
            )
        except sandlot_client.SandlotError as exc:
            _fail(exc, lang, None, as_json)
        if detach:  # without an Idempotency-Key, a task just accepted is queued
            click.echo(json.dumps({"task_id": task.id, "status": "queued"}) if as_json else task.id)
            return
        try:
            outcome = _follow(task, lang, as_json, cancel=True)
        except BrokenPipeError:
            with contextlib.suppress(sandlot_client.SandlotError):
                task.cancel(timeout_s=_CANCEL_TIMEOUT_S)  # nobody reads its output any more
            reader_left()
        _finish_task(task.id, outcome, as_json)


@click.command()
@click.argument("task_id")
@_server_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else on stdout.")
@click.option("--wait", is_flag=True, help="If the task is not done, stream its output until it is.")
@_api_key_option
def result(task_id: str, server: str, as_json: bool, wait: bool, api_key: str | None) -> None:
    """Show the output of a task sent with `submit --async`, and exit as `sandlot run` would.

    A task still queued or running: without --wait, print its state (queued or
    running) on stderr and exit 3 (--json: {"task_id", "status"} on stdout);
    with --wait, stream its output until it ends. An unknown task exits 2.
    """
    _need_client(as_json, task_id)
    try:
        client = sandlot_client.Sandlot(server, api_key=api_key)
    except sandlot_client.SandlotError as exc:
        _fail(exc, "", task_id, as_json)
    with client:
        task = client.task(task_id)
        try:
            state = task.state()
        except sandlot_client.SandlotError as exc:
            _fail(exc, "", task_id, as_json)
        if state.result is not None:
            done = _result(state.result)
            if not as_json:
                for stream, data in (
                    (sys.stderr.buffer, done.compile_output),
                    (sys.stdout.buffer, done.stdout),
                    (sys.stderr.buffer, done.stderr),
                ):
                    stream.write(data)
                    stream.flush()
            _finish_task(task_id, done, as_json)
        if not wait:
            if as_json:
                click.echo(json.dumps({"task_id": task_id, "status": state.status}))
            click.echo(state.status, err=True)
            sys.exit(EXIT_NOT_DONE)
        _finish_task(task_id, _follow(task, "", as_json, cancel=False), as_json)


def _follow(task: sandlot_client.Task, language: str, as_json: bool, *, cancel: bool) -> Result:
    """Stream the task's output until its result; a signal ends the wait (and the task, if ``cancel``)."""

    def interrupted(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in _INTERRUPTS}
    for sig, handler in previous.items():
        if handler not in (signal.SIG_IGN, None):  # what was ignored (nohup, a background job) stays ignored
            signal.signal(sig, interrupted)
    try:
        return _result(task.follow(None if as_json else _write_output))
    except _Interrupted as exc:
        for sig in _INTERRUPTS:  # a second Ctrl-C must not cut the cancel short
            signal.signal(sig, signal.SIG_IGN)
        fate = "keeps running"
        if cancel:
            try:
                task.cancel(timeout_s=_CANCEL_TIMEOUT_S)
                fate = "cancelled"
            except sandlot_client.SandlotError as failure:
                fate = f"may still be running: {failure}"
        click.echo(f"sandlot: interrupted; task {task.id} {fate}", err=True)
        sys.exit(128 + exc.signum)
    except sandlot_client.SandlotError as exc:
        _fail(exc, language, task.id, as_json)
    finally:
        for sig, handler in previous.items():
            if handler not in (signal.SIG_IGN, None):
                signal.signal(sig, handler)


def _write_output(output: sandlot_client.Output) -> None:
    stream = sys.stdout.buffer if output.stream == "stdout" and output.stage == "run" else sys.stderr.buffer
    stream.write(output.text.encode())
    stream.flush()


def _finish_task(task_id: str, result: Result, as_json: bool) -> NoReturn:
    """Exit as `run` does; with --json, run's object plus task_id."""
    if not as_json:
        finish(result, as_json=False)  # exits
    click.echo(json.dumps({**result.to_dict(), "task_id": task_id}))
    if result.status in (Status.INTERNAL_ERROR, Status.REJECTED):
        click.echo(f"sandlot: {result.message}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
    sys.exit(EXIT_COMPILE_ERROR if result.status is Status.COMPILE_ERROR else result.shell_exit_code)


def _finish_failure(status: Status, message: str, language: str, task_id: str | None, as_json: bool) -> NoReturn:
    """The server refused, failed or was out of reach: one line on stderr (and one JSON object), exit 2."""
    if as_json:
        click.echo(
            json.dumps({**Result(status=status, language=language, message=message).to_dict(), "task_id": task_id})
        )
    click.echo(f"sandlot: {message}", err=True)
    sys.exit(EXIT_NOT_PROGRAM)


def _fail(exc: sandlot_client.SandlotError, language: str, task_id: str | None, as_json: bool) -> NoReturn:
    """The library's error as the contract's status: the server refused (4xx), or failed or was out of reach."""
    refused = exc.http_status is not None and 400 <= exc.http_status < 500
    _finish_failure(Status.REJECTED if refused else Status.INTERNAL_ERROR, str(exc), language, task_id, as_json)


def _result(result: sandlot_client.Result) -> Result:
    """sandlot's own Result (what cli_output's exit contract reads) from the library's."""
    return Result(
        status=Status(result.status.value),
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout.encode(),
        stderr=result.stderr.encode(),
        compile_output=result.compile_output.encode(),
        wall_time=result.wall_time,
        cpu_time=result.cpu_time,
        memory_peak=result.memory_peak or 0,
        truncated=result.truncated,
        language=result.language,
        message=result.message,
    )


def _need_client(as_json: bool, task_id: str | None = None) -> None:
    """A clear line, not a traceback, when the client library is not installed next to sandlot."""
    if _CLIENT_MISSING is not None:
        message = f"this command needs the sandlot-client package (pip install clients/python): {_CLIENT_MISSING}"
        _finish_failure(Status.INTERNAL_ERROR, message, "", task_id, as_json)
