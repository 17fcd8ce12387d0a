"""The ``sandlot`` command: thin commands that call the layers.

Local commands live here (run, languages, serve, worker, mcp), with run's way
through a run (ordered for start-up) in cli_run.py; the client commands (submit,
result) in cli_client.py; the exit-code contract they all share in cli_output.py:
the program's own code (128+N for signal N), 1 for a compile error, 2 for
anything not the program's doing (one line on stderr), 3 from ``result`` while a
task is not done.
"""

from __future__ import annotations

# First of all: asyncio, json and subprocess load when first used, after `run` has started its jail (cli_defer).
from sandlot import cli_defer  # noqa: F401

# isort: split
import asyncio
import importlib
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sandlot import __version__, cli_run, cli_stdin
from sandlot.cli_output import (
    EXIT_NOT_PROGRAM,
    FirstUseNotice,
    ProgramOptions,
    exit_at_once,
    fail,
    finish,
    finish_rejected,
    program_options,
    read_input,
    wants_json,
)
from sandlot.config import Settings, load_settings, server_settings_from
from sandlot.engine import Engine, rejected
from sandlot.errors import ConfigError, RejectedError, SandboxError
from sandlot.languages import LanguageRegistry
from sandlot.models import Job, Result, SourceFile
from sandlot.sandbox.box import ISOLATION_LEVELS

if TYPE_CHECKING:
    from sandlot.config import ServerSettings


class _UsageFailure(Exception):
    """A user mistake found after parsing: one line on stderr, exit 2."""


def _settings(ctx: click.Context) -> Settings:
    config: Path | None = ctx.obj.get("config") if ctx.obj else None
    return load_settings(config)


class _LazyGroup(click.Group):
    """Commands whose modules load only when they run: a local ``run`` never imports the HTTP client.

    (A CLI called once per test by a judge pays every import on every call.)
    """

    _lazy = {
        "submit": "sandlot.cli_client:submit",
        "result": "sandlot.cli_client:result",
        "env": "sandlot.cli_env:env",
        "judge": "sandlot.cli_judge:judge",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._lazy:
            return super().get_command(ctx, cmd_name)
        module, _, name = self._lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
@program_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object and nothing else on stdout.")
@click.option("--env", "environment", metavar="NAME", default="", help="Run in this environment (sandlot env list).")
@click.option("--local", is_flag=True, help="Start a jail here even when a `sandlot serve` could run it (cli_warm).")
@click.pass_context
def run(
    ctx: click.Context,
    file: Path,
    args: tuple[str, ...],
    program: ProgramOptions,
    as_json: bool,
    environment: str,
    local: bool,
) -> None:
    """Run FILE in a fresh sandbox; ARGS after -- go to the program."""
    del local  # the warm path (cli_warm, before click) was already declined when we are here
    language, limits, isolation = program.language, program.limits, program.isolation
    try:
        settings = _settings(ctx)
        languages = LanguageRegistry.load(settings.languages_file)
        store = None
        if environment:  # imported only when asked for: `sandlot run`'s start-up stays as it was
            from sandlot.environments.store import EnvironmentStore

            store = EnvironmentStore.from_settings(settings)
        if store is not None:  # the environment, not the host, must offer it: the engine checks there
            tables = store.inspect(environment).languages if not language else None
            lang = languages.declared_for_file(file.name, tables) if not language else None
        else:
            lang = languages.get(language) if language else languages.for_file(file.name)
        source = read_input(file, "FILE")
        stdin = cli_stdin.choose(program.stdin_path, program.no_stdin, live=True)
        job = Job(
            language=lang.name if lang is not None else language or "",
            files=(SourceFile(file.name, source),),
            stdin=stdin if isinstance(stdin, bytes) else b"",
            args=args,
            user_file_name=file.name,
            environment=environment,
        )
        notice = FirstUseNotice(sys.stderr)
        engine = Engine(settings, languages, notice=notice, environments=store)
        prepared = engine.prepare(job, limits, cli_flags=True)
    except RejectedError as exc:
        finish_rejected(str(exc), language or "", as_json)
        return
    except ConfigError as exc:
        fail(f"sandlot: configuration error: {exc}")
        return
    box = cli_run.open_box(engine, prepared, isolation or "jail")
    if isinstance(box, Result):  # no box: the Result says why
        finish(box, as_json)
        return
    result: Result | None = None
    try:
        live_fd = stdin if isinstance(stdin, int) else None
        # asyncio is loaded here (cli_defer), while the pre-launched jail starts.
        result = asyncio.run(cli_run.stream(engine, prepared, box, as_json, live_fd, notice))
    except BrokenPipeError:
        pass  # stdout's reader left (`sandlot run x.py | head`): the run was ended on the way out
    finally:
        box.close()  # here, not on a thread of the loop: nothing else runs by now
    if result is None:
        exit_at_once(128 + signal.SIGPIPE)  # as a shell's SIGPIPE would
    try:
        finish(result, as_json)
    except SystemExit as done:
        exit_at_once(done.code if isinstance(done.code, int) else EXIT_NOT_PROGRAM)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def languages(ctx: click.Context, as_json: bool) -> None:
    """List the offered languages and their toolchain versions."""
    try:
        settings = _settings(ctx)
        registry = LanguageRegistry.load(settings.languages_file)
    except ConfigError as exc:
        fail(f"sandlot: configuration error: {exc}")
        return
    versions = asyncio.run(registry.probe_versions())
    rows = [lang.describe(versions[lang.name]) for lang in registry.offered()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['name']:<12} {row['version']:<12} {row['display_name']}")


_REDIS_HELP = "Redis URL of the distributed mode's broker (env SANDLOT_REDIS_URL)."


_isolation_option = click.option(
    "--isolation",
    type=click.Choice(ISOLATION_LEVELS),
    default=None,
    help="The level of requests that name none (default jail); an API key may require a stronger one.",
)
_gvisor_pool_option = click.option(
    "--gvisor-pool-size", type=int, default=None, help="Warm gVisor sandboxes (default 2; 0 turns gvisor off)."
)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8080).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 50051).")
@click.option("--pool-size", type=int, default=None, help="Boxes in the pool (default: twice the cores).")
@click.option("--redis", "redis_url", default=None, help=_REDIS_HELP)
@click.option("--no-worker", is_flag=True, help="Run no jobs here, only the doors (needs --redis).")
@_isolation_option
@_gvisor_pool_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    http_port: int | None,
    grpc_port: int | None,
    pool_size: int | None,
    redis_url: str | None,
    no_worker: bool,
    isolation: str | None,
    gvisor_pool_size: int | None,
    config_file: Path | None,
) -> None:
    """Serve HTTP (with the API and metrics) and gRPC from one process.

    Embedded mode by default; with --redis, an API node of the distributed mode
    (with its own worker unless --no-worker).
    """
    from sandlot.api.server import serve as run_server

    settings, server = _server_settings(
        ctx,
        config_file,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        pool_size=pool_size,
        redis_url=redis_url,
        start_worker=False if no_worker else None,
        default_isolation=isolation,
        gvisor_pool_size=gvisor_pool_size,
    )
    if no_worker and not server.redis_url:
        fail("sandlot: --no-worker needs --redis (or SANDLOT_REDIS_URL): nothing else would run the jobs")
    try:
        asyncio.run(run_server(settings, server))
    except (ConfigError, SandboxError) as exc:
        fail(f"sandlot: cannot serve: {exc}")
    except OSError as exc:
        fail(f"sandlot: cannot serve: {exc.strerror or exc}")


@main.command()
@click.option("--redis", "redis_url", default=None, help=_REDIS_HELP)
@click.option("--pool-size", type=int, default=None, help="Boxes in the pool (default: twice the cores).")
@_isolation_option
@_gvisor_pool_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.pass_context
def worker(
    ctx: click.Context,
    redis_url: str | None,
    pool_size: int | None,
    isolation: str | None,
    gvisor_pool_size: int | None,
    config_file: Path | None,
) -> None:
    """Run jobs from the shared Redis broker (distributed mode), with no listener of its own."""
    from sandlot.worker_process import run_worker

    settings, server = _server_settings(
        ctx,
        config_file,
        pool_size=pool_size,
        redis_url=redis_url,
        start_worker=True,
        default_isolation=isolation,
        gvisor_pool_size=gvisor_pool_size,
    )
    if not server.redis_url:
        fail("sandlot: worker needs --redis URL (or SANDLOT_REDIS_URL)")
    try:
        asyncio.run(run_worker(settings, server))
    except (ConfigError, SandboxError) as exc:
        fail(f"sandlot: cannot run the worker: {exc}")


def _server_settings(
    ctx: click.Context, config_file: Path | None, **overrides: object
) -> tuple[Settings, ServerSettings]:
    """Settings and server settings for a serving command (flags win); exits 2 on a mistake."""
    import logging  # here, not at the top: `run` never logs, and its start-up counts

    if config_file is not None:
        ctx.obj["config"] = config_file
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = _settings(ctx)
        server = server_settings_from(settings, **overrides)
    except ConfigError as exc:
        fail(f"sandlot: configuration error: {exc}")
        raise  # not reached: fail exits
    if server.effective_pool_size < 1:
        fail("sandlot: --pool-size must be at least 1")
    return settings, server


@main.command()
@click.option("--pool-size", type=int, default=None, help="Boxes in the pool (default 2).")
@click.pass_context
def mcp(ctx: click.Context, pool_size: int | None) -> None:
    """Serve the MCP tools (run_code, sessions, files) on stdin/stdout, with an embedded service."""
    import logging

    from sandlot.api.mcp.server import serve_stdio, stdio_server_settings

    # stdout carries the protocol: every log line goes to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = _settings(ctx)
        server = stdio_server_settings(settings, pool_size=pool_size)
    except ConfigError as exc:
        fail(f"sandlot: configuration error: {exc}")
        return
    if server.effective_pool_size < 1:
        fail("sandlot: --pool-size must be at least 1")
    try:
        asyncio.run(serve_stdio(settings, server))
    except (ConfigError, SandboxError) as exc:
        fail(f"sandlot: cannot serve MCP: {exc}")


def entrypoint() -> None:
    """Console script: click's usage errors become one line on stderr and exit 2."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("sandlot: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if wants_json(sys.argv[1:]):
            click.echo(json.dumps(rejected(message).to_dict()))
        click.echo(f"sandlot: {message}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
    except _UsageFailure as exc:
        click.echo(f"sandlot: {exc}", err=True)
        sys.exit(EXIT_NOT_PROGRAM)
