"""The helper protocol, specified once: the init's status lines and the host's command message.

Both sides point here: ``helper.h`` has the same names as C ``#define``s
(``tests/test_protocol.py`` checks that the two agree), ``helper.c`` writes the
lines and reads the message, ``monitor.py`` and ``box.py`` read the lines and
``launch.py`` sends the message through ``encode_command`` below.

Status channel (the init -> the host)
-------------------------------------
A pipe (the jail: inherited as fd ``policy.STATUS_FD``) or a host FIFO (gVisor:
``--status-path``) that only the box's init holds: the program never sees it
(close-on-exec), so it cannot forge a line. ASCII lines, each ending in ``\\n``,
in this order::

    R                     READY: a prelaunched init holds the command channel and
                          waits for the command message (only with a command channel)
    E <errno> <step>      EXEC_ERROR: setting up or starting the program failed at
                          <step> (command, dup2, rlimit, setuid, seccomp, exec);
                          written by the forked child before it exits 127
    S                     STARTED: the program is forked; setup of the box is complete
    X <have> <wstatus>    EXITED: the final report, after every process of the run is
                          reaped; <have> is 1 when <wstatus> is the program's own wait
                          status (as waitpid(2) gives it), 0 when it has none

A run whose status has no ``S`` never got its program going: that is the
sandbox's failure, never the program's. ``E`` may come before or after ``S``
(the child reports it). ``X`` is the last line; the host drains the program's
output as soon as it has read it, without waiting for EOF.

Command message (the host -> a prelaunched init)
------------------------------------------------
Written once to the command channel (fd ``policy.COMMAND_FD``, or gVisor's
``--command-path`` FIFO) and closed: the init reads to EOF. NUL-terminated
items::

    <argc> argv[0] ... argv[argc-1] <envc> NAME=VALUE ... [<nrl> NAME=VALUE ...]

``argc`` is at least 1; the rlimit group is optional; a rlimit's value is a
count or -1 for unlimited, its names those of ``policy.BOX_RLIMITS``. At most
helper.c's ``MAX_COMMAND_BYTES`` (1 MiB) and ``MAX_COMMAND_ITEMS`` (4096); a
malformed or larger message is answered with ``E <errno> command``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandlot.errors import SandboxError


class StatusLine(enum.StrEnum):
    """The first word of a status line (helper.h: ``STATUS_READY`` ...)."""

    READY = "R"
    STARTED = "S"
    EXEC_ERROR = "E"
    EXITED = "X"


READY_LINE = f"{StatusLine.READY}\n".encode("ascii")


@dataclass(frozen=True)
class StatusReport:
    """What the init said about one run."""

    started: bool  # an S line: setup completed
    wstatus: int | None  # the program's wait status from the X line, if it had one
    exec_error: str | None  # "<step> failed: <strerror>" from an E line


def is_ready(raw: bytes | bytearray) -> bool:
    """Has the init said it waits for its command (a complete R line)?"""
    return READY_LINE in raw


def has_exited(raw: bytes | bytearray) -> bool:
    """Has the init sent its final report (a complete X line)?"""
    final = f"{StatusLine.EXITED} ".encode("ascii")
    return any(line.startswith(final) for line in bytes(raw).split(b"\n")[:-1])


def parse_status(raw: bytes | bytearray) -> StatusReport:
    """Read the status lines seen so far; R lines and anything unknown are ignored."""
    started = False
    wstatus: int | None = None
    exec_error: str | None = None
    for line in bytes(raw).decode("ascii", "replace").splitlines():
        parts = line.split()
        kind = parts[0] if parts else ""
        if kind == StatusLine.STARTED:
            started = True
        elif kind == StatusLine.EXEC_ERROR and len(parts) >= 3 and parts[1].isdigit():
            exec_error = f"{parts[2]} failed: {os.strerror(int(parts[1]))}"
        elif kind == StatusLine.EXITED and len(parts) == 3 and parts[1] == "1":
            wstatus = int(parts[2])
    return StatusReport(started, wstatus, exec_error)


def encode_command(argv: Sequence[str], env: Mapping[str, str], rlimits: Mapping[str, int]) -> bytes:
    """The command message for a prelaunched init (see the module docstring)."""
    items = [str(len(argv)), *argv, str(len(env)), *(f"{k}={v}" for k, v in env.items())]
    items += [str(len(rlimits)), *(f"{k}={v}" for k, v in rlimits.items())]
    for item in items:
        if "\x00" in item:
            raise SandboxError("a command, argument or environment value contains NUL")
    return b"".join(item.encode("utf-8", "surrogateescape") + b"\x00" for item in items)
