"""A Box: one slot's workdir, cgroup and jail, and ``run`` that executes one command in it.

Theory of operation
-------------------
``Sandbox`` is created once per process: it checks bubblewrap, builds the static
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
limits and builds the one ``Result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandlot.config import Settings, check_state_dir_reachable
from sandlot.errors import ConfigError, SandboxError
from sandlot.models import Limits, OutputEvent, Result
from sandlot.sandbox import hostfs, policy, seccomp, slots
from sandlot.sandbox.cgroups import (
    CPU_WEIGHT_WARMING,
    Cgroup,
    CgroupDriver,
    CgroupLimits,
    CgroupStats,
    detect_driver,
    wait_empty,
)
from sandlot.sandbox.gvisor import INIT_CAPABILITIES, INIT_UID, Gvisor, GvisorUnavailable
from sandlot.sandbox.helper import helper_path
from sandlot.sandbox.launch import Launched, Pipes, StdinSource, encode_command, spawn, write_all
from sandlot.sandbox.monitor import RunMonitor

__all__ = ["ISOLATION_LEVELS", "Box", "GvisorUnavailable", "Sandbox", "StdinSource"]

ISOLATION_LEVELS = ("jail", "gvisor")  # weakest first
_launch_ids = itertools.count()


@dataclass
class _Warm:
    """A jail launched ahead of time, its init waiting for a command."""

    launched: Launched
    cgroup: Cgroup
    binds: frozenset[policy.Bind]


class Sandbox:
    """Host-wide sandbox context, created once at start-up and passed in."""

    def __init__(self, settings: Settings, *, driver: CgroupDriver | None = None) -> None:
        if os.geteuid() != 0:
            raise ConfigError("sandlot must run as root to create boxes (it drops to a per-box uid itself)")
        if not os.access(settings.bwrap_path, os.X_OK):
            raise ConfigError(f"bubblewrap not found at {settings.bwrap_path}; install the bubblewrap package")
        self.settings = settings
        check_state_dir_reachable(settings.state_dir)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.state_dir, 0o711)
        self.boxes_dir = settings.state_dir / "boxes"
        self.boxes_dir.mkdir(exist_ok=True)
        os.chmod(self.boxes_dir, 0o711)
        self.etc_dir = settings.state_dir / "etc"
        policy.write_synthetic_etc(self.etc_dir)
        os.chmod(self.etc_dir, 0o755)
        self.helper = helper_path(settings.state_dir)
        self.seccomp_program = seccomp.cached_filter(settings.state_dir / "bin")
        self.driver = driver or detect_driver(settings.cgroup_name)
        self.gvisor = Gvisor(settings, etc_dir=self.etc_dir)

    def check_isolation(self, isolation: str, *, probe: bool = True) -> None:
        """Raise unless boxes of this level can start here (GvisorUnavailable says exactly why).

        ``probe=False`` skips starting a throw-away gVisor sandbox (see ``Gvisor.check``).
        """
        if isolation == "gvisor":
            self.gvisor.check(probe=probe)
        elif isolation != "jail":
            raise SandboxError(f"unknown isolation level {isolation!r}")

    def open_box(self, index: int | None = None, *, isolation: str = "jail") -> Box:
        """Take a slot (the given one, or the first free) and prepare its workdir."""
        self.check_isolation(isolation, probe=False)  # a server probed at start; the CLI's run says it all
        s = self.settings
        if index is None:
            slot = slots.acquire_any(s.run_dir, s.box_uid_base, s.max_boxes)
        else:
            maybe = slots.try_acquire(s.run_dir, index, s.box_uid_base)
            if maybe is None:
                raise SandboxError(f"box slot {index} is held by another process")
            slot = maybe
        box = Box(self, slot, isolation=isolation)
        try:
            box.clean_leftovers()
            box.prepare()
        except BaseException:
            slot.release()
            raise
        return box

    def sweep_stale(self) -> int:
        """Clean every slot no live process holds (run at start-up). Returns how many had leftovers."""
        cleaned = 0
        names = set(self.driver.existing_names())
        indexes = {int(n.removeprefix("box-")) for n in names if n.removeprefix("box-").isdigit()}
        if self.boxes_dir.exists():
            indexes |= {int(p.name) for p in self.boxes_dir.iterdir() if p.name.isdigit()}
        for index in sorted(indexes):
            try:
                slot = slots.try_acquire(self.settings.run_dir, index, self.settings.box_uid_base)
            except slots.UidInUse:
                continue  # another sandlot instance's box: never ours to clean
            if slot is None:
                continue  # a live process holds it
            try:
                box = Box(self, slot)
                cleaned += box.clean_leftovers()
            finally:
                slot.release()
        self.driver.remove_group()  # made by the driver on the way in; kept only while a box is in it
        return cleaned


async def _await_ready(launched: Launched, timeout_s: float) -> None:
    """Read the status channel up to the init's "R" (ready) line; anything else read is kept for the monitor."""
    loop = asyncio.get_running_loop()
    fd = launched.pipes.status
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while b"R\n" not in launched.status_seen and launched.alive():
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_reader(fd, ready.set_result, None)
                    try:
                        async with asyncio.timeout(0.05):  # re-check that the sandbox still lives
                            await ready
                    except TimeoutError:
                        pass
                    finally:
                        loop.remove_reader(fd)
                    continue
                if not data:
                    return
                launched.status_seen += data


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
        self._closed = False
        self._current: RunMonitor | None = None
        self._warm: _Warm | None = None
        self._cancel_requested = False

    # ------------------------------------------------------------ lifecycle

    def clean_leftovers(self) -> int:
        """Remove what a previous holder of this slot left behind. Returns 1 if anything was found."""
        found = 0
        stale = self.sandbox.driver.open_existing(self.slot.cgroup_name)
        if stale is not None:
            found = 1
            stale.kill()
            stale.remove()
        # The slot's uid belongs to this slot alone: any live process with it now is a leftover,
        # whatever cgroup it is (or is not yet) in.
        if kill_uid(self.slot.uid):
            found = 1
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
        policy.write_jail_files(self.jail_files, etc_dir=self.sandbox.etc_dir, helper=self.sandbox.helper)

    def reset(self) -> None:
        """Forget everything a previous run left: a new tmpfs, not a tree walk."""
        if self._closed:
            raise SandboxError(f"box {self.slot.index} is closed")
        self._discard_warm()  # it binds the old workdir
        for mount in hostfs.mounts_below(self.root):
            hostfs.unmount(mount)
        self.prepare()

    def close(self) -> None:
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

    def cancel_run(self) -> None:
        """Kill the running command, and any this lease starts later; Results say "cancelled by request"."""
        self._cancel_requested = True
        if self._current is not None:
            self._current.kill("cancelled")

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

    def prelaunch(self, binds: Sequence[policy.Bind] = ()) -> None:
        """Start the next run's jail now (after a reset), so a run only has to send its command.

        A later ``run`` uses it when its binds are among ``binds``; otherwise it
        starts cold. Failures here are not fatal: the next run starts cold.
        """
        self._discard_warm()
        if self._closed:
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
            launched = self._spawn(cgroup, None, None, {}, binds)
        except SandboxError:
            cgroup.kill()
            cgroup.remove()
            return
        self._warm = _Warm(launched, cgroup, frozenset(binds))

    @property
    def prelaunched(self) -> bool:
        """Is a jail waiting for this box's next run?"""
        return self._warm is not None

    def _discard_warm(self) -> None:
        warm, self._warm = self._warm, None
        if warm is None:
            return
        warm.launched.kill()  # before the cgroup: the launcher may not have joined it yet
        with contextlib.suppress(SandboxError):
            warm.cgroup.kill()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(warm.launched.pid, 0)
        warm.launched.close()
        with contextlib.suppress(SandboxError):
            warm.cgroup.remove()

    def _take_warm(self, binds: Sequence[policy.Bind]) -> _Warm | None:
        warm = self._warm
        if warm is None:
            return None
        if not set(binds) <= warm.binds or not warm.launched.alive():
            self._discard_warm()
            return None
        self._warm = None
        return warm

    def _cgroup_limits(self, limits: Limits) -> CgroupLimits:
        s = self.sandbox.settings
        if self.isolation == "gvisor":  # the cgroup holds gVisor's own kernel too
            return CgroupLimits(
                memory_bytes=limits.memory_limit_bytes + s.gvisor_memory_overhead_bytes,
                max_pids=limits.max_processes + s.gvisor_task_overhead,
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
    ) -> AsyncGenerator[OutputEvent | Result, None]:
        """Run command in the box: yields OutputEvents as produced, then exactly one Result."""
        if self._closed:  # its slot (uid, cgroup) may already belong to another box
            raise SandboxError(f"box {self.slot.index} is closed")
        warm = self._take_warm(binds)
        baseline: CgroupStats | None = None
        if warm is not None:
            cgroup = warm.cgroup
            launched = warm.launched
            try:
                cgroup.set_limits(self._cgroup_limits(limits))
                cgroup.reset_peak()
                baseline = cgroup.stats()
            except SandboxError:
                warm.launched.close()
                cgroup.kill()
                await self._finish_cgroup(cgroup)
                warm = None
        if warm is None:
            cgroup = self.sandbox.driver.create(self.slot.cgroup_name, self._cgroup_limits(limits))
            try:
                launched = self._spawn(cgroup, command, limits, env or {}, binds)
            except SandboxError:
                await self._finish_cgroup(cgroup)
                raise
        monitor = RunMonitor(
            launched,
            cgroup,
            limits,
            stage=stage,
            cpu_rate=self.sandbox.settings.cpu_cores_per_box,
            baseline=baseline,
        )
        self._current = monitor
        try:
            if self._cancel_requested:
                monitor.kill("cancelled")
            if warm is not None:
                await self._send_command(launched, command, limits, env or {})
            async with contextlib.aclosing(monitor.events(stdin)) as items:
                async for item in items:
                    yield item
        finally:
            self._current = None
            await self._finish_cgroup(cgroup)

    async def _send_command(
        self, launched: Launched, command: Sequence[str], limits: Limits, env: Mapping[str, str]
    ) -> None:
        pipes = launched.pipes
        assert pipes.command_w is not None
        message = encode_command(command, self._env(env), self._rlimits(limits))
        if pipes.fifos:
            # Over a FIFO the init must hold the command's read end before ours closes:
            # gVisor's open of a FIFO with no writer left would wait for ever.
            await _await_ready(launched, limits.wall_time_limit_s)
        fd = pipes.take(pipes.command_w)
        try:
            os.set_blocking(fd, False)
            await write_all(fd, message)  # a dead init shows up as a setup failure in the Result
        finally:
            os.close(fd)

    async def _finish_cgroup(self, cgroup: Cgroup) -> None:
        # Normally the box's init already ended everything; the freeze-and-kill
        # is for whatever did not go with it.
        if cgroup.pids():
            cgroup.kill()
        if not await wait_empty(cgroup):
            raise SandboxError(f"processes survived in {self.slot.cgroup_name} after kill")
        cgroup.remove()

    def _env(self, env: Mapping[str, str]) -> dict[str, str]:
        full = {"PATH": policy.BASE_PATH, "HOME": policy.BOX_WORKDIR, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        full.update(env)
        return full

    def _base_rlimits(self) -> dict[str, int]:
        """Every rlimit, for the whole box: the service's own limits never reach it."""
        s = self.sandbox.settings
        return policy.BOX_RLIMITS | {"nofile": s.open_files, "stack": s.stack_bytes}

    def _rlimits(self, limits: Limits | None) -> dict[str, int]:
        s = self.sandbox.settings
        rlimits = {"core": 0, "nofile": s.open_files, "stack": s.stack_bytes}
        if limits is not None:
            rlimits["fsize"] = limits.max_file_size_bytes
            # A backstop only: the CPU watchdog, summed over all processes from the cgroup, fires first.
            rlimits["cpu"] = math.ceil(limits.time_limit_s) + 1
            if self.isolation == "gvisor":
                # gVisor's task clocks, which its RLIMIT_CPU reads, count time a task was runnable but
                # preempted by the host: on a busy host they ran 2-3x ahead of the cgroup's counter and
                # SIGXCPU ended runs at 1.1 s of real CPU under a 2 s limit. There the backstop sits past
                # the wall limit (twice it: the clocks sum threads), so the host's watchdogs decide.
                rlimits["cpu"] = 2 * math.ceil(limits.wall_time_limit_s) + 1
            if self.isolation == "gvisor":
                # The cgroup's pids limit counts gVisor's host threads, not the program's tasks: gVisor's
                # own RLIMIT_NPROC (per uid, threads included) does. The program's first task was forked
                # by the root init and is counted as root's, hence the 1.
                rlimits["nproc"] = max(1, limits.max_processes - 1)
        return rlimits

    def _spawn(
        self,
        cgroup: Cgroup,
        command: Sequence[str] | None,
        limits: Limits | None,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
    ) -> Launched:
        """Start the box's chain; without a command its init waits for one on the command channel."""
        if self.isolation == "gvisor":
            return self._spawn_gvisor(cgroup, command, limits, env, binds)
        pipes = Pipes.create(self.sandbox.seccomp_program, with_command=command is None)
        return spawn(self._build_argv(cgroup, command, limits, env, binds), pipes)

    def _spawn_gvisor(
        self,
        cgroup: Cgroup,
        command: Sequence[str] | None,
        limits: Limits | None,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
    ) -> Launched:
        gv = self.sandbox.gvisor
        paths = self._gvisor
        try:
            paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            gv.make_channels(paths, with_command=command is None, seccomp_program=self.sandbox.seccomp_program)
            init_args = gv.init_args(
                with_command=command is None,
                command=command,
                rlimits=self._rlimits(limits),
                uid=self.slot.uid,
                gid=self.slot.gid,
            )
            config = gv.config(
                args=init_args,
                env=self._env(env) if command is not None else {},
                uid=INIT_UID,
                gid=INIT_UID,
                capabilities=INIT_CAPABILITIES,
                workdir=self.workdir,
                tmp_size_bytes=self.sandbox.settings.tmp_size_bytes,
                binds=binds,
                helper=self.sandbox.helper,
                control_dir=paths.control_dir,
            )
            config["process"]["rlimits"] = policy.oci_rlimits(self._base_rlimits())
            (paths.run_dir / "config.json").write_text(json.dumps(config))
            command_fifo = paths.command_fifo if command is None else None
            pipes = Pipes.over_fifos(paths.status_fifo, command_fifo, paths.signal_fifo)
        except OSError as exc:
            raise SandboxError(f"cannot prepare the gVisor sandbox: {exc}") from exc
        container = f"{self.slot.cgroup_name}-{os.getpid()}-{next(_launch_ids)}"
        inner = gv.runsc_argv(paths.state_dir, paths.run_dir, container)
        launched = spawn(self._launcher(cgroup, ["--keep-root"], inner), pipes)
        launched.name = container
        return launched

    def _build_argv(
        self,
        cgroup: Cgroup,
        command: Sequence[str] | None,
        limits: Limits | None,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
    ) -> list[str]:
        """helper launch ... -- bwrap ... -- init ...; without a command the init waits for one."""
        s = self.sandbox.settings
        inner = policy.bwrap_argv(
            bwrap=s.bwrap_path,
            helper=self.jail_files / policy.JAIL_INIT,
            workdir=self.workdir,
            jail_files=self.jail_files,
            tmp_size_bytes=s.tmp_size_bytes,
            binds=binds,
            env=self._env(env) if command is not None else {},
            rlimits=self._rlimits(limits),
            command=command,
        )
        identity = ["--uid", str(self.slot.uid), "--gid", str(self.slot.gid)]
        for resource, amount in self._base_rlimits().items():
            identity += ["--rlimit", f"{resource}={amount}"]  # as root: it may raise the service's hard limits
        return self._launcher(cgroup, identity, inner)

    def _launcher(self, cgroup: Cgroup, identity: list[str], inner: list[str]) -> list[str]:
        """helper launch IDENTITY --cgroup ... -- INNER: join the box's cgroups, then exec inner."""
        launch = [str(self.sandbox.helper), "launch", *identity]
        for procs in cgroup.procs_files:
            launch += ["--cgroup", str(procs)]
        return [*launch, "--", *inner]
