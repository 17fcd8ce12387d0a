"""What the program's stdin is, for ``sandlot run`` and ``sandlot submit``.

Theory of operation
-------------------
``--stdin FILE`` feeds a file, ``--stdin -`` all of sandlot's own stdin,
``--no-stdin`` nothing. With neither, sandlot's stdin is forwarded as a shell
user expects: ``echo 5 | sandlot run a.c`` gives the program ``5``.

``run`` forwards a pipe, a socket or a terminal *live*: chunks go to the
program as they arrive (a terminal's line as soon as Enter is pressed), so a
program can print a question and read the answer, and ``yes | sandlot run``
never buffers without bound. This is the same stream path the WebSocket door
uses (``Engine.execute(stdin=...)``). A regular file or ``/dev/null``
(``< in.txt``) is read whole: epoll cannot watch it, and it ends anyway.

``submit`` talks to a server over plain HTTP, which carries stdin in the
request: a redirected stdin is read whole (at most ``MAX_READ_BYTES``); a
terminal is not read at all (nothing would be sent before Ctrl-D), so an
interactive program should be run with ``sandlot run`` or the WebSocket door.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from sandlot.cli_output import read_input
from sandlot.errors import RejectedError

MAX_READ_BYTES = 64 * 1024 * 1024  # a whole-read stdin larger than this is refused, not buffered
_CHUNK_BYTES = 64 * 1024

StdinChoice = bytes | int  # bytes to feed, or a file descriptor to forward live


def choose(stdin_path: str | None, no_stdin: bool, *, live: bool) -> StdinChoice:
    """The program's stdin for these flags: bytes, or (``live`` allowed) fd 0 to stream from."""
    if no_stdin:
        if stdin_path is not None:
            raise RejectedError("--stdin and --no-stdin: give one or the other", field="--stdin")
        return b""
    if stdin_path is not None and stdin_path != "-":
        return read_input(Path(stdin_path), "--stdin")
    fd = _own_stdin()
    if fd is None:
        return b""
    mode = os.fstat(fd).st_mode
    terminal = os.isatty(fd)
    if terminal and stdin_path is None and not _in_foreground(fd):
        return b""  # `sandlot run x.py &`: reading the terminal would stop us (SIGTTIN)
    if live and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or terminal):
        return fd
    if terminal and stdin_path is None:
        return b""  # submit at a terminal: nothing to send (see the module docstring)
    return _read_whole(fd)


async def live(fd: int) -> AsyncIterator[bytes | None]:
    """Chunks of ``fd`` as they arrive; ends at EOF (the program's stdin is then closed).

    The fd stays blocking (it is shared with the shell, which must not find it
    non-blocking afterwards): it is read only once epoll says it is readable,
    and watched only while a chunk is wanted, so a program that does not read
    costs no wake-ups.
    """
    loop = asyncio.get_running_loop()
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            data = os.read(fd, _CHUNK_BYTES)
        except OSError:
            data = b""  # a hung-up terminal: as good as EOF
        if not data:
            return
        yield data


def _in_foreground(fd: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return True  # a terminal that is not our controlling one cannot stop us for reading it


def _own_stdin() -> int | None:
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else 0
        os.fstat(fd)
    except (OSError, ValueError):
        return None  # started with stdin closed
    return fd


def _read_whole(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, _CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_READ_BYTES:
            raise RejectedError(f"stdin: more than {MAX_READ_BYTES // (1024 * 1024)} MB", field="--stdin")
    return b"".join(chunks)
