"""Client commands: send programs to a running sandlot server and follow them.

``sandlot submit`` and ``sandlot result`` speak HTTP (see sandlot/client.py) and
exit exactly as ``sandlot run`` does (sandlot/cli_output.py), plus 3 from
``result`` while the task is not done.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
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
from sandlot.client import DEFAULT_SERVER, ClientError, Output, SandlotClient, language_for_file
from sandlot.errors import RejectedError
from sandlot.models import Result, SourceFile, Status

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
    language, limits, isolation = program.language, program.limits, program.isolation
    lang = language or ""
    try:
        lang = language or language_for_file(file.name)
        source = read_input(file, "FILE")
        stdin = cli_stdin.choose(program.stdin_path, program.no_stdin, live=False)
        assert isinstance(stdin, bytes)  # live=False: never a stream (HTTP sends stdin in the request)
        client = SandlotClient(server, api_key)
    except RejectedError as exc:
        _finish_failure(Status.REJECTED, str(exc), lang, None, as_json)
    except ClientError as exc:
        _finish_failure(exc.status, str(exc), lang, None, as_json)
    with client:
        try:
            task = client.submit(
                lang,
                [SourceFile(file.name, source)],
                stdin=stdin,
                args=args,
                limits=limits,
                session_id=session_id,
                isolation=isolation,
                environment=environment,
            )
        except ClientError as exc:
            _finish_failure(exc.status, str(exc), lang, None, as_json)
        if detach:
            click.echo(json.dumps({"task_id": task.task_id, "status": task.status}) if as_json else task.task_id)
            return
        try:
            outcome = _follow(client, task.task_id, lang, as_json, cancel=True)
        except BrokenPipeError:
            with contextlib.suppress(ClientError):
                client.cancel(task.task_id, timeout_s=_CANCEL_TIMEOUT_S)  # nobody reads its output any more
            reader_left()
        _finish_task(task.task_id, outcome, as_json)


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
    try:
        client = SandlotClient(server, api_key)
    except ClientError as exc:
        _finish_failure(exc.status, str(exc), "", task_id, as_json)
    with client:
        try:
            state = client.get(task_id)
        except ClientError as exc:
            _finish_failure(exc.status, str(exc), "", task_id, as_json)
        if state.result is not None:
            if not as_json:
                for stream, data in (
                    (sys.stderr.buffer, state.result.compile_output),
                    (sys.stdout.buffer, state.result.stdout),
                    (sys.stderr.buffer, state.result.stderr),
                ):
                    stream.write(data)
                    stream.flush()
            _finish_task(task_id, state.result, as_json)
        if not wait:
            if as_json:
                click.echo(json.dumps({"task_id": task_id, "status": state.status}))
            click.echo(state.status, err=True)
            sys.exit(EXIT_NOT_DONE)
        _finish_task(task_id, _follow(client, task_id, "", as_json, cancel=False), as_json)


def _follow(client: SandlotClient, task_id: str, language: str, as_json: bool, *, cancel: bool) -> Result:
    """Stream the task's output until its result; a signal ends the wait (and the task, if ``cancel``)."""

    def interrupted(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in _INTERRUPTS}
    for sig, handler in previous.items():
        if handler not in (signal.SIG_IGN, None):  # what was ignored (nohup, a background job) stays ignored
            signal.signal(sig, interrupted)
    try:
        return client.wait(task_id, None if as_json else _write_output)
    except _Interrupted as exc:
        for sig in _INTERRUPTS:  # a second Ctrl-C must not cut the cancel short
            signal.signal(sig, signal.SIG_IGN)
        fate = "keeps running"
        if cancel:
            try:
                client.cancel(task_id, timeout_s=_CANCEL_TIMEOUT_S)
                fate = "cancelled"
            except ClientError as failure:
                fate = f"may still be running: {failure}"
        click.echo(f"sandlot: interrupted; task {task_id} {fate}", err=True)
        sys.exit(128 + exc.signum)
    except ClientError as exc:
        _finish_failure(exc.status, str(exc), language, task_id, as_json)
    finally:
        for sig, handler in previous.items():
            if handler not in (signal.SIG_IGN, None):
                signal.signal(sig, handler)


def _write_output(output: Output) -> None:
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
