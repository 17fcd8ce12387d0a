"""The ``sandlot`` command: thin commands that call the layers.

Exit codes: the program's own code (128+N when it died of signal N), 1 for a
compile error, 2 for anything that is not the program's doing (bad input, a
sandbox failure), always with a one-line message on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import click

from sandlot import __version__
from sandlot.client import DEFAULT_SERVER, ClientError, Output, SandlotClient, language_for_file
from sandlot.config import LimitRequest, Settings, load_settings
from sandlot.engine import Engine, rejected
from sandlot.errors import ConfigError, RejectedError, SandboxError, SandlotError
from sandlot.languages import LanguageRegistry
from sandlot.models import ExitEvent, Job, OutputEvent, Result, SourceFile, Status

EXIT_NOT_PROGRAM = 2
EXIT_COMPILE_ERROR = 1


class _UsageFailure(Exception):
    """A user mistake found after parsing: one line on stderr, exit 2."""


def _settings(ctx: click.Context) -> Settings:
    config: Path | None = ctx.obj.get("config") if ctx.obj else None
    return load_settings(config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sandlot")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """sandlot: run untrusted code safely and fast."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-l", "--language", "language", default=None, help="Language (default: from the file extension).")
@click.option("--stdin", "stdin_path", default=None, help="File to feed as stdin, or - for sandlot's own stdin.")
@click.option("--time-limit", type=float, default=None, help="CPU time limit, seconds.")
@click.option("--wall-time-limit", type=float, default=None, help="Wall-clock limit, seconds.")
@click.option("--memory-limit", type=int, default=None, help="Memory limit, MB.")
@click.option("--max-processes", type=int, default=None, help="Processes and threads.")
@click.option("--max-file-size", type=int, default=None, help="Largest file the program may write, KB.")
@click.option("--max-output", type=int, default=None, help="stdout+stderr cap, KB.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object and nothing else on stdout.")
@click.pass_context
def run(
    ctx: click.Context,
    file: Path,
    args: tuple[str, ...],
    language: str | None,
    stdin_path: str | None,
    time_limit: float | None,
    wall_time_limit: float | None,
    memory_limit: int | None,
    max_processes: int | None,
    max_file_size: int | None,
    max_output: int | None,
    as_json: bool,
) -> None:
    """Run FILE in a fresh sandbox; ARGS after -- go to the program."""
    limits = LimitRequest(time_limit, wall_time_limit, memory_limit, max_processes, max_file_size, max_output)
    try:
        settings = _settings(ctx)
        languages = LanguageRegistry.load(settings.languages_file)
        lang = languages.get(language) if language else languages.for_file(file.name)
        source = _read_input(file, "FILE")
        stdin = (
            b""
            if stdin_path is None
            else (sys.stdin.buffer.read() if stdin_path == "-" else _read_input(Path(stdin_path), "--stdin"))
        )
        job = Job(
            language=lang.name, files=(SourceFile(file.name, source),), stdin=stdin, args=args, user_file_name=file.name
        )
        engine = Engine(settings, languages)
        prepared = engine.prepare(job, limits)
    except RejectedError as exc:
        _finish_rejected(str(exc), language or "", as_json)
        return
    except ConfigError as exc:
        _fail(f"sandlot: configuration error: {exc}")
        return
    result = asyncio.run(_run_streaming(engine, prepared, as_json))
    _finish(result, as_json)


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise RejectedError(f"{what}: no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise RejectedError(f"{what}: is a directory: {path}") from exc
    except OSError as exc:
        raise RejectedError(f"{what}: cannot read {path}: {exc.strerror}") from exc


async def _run_streaming(engine: Engine, prepared: Any, as_json: bool) -> Result:
    from sandlot.sandbox import Sandbox

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        sandbox = Sandbox(engine.settings)
        box = await asyncio.to_thread(sandbox.open_box)
    except (ConfigError, SandboxError) as exc:
        return Result(status=Status.INTERNAL_ERROR, message=f"sandbox failure: {exc}", language=prepared.language.name)
    out: BinaryIO = sys.stdout.buffer
    err: BinaryIO = sys.stderr.buffer
    result: Result | None = None
    try:
        async for event in engine.execute(prepared, box):
            if isinstance(event, OutputEvent) and not as_json:
                stream = out if event.stream == "stdout" and event.stage == "run" else err
                stream.write(event.data)
                stream.flush()
            elif isinstance(event, ExitEvent):
                result = event.result
    except RejectedError as exc:
        result = rejected(str(exc), prepared.language.name)
    except SandlotError as exc:
        result = Result(
            status=Status.INTERNAL_ERROR, message=f"sandbox failure: {exc}", language=prepared.language.name
        )
    finally:
        await asyncio.to_thread(box.close)
    assert result is not None
    return result


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(EXIT_NOT_PROGRAM)


def _finish_rejected(message: str, language: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rejected(message, language).to_dict()))
    click.echo(f"sandlot: {message}", err=True)
    sys.exit(EXIT_NOT_PROGRAM)


def _finish(result: Result, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        sys.stdout.flush()
    if result.status in (Status.INTERNAL_ERROR, Status.REJECTED):
        click.echo(f"sandlot: {result.message}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
    if result.status is Status.COMPILE_ERROR:
        if not as_json and not result.compile_output:
            click.echo(f"sandlot: {result.message}", err=True)
        sys.exit(EXIT_COMPILE_ERROR)
    if result.status in (Status.TIMEOUT, Status.MEMORY_LIMIT, Status.OUTPUT_LIMIT) and not as_json:
        click.echo(f"sandlot: {result.status.value}: {result.message}", err=True)
    sys.exit(result.shell_exit_code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def languages(ctx: click.Context, as_json: bool) -> None:
    """List the offered languages and their toolchain versions."""
    try:
        settings = _settings(ctx)
        registry = LanguageRegistry.load(settings.languages_file)
    except ConfigError as exc:
        _fail(f"sandlot: configuration error: {exc}")
        return
    versions = asyncio.run(registry.probe_versions())
    rows = [
        {
            "name": lang.name,
            "display_name": lang.display_name,
            "version": versions[lang.name],
            "aliases": list(lang.aliases),
            "extensions": list(lang.extensions),
            "compiled": lang.compile is not None,
        }
        for lang in registry.offered()
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['name']:<12} {row['version']:<12} {row['display_name']}")


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8080).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 50051).")
@click.option("--pool-size", type=int, default=None, help="Boxes in the pool (default: twice the cores).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    http_port: int | None,
    grpc_port: int | None,
    pool_size: int | None,
    config_file: Path | None,
) -> None:
    """Serve HTTP (with the API and metrics) and gRPC from one process, embedded mode."""
    if config_file is not None:
        ctx.obj["config"] = config_file
    from sandlot.api.server import serve as run_server
    from sandlot.service import server_settings_from

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = _settings(ctx)
        server = server_settings_from(
            settings, host=host, http_port=http_port, grpc_port=grpc_port, pool_size=pool_size
        )
    except (ConfigError, RejectedError) as exc:
        _fail(f"sandlot: configuration error: {exc}")
        return
    if server.effective_pool_size < 1:
        _fail("sandlot: --pool-size must be at least 1")
    try:
        asyncio.run(run_server(settings, server))
    except (ConfigError, SandboxError) as exc:
        _fail(f"sandlot: cannot serve: {exc}")
    except OSError as exc:
        _fail(f"sandlot: cannot serve: {exc.strerror or exc}")


@main.command()
@click.option("--pool-size", type=int, default=None, help="Boxes in the pool (default 2).")
@click.pass_context
def mcp(ctx: click.Context, pool_size: int | None) -> None:
    """Serve the MCP tools (run_code, sessions, files) on stdin/stdout, with an embedded service."""
    from sandlot.api.mcp_server import serve_stdio, stdio_server_settings

    # stdout carries the protocol: every log line goes to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = _settings(ctx)
        server = stdio_server_settings(settings, pool_size=pool_size)
    except (ConfigError, RejectedError) as exc:
        _fail(f"sandlot: configuration error: {exc}")
        return
    if server.effective_pool_size < 1:
        _fail("sandlot: --pool-size must be at least 1")
    try:
        asyncio.run(serve_stdio(settings, server))
    except (ConfigError, SandboxError) as exc:
        _fail(f"sandlot: cannot serve MCP: {exc}")


# ------------------------------------------------------ a server's client

EXIT_NOT_DONE = 3  # `sandlot result`: the task is still queued or running
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_CANCEL_TIMEOUT_S = 5.0  # after Ctrl-C, how long the DELETE may take before we give up on it


class _Interrupted(BaseException):
    """A signal asked us to stop while following a task (BaseException: nothing on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--server", envvar="SANDLOT_SERVER", show_envvar=True, default=DEFAULT_SERVER, show_default=True, help="Server URL."
)
@click.option("--session", "session_id", default=None, help="Run in this session's box (its files persist).")
@click.option("--async", "detach", is_flag=True, help="Print the task id and exit 0; see `sandlot result`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object and nothing else on stdout.")
@click.option("-l", "--language", "language", default=None, help="Language (default: from the file extension).")
@click.option("--stdin", "stdin_path", default=None, help="File to feed as stdin, or - for sandlot's own stdin.")
@click.option("--time-limit", type=float, default=None, help="CPU time limit, seconds.")
@click.option("--wall-time-limit", type=float, default=None, help="Wall-clock limit, seconds.")
@click.option("--memory-limit", type=int, default=None, help="Memory limit, MB.")
@click.option("--max-processes", type=int, default=None, help="Processes and threads.")
@click.option("--max-file-size", type=int, default=None, help="Largest file the program may write, KB.")
@click.option("--max-output", type=int, default=None, help="stdout+stderr cap, KB.")
@click.option(
    "--api-key",
    envvar="SANDLOT_API_KEY",
    show_envvar=True,
    default=None,
    help="API key, sent as Authorization: Bearer.",
)
def submit(
    file: Path,
    args: tuple[str, ...],
    server: str,
    session_id: str | None,
    detach: bool,
    as_json: bool,
    language: str | None,
    stdin_path: str | None,
    time_limit: float | None,
    wall_time_limit: float | None,
    memory_limit: int | None,
    max_processes: int | None,
    max_file_size: int | None,
    max_output: int | None,
    api_key: str | None,
) -> None:
    """Run FILE on a sandlot server, streaming its output; ARGS after -- go to the program.

    Exits like `sandlot run`: the program's code, 128+N for signal N, 1 for a
    compile error, 2 for anything not the program's doing (the server refused
    or could not be reached). --json adds task_id to run's JSON. Ctrl-C
    (or SIGTERM, SIGHUP) cancels the task and exits 128+N.
    """
    limits = LimitRequest(time_limit, wall_time_limit, memory_limit, max_processes, max_file_size, max_output)
    lang = language or ""
    try:
        lang = language or language_for_file(file.name)
        source = _read_input(file, "FILE")
        stdin = (
            b""
            if stdin_path is None
            else (sys.stdin.buffer.read() if stdin_path == "-" else _read_input(Path(stdin_path), "--stdin"))
        )
        client = SandlotClient(server, api_key)
    except RejectedError as exc:
        _finish_failure(Status.REJECTED, str(exc), lang, None, as_json)
    except ClientError as exc:
        _finish_failure(exc.status, str(exc), lang, None, as_json)
    with client:
        try:
            task = client.submit(
                lang, [SourceFile(file.name, source)], stdin=stdin, args=args, limits=limits, session_id=session_id
            )
        except ClientError as exc:
            _finish_failure(exc.status, str(exc), lang, None, as_json)
        if detach:
            click.echo(json.dumps({"task_id": task.task_id, "status": task.status}) if as_json else task.task_id)
            return
        _finish_task(task.task_id, _follow(client, task.task_id, lang, as_json, cancel=True), as_json)


@main.command()
@click.argument("task_id")
@click.option(
    "--server", envvar="SANDLOT_SERVER", show_envvar=True, default=DEFAULT_SERVER, show_default=True, help="Server URL."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else on stdout.")
@click.option("--wait", is_flag=True, help="If the task is not done, stream its output until it is.")
@click.option(
    "--api-key",
    envvar="SANDLOT_API_KEY",
    show_envvar=True,
    default=None,
    help="API key, sent as Authorization: Bearer.",
)
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
        _finish(result, as_json=False)  # exits
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


def _wants_json(argv: list[str]) -> bool:
    """Did a `run` command line ask for --json (before the program's own args)?"""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "run" in head and "--json" in head


def entrypoint() -> None:
    """Console script: click's usage errors become one line on stderr and exit 2."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("sandlot: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if _wants_json(sys.argv[1:]):
            click.echo(json.dumps(rejected(message).to_dict()))
        click.echo(f"sandlot: {message}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
    except _UsageFailure as exc:
        click.echo(f"sandlot: {exc}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
