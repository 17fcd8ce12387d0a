"""Who kills the box? This module: the one owner of ending a box's processes and releasing its cgroup.

Theory of operation
-------------------
A launched box is two things to end: the process sandlot spawned (``Launched``:
``sandlot-helper launch``, bwrap or runsc after its exec) and the box's cgroup,
which holds every process of the run from its first instruction (the launcher
joins it before it execs). Killing the launcher alone is not enough (gVisor's
Sentry and gofer, a program's double fork); killing the cgroup alone is not
either (the launcher may not have joined it yet). So every path that ends a box
does both, through a ``Reaper`` made per launch:

* ``Reaper.kill()`` -- a limit fired (wall clock, CPU, output), a cancel, a stray
  pipe holder, a consumer gone mid-run: SIGKILL now, and return at once. The
  launcher dies through its pidfd on the spot (immune to pid reuse; bwrap's
  ``--die-with-parent`` takes the box's init and pid namespace with it); the
  cgroup kill, which on cgroup v1 waits for the freezer, runs in a worker thread.
* ``Reaper.watch()`` -- the launcher's wait status, reaped on its pidfd by the
  event loop (no thread, no polling): what ``RunMonitor`` waits on.
* ``Reaper.reap()`` -- the end of every run, however it ended: the launcher gets
  ``LAUNCHER_GRACE_S`` to exit on its own (normally the init has reported and
  the namespaces are tearing down), then is killed; whatever is left in the
  cgroup is killed, and the cgroup removed once empty (``end_cgroup``). Raises
  ``SandboxError`` if a process survived. Cancelled midway, it still kills the
  box, and the launcher's fds are released once it is gone.
* ``Reaper.reap_blocking()`` -- the same from a worker thread, without the grace,
  for a prelaunched jail that never ran (``Box.reset`` / ``Box.close``);
  ``Reaper.discard_unused()`` for a cgroup whose launch failed (nothing joined it).
* ``clean_slot()`` -- after a crash, at ``open_box`` and the start-up sweep: a
  slot's stale cgroup, and every live process with the slot's uid (it belongs
  to that slot alone, whatever cgroup the process is in). ``clear_stale()`` is
  its async cousin for a run about to create the slot's cgroup.

Inside the box, the init (``helper.c``: ``reap``) kills everything the program
started as soon as the program ends, and reports only after reaping it all; this
module is the host's half, for what the init cannot reach (the init itself,
bwrap, runsc, a box killed before its program started).

Blocking waits stay off the event loop: waiting for processes to exit is done
on pidfds; the waits that can only poll (v1's ``freezer.state`` has no
notification, and exited tasks may take a scheduler tick to leave a cgroup)
run in a worker thread, bounded by ``FREEZE_TIMEOUT_S`` and ``EMPTY_TIMEOUT_S``.
The synchronous methods that end a box (``Box.reset``, ``Box.close``,
``Sandbox.open_box``, ``Sandbox.sweep_stale``) block; their callers run them in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time

from sandlot.errors import SandboxError
from sandlot.sandbox.cgroups import Cgroup, CgroupDriver
from sandlot.sandbox.launch import Launched

LAUNCHER_GRACE_S = 0.5  # for the launcher to exit on its own once the run is over
EMPTY_TIMEOUT_S = 5.0  # for a killed cgroup to empty and be removed
_LEAVE_TICK_S = 0.001  # exited tasks can take a scheduler tick to leave the cgroup (thread only)


class Reaper:
    """Ends one launched box, its launcher and its cgroup, and removes the cgroup. One per launch."""

    def __init__(self, cgroup: Cgroup, name: str, launched: Launched | None = None) -> None:
        self.cgroup = cgroup
        self.name = name  # the cgroup's name, for messages
        self.launched = launched
        self._exited: asyncio.Future[int] | None = None
        self._killing: asyncio.Future[None] | None = None

    def watch(self) -> asyncio.Future[int]:
        """The launcher's wait status once it has exited; reaped here, on its pidfd."""
        if self._exited is not None:
            return self._exited
        launched = self.launched
        assert launched is not None, "nothing was launched"
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()

        def on_exit() -> None:
            loop.remove_reader(launched.pidfd)
            try:
                _, wstatus = os.waitpid(launched.pid, 0)
            except ChildProcessError:  # reaped elsewhere already: its status is lost, not the run's end
                wstatus = 0
            launched.pipes.launcher_exited()
            if not exited.done():
                exited.set_result(wstatus)

        loop.add_reader(launched.pidfd, on_exit)
        self._exited = exited
        return exited

    def kill(self) -> None:
        """SIGKILL the whole box now. Never waits on an event loop; from a worker thread it waits for the kill."""
        if self.launched is not None:
            self.launched.kill()  # before the cgroup: the launcher may not have joined it yet
        if self._killing is not None and not self._killing.done():
            return  # the kill under way ends everything in the cgroup (frozen first, or cgroup.kill)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            _kill_cgroup(self.cgroup)
            return
        self._killing = asyncio.ensure_future(asyncio.to_thread(_kill_cgroup, self.cgroup))

    async def reap(self) -> None:
        """End the box, whatever state it is in, reap its launcher and remove its cgroup (see the module doc)."""
        launched = self.launched
        if launched is not None:
            exited = self.watch()
            try:
                if not exited.done():
                    try:
                        async with asyncio.timeout(LAUNCHER_GRACE_S):
                            await asyncio.shield(exited)
                    except TimeoutError:
                        self.kill()
                        await asyncio.shield(exited)  # SIGKILLed: its pidfd says when it is gone
            except asyncio.CancelledError:
                # Whoever waited went away: nothing of the box may outlive that. The launcher is
                # reaped on its pidfd as usual and its fds released then; a cgroup left behind is
                # the next run's clear_stale (or the next clean_slot).
                self.kill()
                exited.add_done_callback(lambda _: launched.close())
                raise
            launched.close()
        if self._killing is not None:
            await self._killing
        # Normally the init already ended everything and the cgroup is empty: remove it here and now.
        if self.cgroup.pids() or not self.cgroup.remove():
            await asyncio.to_thread(end_cgroup, self.cgroup, self.name)

    def discard_unused(self) -> None:
        """A cgroup nothing joined (its launch failed): one rmdir, no wait; a failure is left to clear_stale."""
        with contextlib.suppress(SandboxError):
            self.cgroup.remove()

    def reap_blocking(self) -> None:
        """``reap`` for a worker thread and a jail that never ran: kill at once, wait, remove."""
        launched = self.launched
        if launched is not None:
            launched.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(launched.pid, 0)
            launched.close()
        end_cgroup(self.cgroup, self.name)


def _kill_cgroup(cgroup: Cgroup) -> None:
    # A cgroup whose directories are already gone has nothing left to kill.
    with contextlib.suppress(SandboxError):
        cgroup.kill()


def end_cgroup(cgroup: Cgroup, name: str, timeout_s: float = EMPTY_TIMEOUT_S) -> None:
    """Kill what is left in the cgroup, wait for it to empty and remove it. Blocks: a worker thread's job."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = cgroup.pids()
        if pids:
            cgroup.kill()
            _wait_pids_gone(pids, deadline - time.monotonic())
        elif cgroup.remove():
            return
        else:
            time.sleep(_LEAVE_TICK_S)  # empty, yet busy: its last tasks are still leaving
        if time.monotonic() > deadline:
            raise SandboxError(f"processes survived in {name} after kill")


def _wait_pids_gone(pids: list[int], timeout_s: float) -> None:
    """Block until the given processes are gone, on pidfds (no polling)."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        finally:
            os.close(fd)


async def clear_stale(driver: CgroupDriver, name: str) -> None:
    """End a cgroup an earlier run of this slot left behind, so that a fresh one can be created."""
    stale = driver.open_existing(name)
    if stale is not None:
        await asyncio.to_thread(end_cgroup, stale, name)


def clean_slot(driver: CgroupDriver, name: str, uid: int) -> bool:
    """After a crash: end the slot's stale cgroup and every live process of its uid. Blocks. True if any."""
    found = False
    stale = driver.open_existing(name)
    if stale is not None:
        found = True
        end_cgroup(stale, name)
    # The slot's uid belongs to this slot alone: any live process with it now is a leftover,
    # whatever cgroup it is (or is not yet) in.
    if kill_uid(uid):
        found = True
    return found


def kill_uid(uid: int) -> int:
    """SIGKILL every live process whose real uid is ``uid`` (zombies are already dead). Returns how many."""
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:  # /proc/<pid> belongs to the process's (effective) uid
                continue
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue  # gone already
        if fields.get("State", "").strip().startswith("Z"):
            continue
        uids = fields.get("Uid", "").split()
        if uids and int(uids[0]) == uid:
            try:
                fd = os.pidfd_open(int(entry.name))
            except OSError:
                continue
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return killed
