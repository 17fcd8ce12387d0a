"""A Box: one slot's workdir, cgroup and jail, and ``run`` that executes one command in it.

Theory of operation
-------------------
``Sandbox`` is created once per process: it checks bubblewrap, builds the static
helper, compiles the seccomp program and detects the cgroup version. ``open_box``
takes a free slot (an flock), cleans whatever a dead holder left, and mounts
the box's own size-capped tmpfs at ``<state_dir>/boxes/<n>``; ``work/`` inside
it becomes ``/box`` in the jail.

``Box.run`` creates a fresh cgroup, then spawns::

    sandlot-helper launch   (root: join the cgroup, drop to the box uid)
      -> bwrap              (box uid: namespaces, mounts, seccomp)
        -> sandlot-helper init  (pid 1: fork, report, reap, kill survivors)
          -> the command

stdout and stderr stream back as ``OutputEvent`` chunks while three watchdogs
run: the wall clock, the CPU budget (re-armed from the cgroup's counter, never a
busy poll) and the output cap. Whichever fires kills the whole cgroup. The
init's private status pipe says whether setup completed and how the command
ended, so a sandbox failure is never mistaken for the program's. The run ends
with one ``Result`` built from the cgroup's CPU time, peak memory and OOM count.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import math
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandlot.config import Settings
from sandlot.errors import ConfigError, SandboxError
from sandlot.models import Limits, OutputEvent, Result, Status, StreamName
from sandlot.sandbox import hostfs, policy, seccomp, slots
from sandlot.sandbox.cgroups import Cgroup, CgroupDriver, CgroupLimits, detect_driver, wait_empty
from sandlot.sandbox.helper import helper_path

# stdin is either all of it up front, or a stream (interactive doors): chunks, then None to close.
StdinSource = bytes | AsyncIterator[bytes | None]

_READ_CHUNK = 64 * 1024
_MIN_CPU_CHECK_S = 0.002
_DRAIN_GRACE_S = 0.5
_HIGH_FD = 10  # pipe ends are moved above the fds the child gets (0-4)
_HELPER_FAILURE = 125


@dataclass
class _RunState:
    output_left: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    status_lines: bytearray = field(default_factory=bytearray)
    kill_reason: str | None = None
    truncated: bool = False


class Sandbox:
    """Host-wide sandbox context, created once at start-up and passed in."""

    def __init__(self, settings: Settings, *, driver: CgroupDriver | None = None) -> None:
        if os.geteuid() != 0:
            raise ConfigError("sandlot must run as root to create boxes (it drops to a per-box uid itself)")
        if not os.access(settings.bwrap_path, os.X_OK):
            raise ConfigError(f"bubblewrap not found at {settings.bwrap_path}; install the bubblewrap package")
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.state_dir, 0o711)
        self.boxes_dir = settings.state_dir / "boxes"
        self.boxes_dir.mkdir(exist_ok=True)
        os.chmod(self.boxes_dir, 0o711)
        self.etc_dir = settings.state_dir / "etc"
        policy.write_synthetic_etc(self.etc_dir)
        os.chmod(self.etc_dir, 0o755)
        self.helper = helper_path(settings.state_dir)
        self.seccomp_program = seccomp.compile_filter()
        self.driver = driver or detect_driver(settings.cgroup_name)

    def open_box(self, index: int | None = None) -> Box:
        """Take a slot (the given one, or the first free) and prepare its workdir."""
        s = self.settings
        if index is None:
            slot = slots.acquire_any(s.run_dir, s.box_uid_base, s.max_boxes)
        else:
            maybe = slots.try_acquire(s.run_dir, index, s.box_uid_base)
            if maybe is None:
                raise SandboxError(f"box slot {index} is held by another process")
            slot = maybe
        box = Box(self, slot)
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
            slot = slots.try_acquire(self.settings.run_dir, index, self.settings.box_uid_base)
            if slot is None:
                continue  # a live process holds it
            try:
                box = Box(self, slot)
                cleaned += box.clean_leftovers()
            finally:
                slot.release()
        return cleaned


class Box:
    """One isolated execution environment; not safe for concurrent runs."""

    def __init__(self, sandbox: Sandbox, slot: slots.Slot) -> None:
        self.sandbox = sandbox
        self.slot = slot
        self.root = sandbox.boxes_dir / str(slot.index)
        self.workdir = self.root / "work"
        self._closed = False
        self._running_pid: int | None = None
        self._kill_running: Callable[[str], None] | None = None
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
        for mount in hostfs.mounts_below(self.root):
            found = 1
            hostfs.unmount(mount)
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

    def reset(self) -> None:
        """Forget everything a previous run left: a new tmpfs, not a tree walk."""
        for mount in hostfs.mounts_below(self.root):
            hostfs.unmount(mount)
        self.prepare()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.clean_leftovers()
        finally:
            self.slot.release()

    # ----------------------------------------------------------- files

    def write_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        hostfs.write_file(self.workdir, name, data, uid=self.slot.uid, gid=self.slot.gid, mode=mode)

    def read_file(self, name: str, max_bytes: int) -> bytes:
        return hostfs.read_file(self.workdir, name, max_bytes=max_bytes)

    def list_files(self) -> list[hostfs.FileInfo]:
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
        kill = self._kill_running
        if kill is not None:
            kill("cancelled")

    def clear_cancel(self) -> None:
        """Forget a cancel request (a new lease of this box begins)."""
        self._cancel_requested = False

    def send_signal(self, sig: int) -> bool:
        """Deliver sig to the running program's process group (an interactive door's Ctrl-C).

        The program is the child of the box's init, which is the child of the
        bwrap process we spawned; the init ignores signals sent from outside.
        Returns False when nothing is running.
        """
        pid = self._running_pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            return False
        for child in children:  # the box's init (pid 1 inside): its group holds the program
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(child), sig)
        return bool(children)

    # ------------------------------------------------------------- run

    async def run(
        self,
        command: Sequence[str],
        *,
        limits: Limits,
        stdin: StdinSource = b"",
        env: Mapping[str, str] | None = None,
        binds: Sequence[policy.Bind] = (),
        stage: str = "run",
    ) -> AsyncIterator[OutputEvent | Result]:
        """Run command in the box: yields OutputEvents as produced, then exactly one Result."""
        s = self.sandbox.settings
        cgroup = self.sandbox.driver.create(
            self.slot.cgroup_name,
            CgroupLimits(
                memory_bytes=limits.memory_limit_bytes,
                max_pids=limits.max_processes,
                cpu_cores=s.cpu_cores_per_box,
            ),
        )
        try:
            async for item in self._run_in(cgroup, command, limits, stdin, env or {}, binds, stage):
                yield item
        finally:
            await self._finish_cgroup(cgroup)

    async def _finish_cgroup(self, cgroup: Cgroup) -> None:
        # Normally the box's init already ended everything; the freeze-and-kill
        # is for whatever did not go with it.
        if cgroup.pids():
            cgroup.kill()
        if not await wait_empty(cgroup):
            raise SandboxError(f"processes survived in {self.slot.cgroup_name} after kill")
        cgroup.remove()

    async def _run_in(
        self,
        cgroup: Cgroup,
        command: Sequence[str],
        limits: Limits,
        stdin: StdinSource,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
        stage: str,
    ) -> AsyncIterator[OutputEvent | Result]:
        loop = asyncio.get_running_loop()
        argv = self._build_argv(cgroup, command, limits, env, binds)
        state = _RunState(output_left=limits.max_output_bytes)
        queue: asyncio.Queue[OutputEvent | None] = asyncio.Queue()
        fds = _Pipes.create(self.sandbox.seccomp_program)
        started = time.monotonic()
        try:
            pid = os.posix_spawn(
                argv[0], argv, {}, file_actions=fds.child_actions(), setsigdef=_ALL_SIGNALS, setsigmask=set()
            )
        except OSError as exc:
            fds.close_all()
            raise SandboxError(f"cannot start the sandbox helper: {exc}") from exc
        fds.close_child_ends()
        self._running_pid = pid
        pidfd = os.pidfd_open(pid)
        exited: asyncio.Future[int] = loop.create_future()
        open_streams = {"stdout", "stderr", "status"}
        streams_done = asyncio.Event()

        def kill(reason: str) -> None:
            if state.kill_reason is None:
                state.kill_reason = reason
            with contextlib.suppress(SandboxError):
                cgroup.kill()

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            _, wstatus = os.waitpid(pid, 0)
            if not exited.done():
                exited.set_result(wstatus)

        def reader(name: str, fd: int) -> None:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                open_streams.discard(name)
                if not open_streams:
                    streams_done.set()
                return
            if name == "status":
                state.status_lines += data
                return
            if state.output_left <= 0:
                # The cap is full and the program still writes: that is the limit, not a quiet drop.
                state.truncated = True
                kill("output")
                return
            if len(data) > state.output_left:
                data = data[: state.output_left]
                state.truncated = True
            state.output_left -= len(data)
            (state.stdout if name == "stdout" else state.stderr).extend(data)
            stream: StreamName = "stdout" if name == "stdout" else "stderr"
            queue.put_nowait(OutputEvent(stream=stream, data=data, stage=stage))
            if state.truncated:
                kill("output")

        self._kill_running = kill
        if self._cancel_requested:
            kill("cancelled")
        loop.add_reader(pidfd, on_exit)
        loop.add_reader(fds.stdout, reader, "stdout", fds.stdout)
        loop.add_reader(fds.stderr, reader, "stderr", fds.stderr)
        loop.add_reader(fds.status, reader, "status", fds.status)
        stdin_task = asyncio.ensure_future(_feed_stdin(fds.take_stdin(), stdin))
        wall_timer = loop.call_later(limits.wall_time_limit_s, kill, "wall")
        cpu_timer: list[asyncio.TimerHandle] = []
        rate = max(self.sandbox.settings.cpu_cores_per_box, 0.01)

        def check_cpu() -> None:
            if exited.done():
                return
            try:
                used = cgroup.cpu_time_s()
            except SandboxError:
                return
            left = limits.time_limit_s - used
            if left <= 0:
                kill("cpu")
            else:
                cpu_timer.append(loop.call_later(max(left / rate, _MIN_CPU_CHECK_S), check_cpu))

        cpu_timer.append(loop.call_later(limits.time_limit_s / rate, check_cpu))

        async def pump_until_exit() -> None:
            await exited
            try:
                await asyncio.wait_for(streams_done.wait(), _DRAIN_GRACE_S)
            except TimeoutError:
                kill("stray")  # something still holds a pipe: end it
                await asyncio.wait_for(streams_done.wait(), _DRAIN_GRACE_S)
            queue.put_nowait(None)

        pump = asyncio.ensure_future(pump_until_exit())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
            await pump
            wall_time = time.monotonic() - started
            wstatus = exited.result()
        finally:
            wall_timer.cancel()
            for t in cpu_timer:
                t.cancel()
            if not exited.done():
                kill("cancelled")
                loop.remove_reader(pidfd)
                await loop.run_in_executor(None, os.waitpid, pid, 0)
            self._running_pid = None
            self._kill_running = None
            pump.cancel()
            stdin_task.cancel()
            for fd in (fds.stdout, fds.stderr, fds.status):
                loop.remove_reader(fd)
            os.close(pidfd)
            fds.close_all()
        stats = cgroup.stats()
        yield _classify(state, wstatus, wall_time, stats.cpu_time_s, stats.memory_peak_bytes, stats.oom_kills, limits)

    def _build_argv(
        self,
        cgroup: Cgroup,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str],
        binds: Sequence[policy.Bind],
    ) -> list[str]:
        s = self.sandbox.settings
        full_env = {"PATH": policy.BASE_PATH, "HOME": policy.BOX_WORKDIR, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        full_env.update(env)
        rlimits = {
            "fsize": limits.max_file_size_bytes,
            "core": 0,
            "nofile": s.open_files,
            "stack": s.stack_bytes,
            # A backstop only: the CPU watchdog, summed over all processes, fires first.
            "cpu": math.ceil(limits.time_limit_s) + 1,
        }
        inner = policy.bwrap_argv(
            bwrap=s.bwrap_path,
            helper=self.sandbox.helper,
            workdir=self.workdir,
            etc_dir=self.sandbox.etc_dir,
            tmp_size_bytes=s.tmp_size_bytes,
            binds=binds,
            env=full_env,
            rlimits=rlimits,
            command=command,
        )
        launch = [str(self.sandbox.helper), "launch", "--uid", str(self.slot.uid), "--gid", str(self.slot.gid)]
        for procs in cgroup.procs_files:
            launch += ["--cgroup", str(procs)]
        return [*launch, "--", *inner]


_ALL_SIGNALS = {s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}


def _dup_high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return new


@dataclass
class _Pipes:
    """Every pipe of one run; child ends are moved to 0-4 only inside the spawned process."""

    stdin_r: int
    stdin_w: int
    stdout: int
    stdout_w: int
    stderr: int
    stderr_w: int
    seccomp_r: int
    status: int
    status_w: int
    _closed: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, seccomp_program: bytes) -> _Pipes:
        made: list[int] = []
        try:
            for _ in range(5):
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
        return cls(made[0], made[1], made[2], made[3], made[4], made[5], sec_r, made[8], made[9])

    def child_actions(self) -> list[tuple[int, int, int]]:
        dup2 = os.POSIX_SPAWN_DUP2
        return [
            (dup2, self.stdin_r, 0),
            (dup2, self.stdout_w, 1),
            (dup2, self.stderr_w, 2),
            (dup2, self.seccomp_r, policy.SECCOMP_FD),
            (dup2, self.status_w, policy.STATUS_FD),
        ]

    def _close(self, fd: int) -> None:
        if fd not in self._closed:
            self._closed.add(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_child_ends(self) -> None:
        for fd in (self.stdin_r, self.stdout_w, self.stderr_w, self.seccomp_r, self.status_w):
            self._close(fd)

    def take_stdin(self) -> int:
        self._closed.add(self.stdin_w)  # ownership moves to the feeder
        return self.stdin_w

    def close_all(self) -> None:
        self.close_child_ends()
        for fd in (self.stdin_w, self.stdout, self.stderr, self.status):
            self._close(fd)


async def _feed_stdin(fd: int, source: StdinSource) -> None:
    """Write stdin without blocking the loop; a program that never reads it is fine."""
    try:
        os.set_blocking(fd, False)
        if isinstance(source, bytes):
            await _write_all(fd, source)
            return
        async for chunk in source:
            if chunk is None or not await _write_all(fd, chunk):
                return
    finally:
        os.close(fd)


async def _write_all(fd: int, data: bytes) -> bool:
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


def _parse_status(raw: bytes) -> tuple[bool, int | None, str | None]:
    """(setup completed, wait status of the command, exec error)."""
    started = False
    wstatus: int | None = None
    exec_error: str | None = None
    for line in raw.decode("ascii", "replace").splitlines():
        parts = line.split()
        if parts[:1] == ["S"]:
            started = True
        elif parts[:1] == ["E"] and len(parts) >= 3 and parts[1].isdigit():
            exec_error = f"{parts[2]} failed: {os.strerror(int(parts[1]))}"
        elif parts[:1] == ["X"] and len(parts) == 3 and parts[1] == "1":
            wstatus = int(parts[2])
    return started, wstatus, exec_error


def _classify(
    state: _RunState,
    helper_wstatus: int,
    wall_time: float,
    cpu_time: float,
    memory_peak: int,
    oom_kills: int,
    limits: Limits,
) -> Result:
    started, wstatus, exec_error = _parse_status(bytes(state.status_lines))
    measured = Result(
        status=Status.INTERNAL_ERROR,
        wall_time=wall_time,
        cpu_time=cpu_time,
        memory_peak=memory_peak,
        truncated=state.truncated,
    )
    if not started or exec_error is not None:
        detail = (
            exec_error
            or bytes(state.stderr).decode("utf-8", "replace").strip()
            or (f"sandbox helper exited with status {helper_wstatus}")
        )
        if state.kill_reason in ("wall", "cpu") and not started:
            detail = f"sandbox setup did not finish within the time limit ({detail})"
        return dataclasses.replace(measured, message=f"sandbox failure: {detail}")

    out = bytes(state.stdout)
    err = bytes(state.stderr)
    exit_code: int | None = None
    sig: int | None = None
    if wstatus is not None:
        if os.WIFEXITED(wstatus):
            exit_code = os.WEXITSTATUS(wstatus)
        elif os.WIFSIGNALED(wstatus):
            sig = os.WTERMSIG(wstatus)
    elif state.kill_reason is not None or oom_kills:
        sig = signal.SIGKILL  # we (or the OOM killer) ended the whole box
    base = dataclasses.replace(measured, status=Status.OK, exit_code=exit_code, signal=sig, stdout=out, stderr=err)

    def with_status(status: Status, message: str) -> Result:
        return dataclasses.replace(base, status=status, message=message)

    if state.kill_reason == "cpu" or sig == signal.SIGXCPU:
        return with_status(Status.TIMEOUT, f"CPU time limit exceeded ({limits.time_limit_s:g} s)")
    if state.kill_reason == "wall":
        return with_status(Status.TIMEOUT, f"wall-clock time limit exceeded ({limits.wall_time_limit_s:g} s)")
    if state.kill_reason == "cancelled":
        return with_status(Status.SIGNALED, "cancelled by request")
    if state.kill_reason == "output":
        return with_status(Status.OUTPUT_LIMIT, f"output limit exceeded ({limits.max_output_bytes} bytes)")
    if oom_kills:
        return with_status(
            Status.MEMORY_LIMIT, f"memory limit exceeded ({limits.memory_limit_bytes // (1024 * 1024)} MB)"
        )
    if wstatus is None:
        return dataclasses.replace(measured, message="sandbox failure: the box's init ended without a status")
    if sig is not None:
        if sig == signal.SIGXFSZ:
            return with_status(Status.SIGNALED, f"file size limit exceeded ({limits.max_file_size_bytes} bytes)")
        return with_status(Status.SIGNALED, f"killed by signal {sig} ({signal.Signals(sig).name})")
    if exit_code:
        return with_status(Status.RUNTIME_ERROR, f"exited with code {exit_code}")
    return base
