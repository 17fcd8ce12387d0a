"""Where a ``sandlot run`` program's stdin comes from: a pipe, a file, a terminal, or nothing.

The console script runs as a real subprocess with real sandboxes (see
sandlot/cli_stdin.py for the rules). Terminals are real ptys that are the
child's controlling terminal, so the foreground/background distinction a shell
makes is the real one; the tests wait on output (blocking reads), never on time.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import _ECHO, _SANDLOT, _TIMEOUT_S, _assert_one_line, _env, _sandlot, _write


@pytest.mark.root
def test_piped_stdin_is_forwarded_by_default(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = _sandlot("run", prog, stdin=b"5\n")  # echo 5 | sandlot run echo.py
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"'5\\n'\n[]\n"


@pytest.mark.root
def test_redirected_file_stdin_is_forwarded_by_default(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    with _write(tmp_path, "in.txt", "from a file\n").open("rb") as redirected:  # sandlot run echo.py < in.txt
        proc = subprocess.run(
            [str(_SANDLOT), "run", str(prog)],
            stdin=redirected,
            capture_output=True,
            env=_env(),
            timeout=_TIMEOUT_S,
            check=False,
        )
    assert (proc.returncode, proc.stdout) == (0, b"'from a file\\n'\n[]\n"), proc.stderr


@pytest.mark.root
def test_no_stdin_flag_means_empty_stdin(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = _sandlot("run", prog, "--no-stdin", stdin=b"not for the program\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"''\n[]\n"


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # in the child, stdin (a pty) becomes its controlling terminal


# A new session whose controlling terminal is the child's stdin: what a login shell's session looks like.
_CONTROLLING_TERMINAL: dict[str, Any] = {"start_new_session": True, "preexec_fn": _take_terminal}


@pytest.mark.root
def test_a_background_run_does_not_read_the_terminal(tmp_path: Path) -> None:
    """`sandlot run x.py &` at a shell: the terminal belongs to the foreground job; reading it would stop us."""
    prog = _write(tmp_path, "echo.py", _ECHO)
    master, slave = os.openpty()
    # The pty is the controlling terminal of a job-control shell, which stays in the foreground; its
    # background job keeps the terminal as stdin (bash -m), as at an interactive prompt.
    command = ["bash", "-mc", '"$@" & wait $!', "bash", str(_SANDLOT), "run", str(prog)]
    try:
        proc = subprocess.run(
            command,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=_env(),
            timeout=_TIMEOUT_S,
            check=False,
            **_CONTROLLING_TERMINAL,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert (proc.returncode, proc.stdout) == (0, b"''\n[]\n")


def test_stdin_and_no_stdin_together_are_a_usage_error(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = _sandlot("run", prog, "--no-stdin", "--stdin", "-")
    assert proc.returncode == 2
    assert "--no-stdin" in _assert_one_line(proc.stderr)


def _read_until(fd: int, wanted: bytes) -> bytes:
    """Read a pty's master side until ``wanted`` shows up (or the other side is gone: EIO)."""
    seen = b""
    while wanted not in seen:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.root
def test_terminal_stdin_is_live(tmp_path: Path) -> None:
    """At a terminal the program asks, the user answers, the program reads the answer: no Ctrl-D needed."""
    prog = _write(tmp_path, "ask.py", "name = input('name? ')\nprint('hello ' + name)\nprint(repr(input()))\n")
    master, slave = os.openpty()
    command = [str(_SANDLOT), "run", str(prog)]  # in the foreground of its terminal, as typed at a shell
    with subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=_env(), **_CONTROLLING_TERMINAL
    ) as proc:
        os.close(slave)
        try:
            prompt = _read_until(master, b"name? ")
            assert prompt.endswith(b"name? "), (prompt, proc.stderr)
            assert proc.poll() is None  # it waits for the answer, it did not get EOF
            os.write(master, b"Ada\n")
            answer = _read_until(master, b"hello Ada")
            os.write(master, b"second line\n")
            rest = _read_until(master, b"'second line'")
            stderr = proc.stderr.read() if proc.stderr else b""
        finally:
            os.close(master)
    assert b"hello Ada" in answer, answer
    assert b"'second line'" in rest, rest
    assert proc.returncode == 0, stderr
