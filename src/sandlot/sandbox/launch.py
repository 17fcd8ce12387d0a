"""Starting a box: its pipes, the spawn of helper -> bwrap|runsc -> init, and the command message.

A box is started either with its command (cold: the CLI, or a run whose binds
the box was not prepared for) or ahead of time with none: then the init waits
on the command channel and the command message starts the program (see box.py;
the message is specified in protocol.py).
The jail gets its status and command channels as inherited pipes (fds 4, 5);
gVisor passes only stdio into the sandbox, so there they are host FIFOs
(``Pipes.over_fifos``, see gvisor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandlot.errors import SandboxError
from sandlot.sandbox import policy

# stdin is either all of it up front, or a stream (interactive doors): chunks, then None to close.
StdinSource = bytes | AsyncIterator[bytes | None]

_HIGH_FD = 10  # our pipe ends live above the fds the child gets (0-5)
_ALL_SIGNALS = {s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}


def _dup_high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return new


@dataclass
class Pipes:
    """Every pipe of one box; child ends become fds 0-5 only inside the spawned process.

    Over FIFOs (gVisor) only stdio goes to the child: ``status_w`` is a writer the
    host keeps until the launcher exits (so EOF on ``status`` means the sandbox is
    gone) and ``command_r`` a reader that keeps a sent command buffered until the
    init reads it.
    """

    stdin_r: int
    stdin_w: int
    stdout: int
    stdout_w: int
    stderr: int
    stderr_w: int
    seccomp_r: int | None
    status: int
    status_w: int
    command_r: int | None = None
    command_w: int | None = None
    signal_r: int | None = None  # gVisor: held so that signal bytes wait in the FIFO for the init
    signal_w: int | None = None
    fifos: bool = False
    _closed: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, seccomp_program: bytes, *, with_command: bool) -> Pipes:
        made: list[int] = []
        try:
            for _ in range(6 if with_command else 5):
                r, w = os.pipe()
                made += [_dup_high(r), _dup_high(w)]
            sec_r, sec_w = made[6], made[7]
            os.write(sec_w, seccomp_program)  # a few KiB: fits in the pipe buffer
            os.close(sec_w)
        except BaseException:
            for fd in made:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        for fd in (made[2], made[4], made[8]):
            os.set_blocking(fd, False)
        pipes = cls(made[0], made[1], made[2], made[3], made[4], made[5], sec_r, made[8], made[9])
        if with_command:
            pipes.command_r, pipes.command_w = made[10], made[11]
        return pipes

    @classmethod
    def over_fifos(cls, status_fifo: Path, command_fifo: Path | None, signal_fifo: Path) -> Pipes:
        """Stdio pipes plus the host's ends of the status, signal (and command) FIFOs."""
        made: list[int] = []
        try:
            for _ in range(3):
                r, w = os.pipe()
                made += [_dup_high(r), _dup_high(w)]
            flags = os.O_NONBLOCK | os.O_CLOEXEC
            # A reader first: opening a FIFO's write end without blocking needs one.
            made += [_dup_high(os.open(status_fifo, os.O_RDONLY | flags))]
            made += [_dup_high(os.open(status_fifo, os.O_WRONLY | flags))]
            if command_fifo is not None:
                made += [_dup_high(os.open(command_fifo, os.O_RDONLY | flags))]
                made += [_dup_high(os.open(command_fifo, os.O_WRONLY | flags))]
            made += [_dup_high(os.open(signal_fifo, os.O_RDONLY | flags))]
            made += [_dup_high(os.open(signal_fifo, os.O_WRONLY | flags))]
        except BaseException:
            for fd in made:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        for fd in (made[2], made[4]):
            os.set_blocking(fd, False)
        pipes = cls(made[0], made[1], made[2], made[3], made[4], made[5], None, made[6], made[7], fifos=True)
        if command_fifo is not None:
            pipes.command_r, pipes.command_w = made[8], made[9]
        pipes.signal_r, pipes.signal_w = made[-2], made[-1]
        return pipes

    def child_actions(self) -> list[tuple[int, int, int]]:
        dup2 = os.POSIX_SPAWN_DUP2
        actions = [(dup2, self.stdin_r, 0), (dup2, self.stdout_w, 1), (dup2, self.stderr_w, 2)]
        if self.fifos:
            return actions
        assert self.seccomp_r is not None
        actions += [(dup2, self.seccomp_r, policy.SECCOMP_FD), (dup2, self.status_w, policy.STATUS_FD)]
        if self.command_r is not None:
            actions.append((dup2, self.command_r, policy.COMMAND_FD))
        return actions

    def close(self, fd: int | None) -> None:
        if fd is not None and fd not in self._closed:
            self._closed.add(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_child_ends(self) -> None:
        for fd in (self.stdin_r, self.stdout_w, self.stderr_w):
            self.close(fd)
        if not self.fifos:
            for held in (self.seccomp_r, self.status_w, self.command_r):
                self.close(held)

    def launcher_exited(self) -> None:
        """The spawned process is gone: let the status channel reach EOF."""
        self.close(self.status_w)

    def take(self, fd: int) -> int:
        """Hand ownership of one of our ends to someone who will close it."""
        self._closed.add(fd)
        return fd

    def close_all(self) -> None:
        self.close_child_ends()
        ours = (self.stdin_w, self.stdout, self.stderr, self.status, self.status_w, self.command_r, self.command_w)
        for fd in (*ours, self.signal_r, self.signal_w):
            self.close(fd)


@dataclass
class Launched:
    """A spawned box: the helper's pid (bwrap or runsc after exec), its pidfd and its pipes."""

    pid: int
    pidfd: int
    pipes: Pipes
    name: str = ""  # gVisor's container id; empty for a jail
    status_seen: bytearray = field(default_factory=bytearray)  # status read before the monitor took over

    def kill(self) -> None:
        """SIGKILL the spawned process through its pidfd (immune to pid reuse); reaper.py calls it.

        This covers the moment before the launcher has joined the cgroup: once
        bwrap dies, its init gets the parent-death signal and the whole pid
        namespace goes with it.
        """
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def alive(self) -> bool:
        try:
            return os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.pipes.close_all()


def spawn(argv: Sequence[str], pipes: Pipes) -> Launched:
    """Start argv with the child ends of pipes; the Launched owns pipes from here on."""
    try:
        pid = os.posix_spawn(
            argv[0], list(argv), {}, file_actions=pipes.child_actions(), setsigdef=_ALL_SIGNALS, setsigmask=set()
        )
    except OSError as exc:
        pipes.close_all()
        raise SandboxError(f"cannot start the sandbox helper: {exc}") from exc
    pipes.close_child_ends()
    return Launched(pid, os.pidfd_open(pid), pipes)


async def feed_stdin(fd: int, source: StdinSource) -> None:
    """Write stdin without blocking the loop; a program that never reads it is fine."""
    try:
        os.set_blocking(fd, False)
        if isinstance(source, bytes):
            await write_all(fd, source)
            return
        async for chunk in source:
            if chunk is None or not await write_all(fd, chunk):
                return
    finally:
        os.close(fd)


async def write_all(fd: int, data: bytes) -> bool:
    """Write data to a non-blocking pipe; False once the reader has gone."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
        except (BrokenPipeError, ConnectionResetError):
            return False
    return True
