"""The helper protocol (protocol.py): both sides use the same names, and the host parses it exactly.

Pure: no sandbox is started. The init's side is exercised by every run in the
other test files; here the Python side of the status lines and the command
message, and the agreement of the C names with the Python ones.
"""

from __future__ import annotations

import os
import re
from importlib import resources

import pytest

from sandlot.errors import SandboxError
from sandlot.sandbox import protocol
from sandlot.sandbox.protocol import StatusLine


def _source(name: str) -> str:
    return resources.files("sandlot.sandbox").joinpath(name).read_text()


def test_the_c_names_are_the_python_ones() -> None:
    defines = dict(re.findall(r'^#define (STATUS_[A-Z_]+) "([A-Z])"', _source("helper.h"), re.MULTILINE))
    assert defines == {f"STATUS_{line.name}": line.value for line in StatusLine}


def test_helper_c_writes_status_lines_only_through_the_names() -> None:
    code = _source("helper.c")
    # Every status line the init writes starts with one of the names, never a bare letter.
    assert not re.search(r'report\(status_fd, "[A-Z]', code)
    assert not re.search(r'snprintf\(line, sizeof line, "[A-Z] ', code)
    for line in StatusLine:
        assert f"STATUS_{line.name}" in code, line


def test_a_whole_run() -> None:
    wstatus = 3 << 8  # exit(3)
    report = protocol.parse_status(f"R\nS\nX 1 {wstatus}\n".encode())
    assert report == protocol.StatusReport(started=True, wstatus=wstatus, exec_error=None)
    assert os.WEXITSTATUS(report.wstatus or 0) == 3


def test_a_program_that_could_not_start() -> None:
    report = protocol.parse_status(f"S\nE {2} exec\nX 1 {127 << 8}\n".encode())
    assert report.started
    assert report.exec_error == f"exec failed: {os.strerror(2)}"


def test_a_bad_command_message() -> None:
    report = protocol.parse_status(b"R\nE 22 command\n")
    assert report == protocol.StatusReport(started=False, wstatus=None, exec_error=f"command failed: {os.strerror(22)}")


def test_no_main_status_and_nothing_at_all() -> None:
    assert protocol.parse_status(b"S\nX 0 0\n") == protocol.StatusReport(True, None, None)
    assert protocol.parse_status(b"") == protocol.StatusReport(False, None, None)


def test_unknown_and_malformed_lines_are_ignored() -> None:
    raw = b"\n  \nQ 1 2\nE x exec\nX 1\nX 2 9\n\xff\nS\n"
    assert protocol.parse_status(raw) == protocol.StatusReport(True, None, None)


@pytest.mark.parametrize(
    ("raw", "exited"),
    [
        (b"S\nX 1 0\n", True),
        (b"S\nX 1 0", False),  # the line is not complete yet
        (b"S\n", False),
        (b"S\nE 2 exec\n", False),
        (b"R\nS\nX 1 256\n", True),
    ],
)
def test_has_exited_needs_a_whole_x_line(raw: bytes, exited: bool) -> None:
    assert protocol.has_exited(bytearray(raw)) is exited


def test_is_ready() -> None:
    assert protocol.is_ready(bytearray(b"R\n"))
    assert not protocol.is_ready(bytearray(b"R"))
    assert not protocol.is_ready(b"S\n")


def test_the_command_message() -> None:
    message = protocol.encode_command(["/bin/echo", "a b"], {"HOME": "/box"}, {"fsize": 4096, "core": 0})
    assert message == b"2\x00/bin/echo\x00a b\x00" + b"1\x00HOME=/box\x00" + b"2\x00fsize=4096\x00core=0\x00"


def test_the_command_message_keeps_undecodable_bytes() -> None:
    name = os.fsdecode(b"caf\xe9")
    assert protocol.encode_command([name], {}, {}) == b"1\x00caf\xe9\x000\x000\x00"


def test_a_nul_cannot_be_sent() -> None:
    with pytest.raises(SandboxError, match="NUL"):
        protocol.encode_command(["/bin/echo", "a\x00b"], {}, {})
    with pytest.raises(SandboxError, match="NUL"):
        protocol.encode_command(["/bin/echo"], {"A": "x\x00"}, {})
