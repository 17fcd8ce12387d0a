"""The exit-code and rendering contract every sandlot command shares.

The program's own exit code (128+N when it died of signal N); 1 for a compile
error; 2 for anything that is not the program's doing (bad input, a sandbox or
server failure), always with one line on stderr; with --json, exactly one JSON
object on stdout. ``sandlot result`` adds 3: the task is not done yet.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click

from sandlot import cli_finish
from sandlot.cli_finish import finish_body
from sandlot.config import LimitRequest
from sandlot.engine import rejected
from sandlot.errors import RejectedError
from sandlot.models import Result
from sandlot.sandbox.box import ISOLATION_LEVELS

F = TypeVar("F", bound=Callable[..., Any])

EXIT_NOT_PROGRAM = cli_finish.EXIT_NOT_PROGRAM  # the commands import them from here
EXIT_COMPILE_ERROR = cli_finish.EXIT_COMPILE_ERROR


def fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(EXIT_NOT_PROGRAM)


def finish_rejected(message: str, language: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rejected(message, language).to_dict()))
    click.echo(f"sandlot: {message}", err=True)
    sys.exit(EXIT_NOT_PROGRAM)


def finish(result: Result, as_json: bool) -> None:
    sys.exit(finish_body(result.to_dict(), as_json))


class FirstUseNotice:
    """One line on stderr before slow first-use work (a cache being warmed), rather than silence.

    On a terminal the line also counts the seconds until ``done()``, from a
    daemon thread (the work blocks the caller's thread); elsewhere (a pipe, a
    log) it stays one plain line.
    """

    def __init__(self, stream: TextIO, *, tick_s: float = 1.0) -> None:
        self._stream = stream
        self._tick_s = tick_s
        self._live = stream.isatty()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._line = ""
        self._started = 0.0

    def __call__(self, message: str) -> None:
        self.done()  # one notice at a time
        self._line, self._started = f"sandlot: {message}...", time.monotonic()
        self._stream.write(self._line if self._live else self._line + "\n")
        self._stream.flush()
        if self._live:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="sandlot-notice", daemon=True)
            self._ticker.start()

    def done(self) -> None:
        if self._ticker is None:
            return
        self._stop.set()
        self._ticker.join()
        self._ticker = None
        self._stream.write(f"\r{self._line} done in {time.monotonic() - self._started:.0f} s\n")
        self._stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self._tick_s):  # a display refresh, not a wait for a condition
            self._stream.write(f"\r{self._line} {time.monotonic() - self._started:.0f} s")
            self._stream.flush()


def wants_json(argv: list[str]) -> bool:
    """Did a run/submit/result command line ask for --json (before the program's own args)?"""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return any(command in head for command in ("run", "submit", "result")) and "--json" in head


def read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise RejectedError(f"{what}: no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise RejectedError(f"{what}: is a directory: {path}") from exc
    except OSError as exc:
        raise RejectedError(f"{what}: cannot read {path}: {exc.strerror}") from exc


def reader_left() -> NoReturn:
    """stdout's reader went away (`sandlot run x.py | head`): exit as a shell's SIGPIPE would.

    stdout is pointed at /dev/null first, so Python's final flush cannot fail a second time.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


def exit_at_once(code: int) -> NoReturn:
    """Flush and exit without the interpreter's teardown: the last step of ``sandlot run``.

    Tearing down every loaded module costs ~15 ms of CPU on a small host, as
    much as the boxed program itself, and a run needs none of it: its box is
    closed, its slot's lock goes with the process, and the output is flushed
    here (a reader that left makes the code 141, as ``reader_left``).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = 128 + signal.SIGPIPE if stream is sys.stdout else code
        except (OSError, ValueError):
            pass  # stderr gone or closed: nothing left to tell
    os._exit(code)


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, listed in --help in the order given."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# The program and its limits, as `run` and `submit` take them (the CLI contract's names and units).
_PROGRAM_OPTIONS = _options(
    click.option("-l", "--language", "language", default=None, help="Language (default: from the file extension)."),
    click.option(
        "--stdin",
        "stdin_path",
        default=None,
        help="File to feed as stdin, or - for sandlot's own (the default; submit skips a terminal).",
    ),
    click.option("--no-stdin", is_flag=True, help="Give the program an empty stdin (EOF at once)."),
    click.option("--time-limit", type=float, default=None, help="CPU time limit, seconds."),
    click.option("--wall-time-limit", type=float, default=None, help="Wall-clock limit, seconds."),
    click.option("--memory-limit", type=int, default=None, help="Memory limit, MB."),
    click.option("--max-processes", type=int, default=None, help="Processes and threads."),
    click.option("--max-file-size", type=int, default=None, help="Largest file the program may write, KB."),
    click.option("--max-output", type=int, default=None, help="stdout+stderr cap, KB."),
    click.option(
        "--isolation",
        type=click.Choice(ISOLATION_LEVELS),
        default=None,
        help="jail (bubblewrap, the default) or gvisor (gVisor's runsc; never silently weaker).",
    ),
)


@dataclass(frozen=True)
class ProgramOptions:
    """What ``run`` and ``submit`` share: the program's language, stdin, limits and isolation level."""

    language: str | None
    stdin_path: str | None
    no_stdin: bool
    limits: LimitRequest
    isolation: str | None


def program_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The shared options, handed to the command as one ``program: ProgramOptions`` argument."""

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        limits = LimitRequest(*(kwargs.pop(name) for name in LimitRequest.__dataclass_fields__))
        picked = {name: kwargs.pop(name) for name in ("language", "stdin_path", "no_stdin", "isolation")}
        return function(*args, program=ProgramOptions(limits=limits, **picked), **kwargs)

    return _PROGRAM_OPTIONS(command)
