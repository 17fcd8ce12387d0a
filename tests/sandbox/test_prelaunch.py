"""Jails launched ahead of time: same isolation and accounting as a cold start, just sooner."""

from __future__ import annotations

import dataclasses
import os
import signal

from sandlot.config import Settings
from sandlot.models import Limits, OutputEvent, Result, Status
from sandlot.sandbox import Bind, Box
from tests.conftest import run_in

_PY = "/usr/bin/python3"


def _limits(settings: Settings, **changes: object) -> Limits:
    return dataclasses.replace(settings.run_defaults, **changes)  # type: ignore[arg-type]


async def test_a_prelaunched_run_behaves_like_a_cold_one(box: Box, settings: Settings) -> None:
    script = "import sys; print(sys.stdin.read().strip(), sys.argv[1:]); sys.exit(4)"
    cold = await run_in(box, [_PY, "-c", script, "a", "b"], settings.run_defaults, stdin=b"hi\n")
    box.prelaunch()
    assert box.prelaunched
    warm = await run_in(box, [_PY, "-c", script, "a", "b"], settings.run_defaults, stdin=b"hi\n")
    assert not box.prelaunched  # used up
    for result in (cold, warm):
        assert result.status is Status.RUNTIME_ERROR
        assert result.exit_code == 4
        assert result.stdout == b"hi ['a', 'b']\n"


async def test_every_run_still_gets_fresh_namespaces(box: Box, settings: Settings) -> None:
    # State a reused namespace would carry over: a SysV shm segment (ipc), a file
    # in /tmp (mount), and pid numbers that keep growing (pid).
    leave = "/usr/bin/ipcmk -M 4096 >/dev/null && echo x > /tmp/mark && echo $$"
    look = "/usr/bin/ipcs -m | grep -c '^0x' ; ls -A /tmp; echo $$"
    box.prelaunch()
    first = await run_in(box, ["/usr/bin/bash", "-c", leave], settings.run_defaults)
    assert first.status is Status.OK, first
    box.prelaunch()
    second = await run_in(box, ["/usr/bin/bash", "-c", look], settings.run_defaults)
    assert second.status is Status.OK, second
    assert second.stdout.split() == [b"0", first.stdout.strip()]  # no segment, empty /tmp, same pid


async def test_prelaunch_after_reset_sees_a_fresh_workdir(box: Box, settings: Settings) -> None:
    box.prelaunch()
    first = await run_in(box, ["/bin/sh", "-c", "echo secret > /box/left.txt && ls /box"], settings.run_defaults)
    assert first.stdout == b"left.txt\n"
    box.reset()
    box.prelaunch()
    second = await run_in(box, ["/bin/ls", "-A", "/box"], settings.run_defaults)
    assert second.status is Status.OK
    assert second.stdout == b""


async def test_reset_discards_a_jail_bound_to_the_old_workdir(box: Box, settings: Settings) -> None:
    box.write_file("old.txt", b"x")
    box.prelaunch()
    box.reset()  # the waiting jail saw the old workdir: it must not survive the reset
    assert not box.prelaunched
    result = await run_in(box, ["/bin/ls", "-A", "/box"], settings.run_defaults)
    assert result.stdout == b""


async def test_the_runs_own_limits_apply(box: Box, settings: Settings) -> None:
    # The jail is launched with the maximum limits; the run's must replace them.
    bomb = "b = []\nwhile True:\n    b.append(b'x' * (8 << 20))\n"
    box.prelaunch()
    memory = await run_in(box, [_PY, "-c", bomb], _limits(settings, memory_limit_bytes=64 << 20))
    assert memory.status is Status.MEMORY_LIMIT, memory
    assert memory.memory_peak <= (64 << 20) + (1 << 20)

    box.prelaunch()
    forks = (
        "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            import time; time.sleep(5)\n        n += 1\nexcept OSError:\n    print(n)\n"
    )
    capped = await run_in(box, [_PY, "-c", forks], _limits(settings, max_processes=10))
    assert capped.stdout.strip() and int(capped.stdout) < 10

    box.prelaunch()
    # A wall limit far above the CPU limit: on a loaded machine 1 s of CPU can take many seconds.
    burn = await run_in(
        box, [_PY, "-c", "while True: pass"], _limits(settings, time_limit_s=1.0, wall_time_limit_s=60.0)
    )
    assert burn.status is Status.TIMEOUT
    assert "CPU" in burn.message
    assert 1.0 <= burn.cpu_time <= 1.15


async def test_a_warming_box_yields_the_cpu_until_its_run_takes_it(box: Box, settings: Settings) -> None:
    """Pre-launching (gVisor's costs ~0.1 s of CPU) must not slow programs running in other boxes."""
    box.prelaunch()
    warm = box._warm
    assert warm is not None
    dirs = [path.parent for path in warm.cgroup.procs_files]
    knobs = [d / name for d in dirs for name in ("cpu.shares", "cpu.weight") if (d / name).exists()]
    (knob,) = knobs  # cpu.shares under v1 (here), cpu.weight under v2
    lowest, normal = ("10", "1024") if knob.name == "cpu.shares" else ("1", "100")
    assert knob.read_text().strip() == lowest
    during: list[str] = []
    command = [_PY, "-c", "import time; print('started', flush=True); time.sleep(0.5)"]
    async for item in box.run(command, limits=settings.run_defaults):
        if isinstance(item, OutputEvent) and not during:
            during.append(knob.read_text().strip())  # the program is running now
        elif isinstance(item, Result):
            assert item.status is Status.OK, item
    assert during == [normal]


async def test_accounting_starts_when_the_command_is_sent(box: Box, settings: Settings) -> None:
    box.prelaunch()
    result = await run_in(
        box,
        [_PY, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"],
        settings.run_defaults,
    )
    assert result.status is Status.OK
    assert 0.4 <= result.cpu_time <= 0.7


async def test_file_size_rlimit_is_sent_with_the_command(box: Box, settings: Settings) -> None:
    box.prelaunch()
    result = await run_in(box, ["/usr/bin/bash", "-c", "ulimit -f"], _limits(settings, max_file_size_bytes=4096 * 1024))
    assert result.stdout == b"4096\n"


async def test_runs_with_other_binds_start_cold(box: Box, settings: Settings) -> None:
    box.prelaunch()  # no extra binds
    extra = [Bind(source=settings.state_dir / "etc", dest="/opt/extra")]
    result = await run_in_with_binds(box, ["/bin/ls", "/opt/extra"], settings.run_defaults, extra)
    assert result.status is Status.OK, result
    assert b"passwd" in result.stdout
    assert not box.prelaunched


async def test_a_dead_prelaunched_jail_falls_back_to_cold(box: Box, settings: Settings) -> None:
    box.prelaunch()
    warm = box._warm
    assert warm is not None
    os.kill(warm.launched.pid, signal.SIGKILL)
    os.waitid(os.P_PIDFD, warm.launched.pidfd, os.WEXITED | os.WNOWAIT)
    result = await run_in(box, ["/bin/echo", "ok"], settings.run_defaults)
    assert result.status is Status.OK
    assert result.stdout == b"ok\n"


async def run_in_with_binds(box: Box, command: list[str], limits: Limits, binds: list[Bind]) -> Result:
    result = None
    async for item in box.run(command, limits=limits, binds=binds):
        if isinstance(item, Result):
            result = item
    assert result is not None
    return result
