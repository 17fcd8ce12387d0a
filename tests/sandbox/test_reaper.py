"""Every way a run ends leaves no process and no cgroup, and ending a box never waits on the event loop.

reaper.py is the one owner of killing a box. Each path below (a normal end, each
limit, a cancel, a consumer that goes away, a prelaunched jail discarded by a
reset or by a run it does not fit) must leave nothing of the box: not the
processes that were in its cgroup, not one process with the slot's uid, not
the cgroup. While it happens, nothing sleep-polls on the loop's thread: the v1
freezer (whose state has no notification) and the retry of a cgroup still busy
run in a worker thread. The crash path (a dead holder's leftovers) is
tests/sandbox/test_cleanup.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandlot.config import Settings
from sandlot.models import Limits, OutputEvent, Result, Status
from sandlot.sandbox import Bind, Box, Sandbox, cgroupfs
from sandlot.sandbox.cgroups import CgroupLimits
from sandlot.sandbox.launch import Pipes, spawn
from sandlot.sandbox.reaper import Reaper, end_cgroup

BOTH_LEVELS = True

_PY = "/usr/bin/python3"
_SH = "/bin/sh"
MIB = 1024 * 1024
_EXIT_WAIT_S = 30.0  # far below the 100 s the programs would live if nothing killed them


@dataclasses.dataclass
class _LoopWaits:
    """What ran on the event loop's thread (the main one here) that should not have."""

    sleeps_on_loop: int = 0
    freezer_polls_on_loop: int = 0
    freezer_polls: int = 0


@pytest.fixture
def loop_waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[_LoopWaits]:
    seen = _LoopWaits()
    real_sleep = time.sleep
    real_read: Callable[[Path], str] = cgroupfs.read

    def on_loop() -> bool:
        return threading.current_thread() is threading.main_thread()

    def sleep(seconds: float) -> None:
        seen.sleeps_on_loop += on_loop()
        real_sleep(seconds)

    def read(path: Path) -> str:
        if path.name == "freezer.state":
            seen.freezer_polls += 1
            seen.freezer_polls_on_loop += on_loop()
        return real_read(path)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(cgroupfs, "read", read)
    yield seen


def _limits(settings: Settings, **changes: Any) -> Limits:
    return dataclasses.replace(settings.run_defaults, **changes)


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split(":", 1)[1]


def _live_with_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, StopIteration):
            fields = Path(f"/proc/{entry}/status").read_text().splitlines()
            uids = next(line for line in fields if line.startswith("Uid:")).split()[1:]
            if str(uid) in uids and _alive(int(entry)):
                found.append(int(entry))
    return found


async def _run(
    sandbox: Sandbox,
    box: Box,
    command: list[str],
    limits: Limits,
    *,
    on_output: Callable[[], None] | None = None,
    stop_at_output: bool = False,
    binds: tuple[Bind, ...] = (),
) -> tuple[Result | None, dict[int, int]]:
    """Run command; at its first output, note the cgroup's members and act. Returns (Result, members)."""
    members: dict[int, int] = {}
    result: Result | None = None
    async with contextlib.aclosing(box.run(command, limits=limits, binds=binds)) as items:
        async for item in items:
            if isinstance(item, OutputEvent) and not members:
                cgroup = sandbox.driver.open_existing(box.slot.cgroup_name)
                assert cgroup is not None
                members = _pidfds(cgroup.pids())
                if on_output is not None:
                    on_output()
                if stop_at_output:
                    break  # the consumer goes away mid-run
            elif isinstance(item, Result):
                result = item
    return result, members


def _pidfds(pids: list[int]) -> dict[int, int]:
    """pid -> pidfd: whether a process is gone, told apart from a new one that got its number."""
    found = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            found[pid] = os.pidfd_open(pid)
    return found


def _assert_nothing_left(sandbox: Sandbox, box: Box, members: dict[int, int], *, cgroup_gone: bool = True) -> None:
    # The box's cgroup is gone once its last task has passed the kernel's cgroup exit, which comes
    # before that task (the pid namespace's init waits there for its children) is finally gone: so
    # wait for the exits. A process nothing killed (the programs here sleep 100 s) never comes.
    try:
        pending = set(members.values())
        deadline = time.monotonic() + _EXIT_WAIT_S
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select(list(pending), [], [], deadline - time.monotonic())
            pending -= set(ready)
        survivors = [pid for pid, fd in members.items() if fd in pending]
    finally:
        for fd in members.values():
            os.close(fd)
    assert survivors == [], {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in survivors}
    if cgroup_gone:
        assert sandbox.driver.open_existing(box.slot.cgroup_name) is None
    assert _live_with_uid(box.slot.uid) == []


_STARTED = "echo started; "
_PATHS: dict[str, tuple[list[str], dict[str, Any], Status | None]] = {
    # A daemon the program leaves behind: the box's init ends it, the reaper removes the cgroup.
    "normal": ([_SH, "-c", _STARTED + "(sleep 100 &) ; sleep 0.2"], {}, Status.OK),
    "wall": ([_SH, "-c", _STARTED + "(sleep 100 &) ; sleep 100"], {"wall_time_limit_s": 1.0}, Status.TIMEOUT),
    "cpu": (
        [_PY, "-c", "print('started', flush=True)\nwhile True: pass"],
        {"time_limit_s": 0.3, "wall_time_limit_s": 60.0},
        Status.TIMEOUT,
    ),
    "memory": (
        [_PY, "-c", "print('started', flush=True)\nb = []\nwhile True: b.append(b'x' * (4 << 20))"],
        {"memory_limit_bytes": 64 * MIB},
        Status.MEMORY_LIMIT,
    ),
    "output": ([_SH, "-c", _STARTED + "exec yes"], {"max_output_bytes": 64 * 1024}, Status.OUTPUT_LIMIT),
}


@pytest.mark.parametrize("path", list(_PATHS))
async def test_a_run_ending_any_way_leaves_nothing(
    sandbox: Sandbox, box: Box, settings: Settings, loop_waits: _LoopWaits, path: str
) -> None:
    command, changes, status = _PATHS[path]
    result, members = await _run(sandbox, box, command, _limits(settings, **changes))
    assert result is not None and result.status is status, result
    assert members, "the run had no process in its cgroup"
    _assert_nothing_left(sandbox, box, members)
    assert (loop_waits.sleeps_on_loop, loop_waits.freezer_polls_on_loop) == (0, 0)
    if path in ("wall", "cpu", "output") and sandbox.driver.version == 1:  # sandlot's kills (OOM is the kernel's)
        assert loop_waits.freezer_polls, "a limit's kill went without the freezer"


async def test_a_cancel_leaves_nothing(sandbox: Sandbox, box: Box, settings: Settings, loop_waits: _LoopWaits) -> None:
    command = [_SH, "-c", _STARTED + "(sleep 100 &) ; sleep 100"]
    result, members = await _run(sandbox, box, command, settings.run_defaults, on_output=box.cancel_run)
    box.clear_cancel()
    assert result is not None and result.status is Status.SIGNALED, result
    assert "cancelled" in result.message
    _assert_nothing_left(sandbox, box, members)
    assert (loop_waits.sleeps_on_loop, loop_waits.freezer_polls_on_loop) == (0, 0)


async def test_a_consumer_gone_mid_run_leaves_nothing(
    sandbox: Sandbox, box: Box, settings: Settings, loop_waits: _LoopWaits
) -> None:
    command = [_SH, "-c", _STARTED + "(sleep 100 &) ; sleep 100"]
    result, members = await _run(sandbox, box, command, settings.run_defaults, stop_at_output=True)
    assert result is None
    _assert_nothing_left(sandbox, box, members)
    assert (loop_waits.sleeps_on_loop, loop_waits.freezer_polls_on_loop) == (0, 0)


def _warm_members(sandbox: Sandbox, box: Box) -> dict[int, int]:
    box.prelaunch()
    assert box.prelaunched
    cgroup = sandbox.driver.open_existing(box.slot.cgroup_name)
    assert cgroup is not None
    return _pidfds(cgroup.pids())


async def test_a_prelaunched_jail_discarded_by_a_reset_leaves_nothing(
    sandbox: Sandbox, box: Box, loop_waits: _LoopWaits
) -> None:
    members = _warm_members(sandbox, box)
    await asyncio.to_thread(box.reset)  # as the pool does
    assert not box.prelaunched
    _assert_nothing_left(sandbox, box, members)
    assert (loop_waits.sleeps_on_loop, loop_waits.freezer_polls_on_loop) == (0, 0)


async def test_a_prelaunched_jail_a_run_does_not_fit_leaves_nothing(
    sandbox: Sandbox, box: Box, settings: Settings, loop_waits: _LoopWaits
) -> None:
    warm = _warm_members(sandbox, box)
    extra = (Bind(source=settings.state_dir / "etc", dest="/opt/extra"),)
    result, members = await _run(sandbox, box, [_SH, "-c", "echo started"], settings.run_defaults, binds=extra)
    assert result is not None and result.status is Status.OK, result
    assert not box.prelaunched
    _assert_nothing_left(sandbox, box, warm | members)
    assert (loop_waits.sleeps_on_loop, loop_waits.freezer_polls_on_loop) == (0, 0)


class _BusyCgroupRmdir:
    """``os`` for cgroupfs.py, whose first rmdirs of a box's cgroup find it busy (tasks still leaving)."""

    def __init__(self, busy: int) -> None:
        self.busy = busy

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def rmdir(self, path: str | Path) -> None:
        if self.busy > 0 and Path(path).name.startswith("box-"):
            self.busy -= 1
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        os.rmdir(path)


async def test_a_cgroup_still_busy_is_waited_for_off_the_loop(
    sandbox: Sandbox, box: Box, settings: Settings, loop_waits: _LoopWaits, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = _BusyCgroupRmdir(busy=3)
    monkeypatch.setattr(cgroupfs, "os", busy)
    result, members = await _run(sandbox, box, [_SH, "-c", "echo started"], settings.run_defaults)
    assert result is not None and result.status is Status.OK, result
    assert busy.busy == 0
    _assert_nothing_left(sandbox, box, members)
    assert loop_waits.sleeps_on_loop == 0


async def test_a_reap_cancelled_midway_still_kills_and_releases(sandbox: Sandbox, box: Box) -> None:
    """A run's end cancelled while it waits for the launcher: the launcher dies all the same, and its fds go."""
    name = box.slot.cgroup_name  # the box holds the slot, and has no cgroup between runs
    cgroup = sandbox.driver.create(name, CgroupLimits(memory_bytes=64 * MIB, max_pids=8, cpu_cores=1.0))
    try:
        launched = spawn(["/bin/sleep", "100"], Pipes.create(sandbox.seccomp_program, with_command=False))
        members = _pidfds([launched.pid])
        reaper = Reaper(cgroup, name, launched)
        reaping = asyncio.ensure_future(reaper.reap())
        await asyncio.sleep(0)  # it starts, and waits for the launcher to exit on its own
        assert not reaping.done()
        reaping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reaping
        _assert_nothing_left(sandbox, box, members, cgroup_gone=False)
        await reaper.watch()  # reaped on its pidfd
        await asyncio.sleep(0)
        with pytest.raises(OSError):
            os.fstat(launched.pidfd)
    finally:
        await asyncio.to_thread(end_cgroup, cgroup, name)
