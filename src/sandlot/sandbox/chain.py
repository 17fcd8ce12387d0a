"""Starting one box's process chain: the argv of helper launch -> bwrap|runsc -> init, and the command.

A ``Chain`` is made per Box and knows the box's slot (uid, gid, cgroup name),
isolation level, workdir and jail files. ``spawn`` starts the chain, with its
command (cold) or without one (prelaunched: the init waits on its command
channel); ``send_command`` then sends the command message (protocol.py). The
environment and rlimits a program gets are decided here, once for both ways.
Pipes and the spawn itself are launch.py's; the bwrap argv and the gVisor
bundle are policy.py's and gvisor.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandlot.errors import SandboxError
from sandlot.models import Limits
from sandlot.sandbox import policy, slots
from sandlot.sandbox.cgroups import Cgroup
from sandlot.sandbox.gvisor import INIT_CAPABILITIES, INIT_UID, GvisorBundle
from sandlot.sandbox.launch import Launched, Pipes, spawn, write_all
from sandlot.sandbox.protocol import encode_command, is_ready

if TYPE_CHECKING:
    from sandlot.sandbox.host import Sandbox

_launch_ids = itertools.count()


async def _await_ready(launched: Launched, timeout_s: float) -> None:
    """Read the status channel up to the init's "R" (ready) line; anything else read is kept for the monitor."""
    loop = asyncio.get_running_loop()
    fd = launched.pipes.status
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while not is_ready(launched.status_seen) and launched.alive():
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    # Woken by a status line or by the sandbox's end (the launcher's pidfd): no polling.
                    ready: asyncio.Future[None] = loop.create_future()
                    loop.add_reader(fd, _wake, ready)
                    loop.add_reader(launched.pidfd, _wake, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(fd)
                        loop.remove_reader(launched.pidfd)
                    continue
                if not data:
                    return
                launched.status_seen += data


@dataclass(frozen=True)
class _Start:
    """One launch of the chain; without a command (prelaunch) the init waits for one."""

    cgroup: Cgroup
    command: Sequence[str] | None
    limits: Limits | None
    env: Mapping[str, str]
    binds: Sequence[policy.Bind]
    rootfs: Path | None = None  # an environment's root; None: the host's


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Chain:
    """How one box's chain is started and given its command."""

    def __init__(
        self,
        sandbox: Sandbox,
        slot: slots.Slot,
        isolation: str,
        workdir: Path,
        jail_files: Path,
        gvisor: GvisorBundle,
    ) -> None:
        self.sandbox = sandbox
        self.slot = slot
        self.isolation = isolation
        self.workdir = workdir
        self.jail_files = jail_files
        self._gvisor = gvisor

    async def send_command(
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

    def spawn(
        self,
        cgroup: Cgroup,
        command: Sequence[str] | None,
        limits: Limits | None,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
        rootfs: Path | None = None,
    ) -> Launched:
        """Start the box's chain; without a command its init waits for one on the command channel.

        ``rootfs``: run in that environment's root (the jail's root, or gVisor's bundle root).
        """
        start = _Start(cgroup, command, limits, env, binds, rootfs)
        if self.isolation == "gvisor":
            return self._spawn_gvisor(start)
        pipes = Pipes.create(self.sandbox.seccomp_program, with_command=command is None)
        return spawn(self._build_argv(start), pipes)

    def _spawn_gvisor(self, start: _Start) -> Launched:
        gv = self.sandbox.gvisor
        paths = self._gvisor
        try:
            paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            gv.make_channels(paths, with_command=start.command is None, seccomp_program=self.sandbox.seccomp_program)
            init_args = gv.init_args(
                with_command=start.command is None,
                command=start.command,
                rlimits=self._rlimits(start.limits),
                uid=self.slot.uid,
                gid=self.slot.gid,
            )
            config = gv.config(
                args=init_args,
                env=self._env(start.env) if start.command is not None else {},
                uid=INIT_UID,
                gid=INIT_UID,
                capabilities=INIT_CAPABILITIES,
                workdir=self.workdir,
                tmp_size_bytes=self.sandbox.settings.tmp_size_bytes,
                binds=start.binds,
                helper=self.sandbox.helper,
                control_dir=paths.control_dir,
                environment_root=start.rootfs,
            )
            config["process"]["rlimits"] = policy.oci_rlimits(self._base_rlimits())
            (paths.run_dir / "config.json").write_text(json.dumps(config))
            command_fifo = paths.command_fifo if start.command is None else None
            pipes = Pipes.over_fifos(paths.status_fifo, command_fifo, paths.signal_fifo)
        except OSError as exc:
            raise SandboxError(f"cannot prepare the gVisor sandbox: {exc}") from exc
        container = f"{self.slot.cgroup_name}-{os.getpid()}-{next(_launch_ids)}"
        inner = gv.runsc_argv(paths.state_dir, paths.run_dir, container)
        launched = spawn(self._launcher(start.cgroup, ["--keep-root"], inner), pipes)
        launched.name = container
        return launched

    def _build_argv(self, start: _Start) -> list[str]:
        """helper launch ... -- bwrap ... -- init ...; without a command the init waits for one."""
        s = self.sandbox.settings
        inner = policy.bwrap_argv(
            bwrap=s.bwrap_path,
            helper=self.jail_files / policy.JAIL_INIT,
            workdir=self.workdir,
            jail_files=self.jail_files,
            tmp_size_bytes=s.tmp_size_bytes,
            binds=start.binds,
            env=self._env(start.env) if start.command is not None else {},
            rlimits=self._rlimits(start.limits),
            command=start.command,
            rootfs=start.rootfs,
        )
        identity = ["--uid", str(self.slot.uid), "--gid", str(self.slot.gid)]
        for resource, amount in self._base_rlimits().items():
            identity += ["--rlimit", f"{resource}={amount}"]  # as root: it may raise the service's hard limits
        return self._launcher(start.cgroup, identity, inner)

    def _launcher(self, cgroup: Cgroup, identity: list[str], inner: list[str]) -> list[str]:
        """helper launch IDENTITY --cgroup ... -- INNER: join the box's cgroups, then exec inner."""
        launch = [str(self.sandbox.helper), "launch", *identity]
        for procs in cgroup.procs_files:
            launch += ["--cgroup", str(procs)]
        return [*launch, "--", *inner]
