"""Nothing outlives a box: mounts, cgroups, slot locks and processes, after a close, a crash or a cancel.

Tests here use high slot numbers, away from the low ones every other session
takes first, so that another test session on this host cannot race them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.config import MIB, LimitRequest, Settings
from sandlot.engine import Engine
from sandlot.errors import SandboxError
from sandlot.models import OutputEvent, Result, Status
from sandlot.sandbox import Box, Sandbox, hostfs, slots
from sandlot.sandbox.cgroups import CgroupLimits
from tests.conftest import leftover_mounts, make_settings, run_in, run_job

_BOX_SLOTS = range(800, 900)
_STALE_SLOTS = range(900, 1000)
PF_EXITING = 0x00000004  # include/linux/sched.h: the task is in do_exit()

_SPAWNER = """
import subprocess
import time
subprocess.Popen(["sleep", "300"], start_new_session=True)
print("spawned", flush=True)
"""


# ------------------------------------------------------------------ helpers


def _open_high_box(sandbox: Sandbox) -> Box:
    for index in _BOX_SLOTS:
        try:
            return sandbox.open_box(index)
        except SandboxError:
            continue  # held by another session
    raise AssertionError(f"no free slot in {_BOX_SLOTS}")


@pytest.fixture
def high_box(sandbox: Sandbox) -> Iterator[Box]:
    box = _open_high_box(sandbox)
    try:
        yield box
    finally:
        box.close()


def _host_pids_of_uid(uid: int) -> list[int]:
    """Live host processes whose real, effective, saved or fs uid is uid.

    Zombies are skipped: a box's init can be reparented to the host's pid 1 when the
    cgroup kill ends it and bwrap together, and stays a zombie until pid 1 reaps it.
    So are processes already in their exit (PF_EXITING): the kernel takes a process
    out of its cgroup early in exit, before it turns zombie, so an empty cgroup may
    still show one in /proc for a moment; it can no longer run anything.
    """
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # exited while we looked
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").split()[:1] == ["Z"] or _exiting(entry):
            continue
        if str(uid) in fields.get("Uid", "").split():
            found.append(int(entry.name))
    return found


def _exiting(proc: Path) -> bool:
    """Whether the process has PF_EXITING set (field 9 of /proc/PID/stat, after the parenthesised name)."""
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return True  # gone while we looked
    flags = int(stat.rsplit(")", 1)[1].split()[6])
    return bool(flags & PF_EXITING)


def _mounts_of(root: Path) -> list[Path]:
    return [m for m in leftover_mounts() if m == root or root in m.parents]


def _assert_slot_free(settings: Settings, index: int) -> None:
    slot = slots.try_acquire(settings.run_dir, index, settings.box_uid_base)
    assert slot is not None, f"slot {index} is still locked"
    slot.release()


# ------------------------------------------------------------------ close


async def test_close_leaves_nothing_behind(engine: Engine, sandbox: Sandbox, settings: Settings) -> None:
    box = _open_high_box(sandbox)
    try:
        assert _mounts_of(box.root) == [box.workdir, box.root]  # the tmpfs, and its workdir as a shared mount
        run = await run_job(engine, box, "python", _SPAWNER, limits=LimitRequest(wall_time_limit=5))
        assert run.result.status is Status.OK, run.result
        assert run.stdout == "spawned\n"
        assert [f.path for f in box.list_files()] == ["main.py"]
    finally:
        box.close()

    assert _mounts_of(box.root) == []
    assert not box.root.exists()
    assert sandbox.driver.open_existing(box.slot.cgroup_name) is None
    assert _host_pids_of_uid(box.slot.uid) == []
    _assert_slot_free(settings, box.slot.index)
    box.close()  # a second close is harmless


async def test_close_removes_copy_on_write_mounts(engine: Engine, sandbox: Sandbox, settings: Settings) -> None:
    box = _open_high_box(sandbox)
    try:
        code = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n'
        run = await run_job(engine, box, "go", code, limits=LimitRequest(wall_time_limit=10))
        assert run.result.status is Status.OK, run.result
        assert run.stdout == "hi\n"
        # The Go cache is an overlay inside the box's tmpfs while the box is open.
        assert len(_mounts_of(box.root)) >= 2
    finally:
        box.close()

    assert _mounts_of(box.root) == []
    assert not box.root.exists()
    assert sandbox.driver.open_existing(box.slot.cgroup_name) is None
    _assert_slot_free(settings, box.slot.index)


async def test_each_run_gets_a_fresh_cgroup(high_box: Box, sandbox: Sandbox, settings: Settings) -> None:
    limits = settings.resolve_limits(LimitRequest(time_limit=1, wall_time_limit=5))
    burn = ["/usr/bin/python3", "-c", "import time\nwhile time.process_time() < 0.3: pass"]
    first = await run_in(high_box, burn, limits)
    assert first.status is Status.OK, first
    assert sandbox.driver.open_existing(high_box.slot.cgroup_name) is None
    second = await run_in(high_box, ["/bin/true"], limits)
    assert second.status is Status.OK, second
    # The second run's accounting starts from zero: none of the first run's CPU.
    assert first.cpu_time >= 0.3
    assert second.cpu_time < 0.3


# ------------------------------------------------------------------ start-up sweep


def _free_stale_index(sandbox: Sandbox, settings: Settings) -> int:
    taken = set(sandbox.driver.existing_names())
    for index in _STALE_SLOTS:
        if f"box-{index}" in taken or (sandbox.boxes_dir / str(index)).exists():
            continue
        slot = slots.try_acquire(settings.run_dir, index, settings.box_uid_base)
        if slot is None:
            continue
        slot.release()
        return index
    raise AssertionError(f"no unused slot in {_STALE_SLOTS}")


def test_sweep_stale_cleans_a_dead_holders_slot(sandbox: Sandbox, settings: Settings) -> None:
    index = _free_stale_index(sandbox, settings)
    name = f"box-{index}"
    root = sandbox.boxes_dir / str(index)
    proc: subprocess.Popen[bytes] | None = None
    try:
        # What a holder that died mid-run leaves: its cgroup with a live process, and its mounted tmpfs.
        cgroup = sandbox.driver.create(name, CgroupLimits(memory_bytes=64 * MIB, max_pids=8, cpu_cores=1.0))
        proc = subprocess.Popen(["sleep", "300"])
        for procs in cgroup.procs_files:
            procs.write_text(str(proc.pid))
        assert proc.pid in cgroup.pids()
        root.mkdir(mode=0o711)
        hostfs.mount_tmpfs(root, size_bytes=1 * MIB, inodes=64, uid=0, gid=0, mode=0o711)
        (root / "work").mkdir()
        assert _mounts_of(root) == [root]

        cleaned = sandbox.sweep_stale()

        assert cleaned >= 1
        assert proc.wait(timeout=10) == -9
        assert sandbox.driver.open_existing(name) is None
        assert name not in sandbox.driver.existing_names()
        assert _mounts_of(root) == []
        assert not root.exists()
        _assert_slot_free(settings, index)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for mount in _mounts_of(root):
            hostfs.unmount(mount)
        leftover = sandbox.driver.open_existing(name)
        if leftover is not None:
            leftover.kill()
            leftover.remove()
        with contextlib.suppress(OSError):
            root.rmdir()


@pytest.mark.root
def test_a_sweep_with_nothing_left_removes_the_parent_group(tmp_path: Path) -> None:
    """The group a Sandbox's cgroup driver makes on the way in is gone after a sweep that found no box."""
    name = f"sandlot-sweep-{os.getpid()}"
    # Not under tmp_path: a Sandbox refuses a state dir under a 0700 parent (pytest's tmp root is one).
    state_dir = Path(tempfile.mkdtemp(prefix="sandlot-sweep-", dir="/var/tmp"))
    state_dir.chmod(0o755)
    settings = dataclasses.replace(make_settings(), cgroup_name=name, state_dir=state_dir, run_dir=tmp_path / "run")
    root = Path("/sys/fs/cgroup")  # where this host mounts its hierarchies (the driver reads mountinfo)
    places = [root / name, *(root / controller / name for controller in ("memory", "pids", "cpu", "cpuacct"))]
    try:
        sandbox = Sandbox(settings)
        assert any(place.exists() for place in places)
        sandbox.sweep_stale()
    finally:
        shutil.rmtree(state_dir)
    assert [place for place in places if place.exists()] == []


def test_sweep_stale_spares_a_live_holder(high_box: Box, sandbox: Sandbox) -> None:
    high_box.write_file("keep", b"mine")
    sandbox.sweep_stale()
    assert _mounts_of(high_box.root) == [high_box.workdir, high_box.root]
    assert high_box.read_file("keep", max_bytes=100) == b"mine"


def test_open_box_cleans_what_a_dead_holder_left(sandbox: Sandbox, settings: Settings) -> None:
    index = _free_stale_index(sandbox, settings)
    root = sandbox.boxes_dir / str(index)
    root.mkdir(mode=0o711)
    hostfs.mount_tmpfs(root, size_bytes=1 * MIB, inodes=64, uid=0, gid=0, mode=0o711)
    (root / "old-file").write_bytes(b"stale")
    box: Box | None = None
    try:
        box = sandbox.open_box(index)
        assert box.list_files() == []
        assert _mounts_of(root) == [box.workdir, root]  # the fresh tmpfs and its workdir's shared mount
    finally:
        if box is not None:
            box.close()
        for mount in _mounts_of(root):
            hostfs.unmount(mount)
        with contextlib.suppress(OSError):
            root.rmdir()
    assert _mounts_of(root) == []


# ------------------------------------------------------------------ cancellation


async def test_cancelled_run_leaves_no_process(high_box: Box, sandbox: Sandbox, settings: Settings) -> None:
    limits = settings.resolve_limits(LimitRequest(time_limit=5, wall_time_limit=60))
    started = asyncio.Event()
    results: list[Result] = []

    async def consume() -> None:
        async for item in high_box.run(["/bin/sh", "-c", "echo started; sleep 30"], limits=limits):
            if isinstance(item, OutputEvent):
                started.set()
            else:
                results.append(item)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=30)
    assert _host_pids_of_uid(high_box.slot.uid) != []  # sleep is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert results == []
    assert _host_pids_of_uid(high_box.slot.uid) == []
    assert sandbox.driver.open_existing(high_box.slot.cgroup_name) is None

    # The box is still usable.
    again = await run_in(high_box, ["/bin/sh", "-c", "echo again"], limits)
    assert again.status is Status.OK, again
    assert again.stdout == b"again\n"


async def test_closed_generator_leaves_no_process(high_box: Box, sandbox: Sandbox, settings: Settings) -> None:
    """A consumer that stops iterating early (aclose) ends the run too."""
    limits = settings.resolve_limits(LimitRequest(time_limit=5, wall_time_limit=60))
    gen = high_box.run(["/bin/sh", "-c", "echo started; sleep 30"], limits=limits)
    first = await anext(gen)
    assert isinstance(first, OutputEvent)
    assert first.data == b"started\n"
    await gen.aclose()

    assert _host_pids_of_uid(high_box.slot.uid) == []
    assert sandbox.driver.open_existing(high_box.slot.cgroup_name) is None
    again = await run_in(high_box, ["/bin/true"], limits)
    assert again.status is Status.OK, again


def test_uid_scan_finds_a_process_of_the_box_uid(high_box: Box) -> None:
    """The scan the tests above rely on does find a process running as the uid."""
    proc = subprocess.Popen(["sleep", "30"], user=high_box.slot.uid, group=high_box.slot.gid)
    try:
        assert proc.pid in _host_pids_of_uid(high_box.slot.uid)
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in _host_pids_of_uid(high_box.slot.uid)


def test_taking_a_slot_kills_any_process_left_with_its_uid(sandbox: Sandbox) -> None:
    """A process of a slot's uid that escaped every cgroup (a leak) dies when the slot is next taken."""
    index = 951
    uid = sandbox.settings.box_uid_base + index
    stray = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "300"])
    try:
        for _ in range(500):  # bounded: until setpriv has switched to the slot's uid
            if Path(f"/proc/{stray.pid}").stat().st_uid == uid:
                break
            time.sleep(0.01)
        box = sandbox.open_box(index)
        try:
            assert stray.wait(timeout=10) == -signal.SIGKILL
        finally:
            box.close()
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
