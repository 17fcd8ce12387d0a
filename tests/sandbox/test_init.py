"""The box's init at both levels: the program cannot signal it, its output arrives whole, and
signals from the doors reach the program without starting a process per signal.

At the jail the kernel protects a pid namespace's init; gVisor (runsc 2022) does
not, so there the init runs as root and the program as the box uid. gVisor cuts
writes to a host pipe short, so there the init relays output from pipes of
gVisor's own. Signals travel as bytes on a FIFO to the init instead of one
``runsc kill`` each.
"""

from __future__ import annotations

import _posixsubprocess  # type: ignore[import-not-found]
import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from sandlot.config import Settings
from sandlot.models import Limits, OutputEvent, Result, Status
from sandlot.sandbox import Box
from sandlot.sandbox.monitor import _RunState, classify
from tests.conftest import run_in

BOTH_LEVELS = True

PYTHON = "/usr/bin/python3"
MIB = 1024 * 1024

_SIGNAL_THE_INIT = """
import os, signal
for sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM, signal.SIGSTOP):
    try:
        os.kill(1, sig)
    except PermissionError:
        pass
try:
    os.kill(-1, signal.SIGKILL)  # everyone it may signal but itself and (by the rules) pid 1
except ProcessLookupError:
    pass  # nobody: the init is out of its reach
print("still here", flush=True)
raise SystemExit(7)
"""


_COLD_AND_WARM = pytest.mark.parametrize("warm", [False, True], ids=["cold", "prelaunched"])


def _start(box: Box, *, warm: bool) -> None:
    """A prelaunched box gets its command, rlimits and seccomp program another way: test both."""
    if warm:
        box.prelaunch()
        assert box.prelaunched


@_COLD_AND_WARM
async def test_the_program_cannot_kill_or_stop_the_init(box: Box, settings: Settings, warm: bool) -> None:
    _start(box, warm=warm)
    result = await run_in(box, [PYTHON, "-c", _SIGNAL_THE_INIT], settings.run_defaults)
    # The run ends the program's way: not a "sandbox failure" the program caused.
    assert (result.status, result.exit_code, result.stdout) == (Status.RUNTIME_ERROR, 7, b"still here\n"), result


def test_an_init_killed_mid_run_is_not_reported_as_a_sandbox_failure(settings: Settings) -> None:
    """If the init dies anyway (runsc and bwrap then exit 128+N), the run says so, not "sandbox failure"."""
    state = _RunState(output_left=0, status_lines=bytearray(b"S\n"))
    killed = classify(
        state, (128 + 9) << 8, settings.run_defaults, wall_time=0.1, cpu_time=0.1, memory_peak=0, oom_kills=0
    )
    assert (killed.status, killed.signal) == (Status.SIGNALED, signal.SIGKILL), killed
    assert killed.message == "the box's init was killed by signal 9 (Killed) mid-run"
    # A launcher that failed for its own reasons is still the sandbox's failure.
    failed = classify(state, 1 << 8, settings.run_defaults, wall_time=0.1, cpu_time=0.1, memory_peak=0, oom_kills=0)
    assert failed.status is Status.INTERNAL_ERROR
    assert failed.message.startswith("sandbox failure")


def _big_output(settings: Settings) -> Limits:
    return dataclasses.replace(settings.run_defaults, max_output_bytes=4 * MIB)


_PRINT_LONG_LINES = """
for n in range(10):
    print(str(n) * 200_000)
"""


async def test_long_lines_from_unbuffered_python_arrive_whole(box: Box, settings: Settings) -> None:
    """print() under -u makes one write(2) per line and does not retry a short one."""
    result = await run_in(box, [PYTHON, "-u", "-c", _PRINT_LONG_LINES], _big_output(settings))
    assert result.status is Status.OK, result
    assert not result.truncated
    assert result.stdout == b"".join(str(n).encode() * 200_000 + b"\n" for n in range(10))


_ONE_BIG_WRITE = """
import os, sys
data = bytes(range(256)) * 4096  # 1 MiB
written = os.write(1, data)  # write(2) itself, as a C program would call it
sys.stderr.write(f"{written}\\n")
"""


@_COLD_AND_WARM
async def test_a_one_mib_write_is_whole(box: Box, settings: Settings, warm: bool) -> None:
    _start(box, warm=warm)
    result = await run_in(box, [PYTHON, "-c", _ONE_BIG_WRITE], _big_output(settings))
    assert result.status is Status.OK, result
    assert result.stderr == f"{MIB}\n".encode()
    assert result.stdout == bytes(range(256)) * 4096


_WAIT_FOR_A_SIGNAL = """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # pending from here on, never lost
print("ready", flush=True)
signal.sigwaitinfo({signal.SIGUSR1})
print("got SIGUSR1", flush=True)
"""

_SIGNALS = 1500

_LIMITS_INSIDE = """
import resource
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["Seccomp"].strip(), resource.getrlimit(resource.RLIMIT_NPROC)[0])
"""


@_COLD_AND_WARM
async def test_seccomp_and_the_process_limit_hold_however_the_box_started(
    box: Box, settings: Settings, warm: bool
) -> None:
    _start(box, warm=warm)
    limits = dataclasses.replace(settings.run_defaults, max_processes=17)
    result = await run_in(box, [PYTHON, "-c", _LIMITS_INSIDE], limits)
    assert result.status is Status.OK, result
    seccomp, nproc = result.stdout.decode().split()
    assert seccomp == "2"  # a filter is installed
    if box.isolation == "gvisor":  # gVisor's own count; the jail's cgroup counts (test_limits.py)
        assert int(nproc) == 16


async def test_many_signals_start_no_process(box: Box, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process sandlot starts goes through posix_spawn or _posixsubprocess; count both."""
    started: list[str] = []

    def counting(real: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "posix_spawn", counting(os.posix_spawn, "posix_spawn"))
    monkeypatch.setattr(_posixsubprocess, "fork_exec", counting(_posixsubprocess.fork_exec, "fork_exec"))
    result: Result | None = None
    sent = 0
    async for item in box.run([PYTHON, "-c", _WAIT_FOR_A_SIGNAL], limits=settings.run_defaults):
        if isinstance(item, OutputEvent) and item.data == b"ready\n":
            for _ in range(_SIGNALS):
                sent += box.send_signal(signal.SIGUSR1)
        elif isinstance(item, Result):
            result = item
    assert result is not None
    assert result.status is Status.OK, result
    assert result.stdout == b"ready\ngot SIGUSR1\n"
    assert sent >= 1  # delivered while it ran (at the jail its end may come before the last one is sent)
    assert started == ["posix_spawn"]  # the box's launcher, and nothing per signal
