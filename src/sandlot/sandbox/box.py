"""A Box: one slot's workdir, cgroup and jail, and ``run`` that executes one command in it.

Theory of operation
-------------------
``Sandbox`` (host.py) is created once per process: it checks bubblewrap, builds the static
helper, compiles the seccomp program and detects the cgroup version. ``open_box``
takes a free slot (an flock), cleans whatever a dead holder left, and mounts
the box's own size-capped tmpfs at ``<state_dir>/boxes/<n>``; ``work/`` inside
it becomes ``/box`` in the jail.

``Box.run`` executes one command in a jail::

    sandlot-helper launch   (root: join the cgroup, drop to the box uid)
      -> bwrap              (box uid: fresh namespaces, mounts, seccomp)
        -> sandlot-helper init  (pid 1: fork, report, reap, kill survivors)
          -> the command

Isolation level ``gvisor`` swaps bwrap for gVisor's ``runsc`` (a box is opened
at one level and keeps it; see gvisor.py): same slot, init, protocol and monitor.

Cold, that whole chain is spawned for the run (~9 ms here, mostly bubblewrap).
A pool box instead ``prelaunch``es its next jail as soon as the previous run is
over and the workdir reset: fresh namespaces, fresh cgroup, the init waiting on
a command pipe. ``run`` then only sets the run's limits on the cgroup, records
the accounting baselines and sends the command (launch.py); the program starts
at once. Either way ``monitor.RunMonitor`` streams the output, enforces the
limits and builds the one ``Result``, and the run's ``reaper.Reaper`` ends the
box and removes its cgroup, whatever ended the run: reaper.py is the one owner
of killing a box (a discarded prelaunched jail and a crashed holder's leftovers
included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandlot.errors import SandboxError
from sandlot.models import Limits, OutputEvent, Result
from sandlot.sandbox import hostfs, policy, slots, workdirs
from sandlot.sandbox.cgroups import CPU_WEIGHT_WARMING, Cgroup, CgroupLimits, CgroupStats
from sandlot.sandbox.chain import Chain
from sandlot.sandbox.gvisor import fix_environment_mount_points, host_task_limit
from sandlot.sandbox.launch import Launched, StdinSource
from sandlot.sandbox.monitor import RunMonitor
from sandlot.sandbox.reaper import Reaper, clean_slot, clear_stale

if TYPE_CHECKING:
    from sandlot.sandbox.host import Sandbox

__all__ = ["ISOLATION_LEVELS", "Box", "StdinSource"]

ISOLATION_LEVELS = ("jail", "gvisor")  # weakest first


@dataclass
class _Warm:
    """A jail launched ahead of time, its init waiting for a command."""

    launched: Launched
    cgroup: Cgroup
    binds: frozenset[policy.Bind]
    rootfs: Path | None  # the environment's root it was launched in; None: the host's


class Box:
    """One isolated execution environment; not safe for concurrent runs."""

    def __init__(self, sandbox: Sandbox, slot: slots.Slot, *, isolation: str = "jail") -> None:
        self.sandbox = sandbox
        self.slot = slot
        self.isolation = isolation
        self.root = sandbox.boxes_dir / str(slot.index)
        self.workdir = self.root / "work"
        # What the jail binds from the host (synthetic /etc, the init), copied into the box's own
        # tmpfs: the box's mountinfo then names paths of that tmpfs, not the host's state_dir.
        self.jail_files = self.root / "jail"
        self._gvisor = sandbox.gvisor.bundle_for(sandbox.settings.run_dir / "gvisor" / str(slot.index), self.root)
        self._chain = Chain(sandbox, slot, isolation, self.workdir, self.jail_files, self._gvisor)
        self._closed = False
        self._current: RunMonitor | None = None
        self._warm: _Warm | None = None
        self.last_run_warm = False  # whether the last ``run`` took a pre-launched jail (tests, benchmarks)
        self._cancel_requested = False
        self._attached: workdirs.Workdir | None = None  # a session's workdir mounted over this box's own
        # reset, prelaunch and close run in worker threads and on the loop: one at a time, and never one
        # after close. A give-back cancelled at shutdown leaves its reset running in its thread; without
        # this lock close would release the slot under it and the late reset would mount over the slot's
        # next holder.
        self._lifecycle = threading.RLock()

    # ------------------------------------------------------------ lifecycle

    def clean_leftovers(self) -> int:
        """Remove what a previous holder of this slot left behind. Returns 1 if anything was found."""
        found = int(clean_slot(self.sandbox.driver, self.slot.cgroup_name, self.slot.uid))
        for mount in hostfs.mounts_below(self.root):
            found = 1
            hostfs.unmount(mount)
        if self._gvisor.run_dir.exists():  # runsc's state of containers killed with the cgroup
            shutil.rmtree(self._gvisor.run_dir, ignore_errors=True)
            found = 1
        if self.root.exists():
            with contextlib.suppress(OSError):
                os.rmdir(self.root)
            if self.root.exists():  # not a mount, so plain files of ours: safe to remove
                shutil.rmtree(self.root, ignore_errors=True)
                found = 1
        return found

    def prepare(self) -> None:
        """Mount a fresh, empty, size-capped workdir."""
        s = self.sandbox.settings
        self.root.mkdir(mode=0o711, exist_ok=True)
        hostfs.mount_tmpfs(self.root, size_bytes=s.box_disk_bytes, inodes=s.box_inodes, uid=0, gid=0, mode=0o711)
        self.workdir.mkdir(mode=0o700)
        os.chown(self.workdir, self.slot.uid, self.slot.gid)
        os.chmod(self.workdir, 0o700)
        hostfs.bind_shared(self.workdir)  # see attach_workdir
        self._attached = None
        policy.write_jail_files(self.jail_files, etc_dir=self.sandbox.etc_dir, helper=self.sandbox.helper)

    def reset(self) -> None:
        """Forget everything a previous run left: a new tmpfs, not a tree walk."""
        with self._lifecycle:
            if self._closed:
                raise SandboxError(f"box {self.slot.index} is closed")
            self._discard_warm()  # it binds the old workdir
            for mount in hostfs.mounts_below(self.root):
                hostfs.unmount(mount)
            self.prepare()

    def close(self) -> None:
        """Kill what runs, clean the slot and give it up; waits for a reset or prelaunch in progress."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            try:
                self._discard_warm()
                self.clean_leftovers()
            finally:
                self.slot.release()

    # ----------------------------------------------------------- files

    def write_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        hostfs.write_file(self.workdir, name, data, uid=self.slot.uid, gid=self.slot.gid, mode=mode)

    def read_file(self, name: str, max_bytes: int) -> bytes:
        return hostfs.read_file(self.workdir, name, max_bytes=max_bytes)

    def list_files(self) -> list[hostfs.FileInfo]:
        return self.listing().files

    def listing(self) -> hostfs.Listing:
        """The workdir's regular files, up to ``hostfs.MAX_LIST_ENTRIES`` entries looked at, and whether it stopped."""
        return hostfs.list_files(self.workdir)

    def attach_workdir(self, source: workdirs.Workdir) -> None:
        """Show ``source`` (a session's workdir) at this box's /box for the lease's runs.

        It is bound over the box's own workdir, which is a shared mount: the
        bind propagates into the jail already launched for the next run (its
        /box is a slave of that mount), whose init resolves /box again when
        the command arrives. Host-side file operations on ``workdir`` see the
        session's files too. A gVisor sandbox's gofer holds the old directory
        open, so there the next run starts cold (``_take_warm``).
        """
        if self._attached is not None:
            raise SandboxError(f"box {self.slot.index} already has a session's workdir attached")
        workdirs.attach(source, self.workdir)
        self._attached = source

    def detach_workdir(self) -> None:
        """Undo ``attach_workdir`` (after the lease's runs: nothing of the session is left running)."""
        if self._attached is not None:
            hostfs.unmount(self.workdir)  # the topmost mount only: the session's bind
            self._attached = None

    def cow_bind(self, name: str, lower: Path, dest: str) -> policy.Bind:
        """A copy-on-write view of a shared host directory (for example a warm build cache).

        Writes land in an upper layer inside this box's tmpfs and vanish with it;
        the shared directory itself is never written by a box.
        """
        base = self.root / ".cow" / name
        merged = base / "merged"
        if not hostfs.is_mount_point(merged):
            for sub in ("upper", "work", "merged"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / ".cow", 0o711)
            os.chmod(base, 0o711)
            hostfs.mount_overlay(lower=lower, upper=base / "upper", work=base / "work", target=merged)
        return policy.Bind(merged, dest, writable=True)

    def _gvisor_root(self, rootfs: Path) -> Path:
        """An environment's root as gVisor's bundle root: runsc (as root) makes its mount points in
        the bundle's root on disk, so the stored root is shown through a copy-on-write overlay in this
        box's tmpfs; what runsc makes there vanishes with the box's reset, the store is never written."""
        name = "envroot-" + hashlib.sha256(os.fsencode(rootfs)).hexdigest()[:16]
        merged = self.cow_bind(name, rootfs, "/").source
        fix_environment_mount_points(merged)
        return merged

    def cancel_run(self) -> None:
        """Kill the running command, and any this lease starts later; Results say "cancelled by request"."""
        self._cancel_requested = True
        if self._current is not None:
            self._current.kill("cancelled")

    def run_stats(self, *, reset_peak: bool = False) -> CgroupStats | None:
        """The running command's cgroup counters (CPU since its jail started); None when nothing runs.

        ``reset_peak``: then start the memory peak again from the current usage (where the
        cgroup version can), so that a later call reports the peak of what ran in between.
        """
        current = self._current
        if current is None:
            return None
        try:
            stats = current.cgroup.stats()
            if reset_peak:
                current.cgroup.reset_peak()
            return stats
        except SandboxError:
            return None

    def clear_cancel(self) -> None:
        """Forget a cancel request (a new lease of this box begins)."""
        self._cancel_requested = False

    def send_signal(self, sig: int) -> bool:
        """Deliver sig to the running program's process group (an interactive door's Ctrl-C).

        The program is the child of the box's init, which is the child of the
        bwrap process we spawned; the init ignores signals sent from outside.
        Under gVisor the init passes it on (one byte on its signal FIFO), so no
        process is started per signal. Returns False when nothing is running.
        """
        current = self._current
        if current is None:
            return False
        if self.isolation == "gvisor":
            return self._signal_gvisor(current, sig)
        try:
            with open(f"/proc/{current.pid}/task/{current.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return False
        for child in children:  # the box's init (pid 1 inside): its group holds the program
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(child), sig)
        return bool(children)

    def _signal_gvisor(self, current: RunMonitor, sig: int) -> bool:
        # One byte on the init's signal FIFO: the init passes it to the program's process group. A full
        # FIFO (64 KiB of undelivered signals) drops the signal, as the kernel merges pending ones.
        fd = current.launched.pipes.signal_w
        if fd is None or not 0 < sig < 256:  # the doors allow a few; one byte carries any of them
            return False
        with contextlib.suppress(BlockingIOError):
            os.write(fd, bytes([int(sig)]))
        return True

    # ------------------------------------------------------------- run

    def prelaunch(self, binds: Sequence[policy.Bind] = (), rootfs: Path | None = None) -> None:
        """Start the next run's jail now (after a reset), so a run only has to send its command.

        The jail is launched in one environment: ``rootfs`` (an environment's root), or the
        host's. A later ``run`` uses it only when it runs in that same root and its binds are
        among ``binds``; otherwise it starts cold. Failures here are not fatal: the next run
        starts cold. A jail already waiting is kept (it is as fresh as a new one): replacing it
        would wait for its end on the event loop, and ``run`` discards one that does not fit.
        """
        with self._lifecycle:
            self._prelaunch_locked(binds, rootfs)

    def _prelaunch_locked(self, binds: Sequence[policy.Bind], rootfs: Path | None) -> None:
        if self._closed or self._warm is not None:
            return
        s = self.sandbox.settings
        try:
            # At the lowest CPU weight: a sandbox starting ahead of time (gVisor's costs
            # ~0.1 s of CPU) must not slow the programs running in the other boxes. The
            # run that takes it sets the normal weight (``run`` -> set_limits).
            limits = dataclasses.replace(self._cgroup_limits(s.run_maxima), cpu_weight=CPU_WEIGHT_WARMING)
            cgroup = self.sandbox.driver.create(self.slot.cgroup_name, limits)
        except SandboxError:
            return
        try:
            root = self._gvisor_root(rootfs) if rootfs is not None and self.isolation == "gvisor" else rootfs
            launched = self._chain.spawn(cgroup, None, None, {}, binds, root)
        except (SandboxError, OSError):  # OSError: an environment removed from the store meanwhile
            self._reaper(cgroup).discard_unused()
            return
        self._warm = _Warm(launched, cgroup, frozenset(binds), rootfs)

    @property
    def prelaunched(self) -> bool:
        """Is a jail waiting for this box's next run?"""
        return self._warm is not None

    @property
    def prelaunched_for(self) -> Path | None:
        """The environment root the waiting jail runs in (None: the host's, or no jail waits)."""
        return self._warm.rootfs if self._warm is not None else None

    def _reaper(self, cgroup: Cgroup, launched: Launched | None = None) -> Reaper:
        return Reaper(cgroup, self.slot.cgroup_name, launched)

    def _discard_warm(self) -> None:
        """End the waiting jail (from a worker thread: Box.reset and Box.close run in one)."""
        warm, self._warm = self._warm, None
        if warm is not None:
            with contextlib.suppress(SandboxError):  # what survives is the next clean's
                self._reaper(warm.cgroup, warm.launched).reap_blocking()

    async def _take_warm(self, binds: Sequence[policy.Bind], rootfs: Path | None) -> _Warm | None:
        warm, self._warm = self._warm, None
        # Never a jail launched in another environment (or the host's root for an environment's run):
        # its mounts are that root's. Such a jail is ended and the run starts cold in its own. gVisor's
        # sandbox holds the workdir it was started with open: a session's workdir needs a fresh one.
        gofer_stale = self._attached is not None and self.isolation == "gvisor"
        fits = warm is not None and warm.rootfs == rootfs and set(binds) <= warm.binds and warm.launched.alive()
        if warm is None or (fits and not gofer_stale):
            return warm
        reaper = self._reaper(warm.cgroup, warm.launched)
        reaper.kill()
        with contextlib.suppress(SandboxError):  # what survives is the next clear_stale's
            await reaper.reap()
        return None

    def _cgroup_limits(self, limits: Limits) -> CgroupLimits:
        s = self.sandbox.settings
        if self.isolation == "gvisor":  # the cgroup holds gVisor's own kernel too
            return CgroupLimits(
                memory_bytes=limits.memory_limit_bytes + s.gvisor_memory_overhead_bytes,
                max_pids=host_task_limit(limits.max_processes, s.gvisor_task_overhead),
                cpu_cores=s.cpu_cores_per_box,
            )
        return CgroupLimits(
            memory_bytes=limits.memory_limit_bytes,
            max_pids=limits.max_processes,
            cpu_cores=s.cpu_cores_per_box,
        )

    async def run(
        self,
        command: Sequence[str],
        *,
        limits: Limits,
        stdin: StdinSource = b"",
        env: Mapping[str, str] | None = None,
        binds: Sequence[policy.Bind] = (),
        stage: str = "run",
        rootfs: Path | None = None,
        keep_output: bool = True,
    ) -> AsyncGenerator[OutputEvent | Result, None]:
        """Run command in the box: yields OutputEvents as produced, then exactly one Result.

        ``rootfs``: an environment's root the command runs in instead of the host's.
        ``keep_output``: False leaves the Result's stdout and stderr empty (a long-lived
        program whose output is only wanted as events: a stateful session's interpreter).
        """
        if self._closed:  # its slot (uid, cgroup) may already belong to another box
            raise SandboxError(f"box {self.slot.index} is closed")
        warm = await self._take_warm(binds, rootfs)
        baseline: CgroupStats | None = None
        if warm is not None:
            cgroup = warm.cgroup
            launched = warm.launched
            try:
                cgroup.set_limits(self._cgroup_limits(limits))
                cgroup.reset_peak()
                baseline = cgroup.stats()
            except SandboxError:
                reaper = self._reaper(cgroup, launched)
                reaper.kill()
                await reaper.reap()
                warm = None
        self.last_run_warm = warm is not None
        if warm is None:
            if rootfs is not None and self.isolation == "gvisor":
                rootfs = self._gvisor_root(rootfs)
            await clear_stale(self.sandbox.driver, self.slot.cgroup_name)
            cgroup = self.sandbox.driver.create(self.slot.cgroup_name, self._cgroup_limits(limits))
            try:
                launched = self._chain.spawn(cgroup, command, limits, env or {}, binds, rootfs)
            except (SandboxError, OSError) as exc:
                await self._reaper(cgroup).reap()
                if isinstance(exc, OSError):  # an environment's root removed from the store under the job
                    raise SandboxError(f"cannot start the box: {exc}") from exc
                raise
        reaper = self._reaper(cgroup, launched)
        monitor = RunMonitor(
            launched,
            cgroup,
            limits,
            reaper=reaper,
            stage=stage,
            cpu_rate=self.sandbox.settings.cpu_cores_per_box,
            baseline=baseline,
            keep_output=keep_output,
        )
        self._current = monitor
        try:
            if self._cancel_requested:
                monitor.kill("cancelled")
            if warm is not None:
                await self._chain.send_command(launched, command, limits, env or {})
            async with contextlib.aclosing(monitor.events(stdin)) as items:
                async for item in items:
                    yield item
        finally:
            self._current = None
            await reaper.reap()
