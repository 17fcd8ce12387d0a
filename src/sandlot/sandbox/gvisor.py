"""The gVisor backend: the jail's policy as an OCI bundle, run by ``runsc``.

Theory of operation
-------------------
Isolation level ``gvisor`` puts gVisor's user-space kernel (the Sentry)
between the program and the host kernel. Everything else is the jail's: the
same slot (host uid, cgroup, size-capped tmpfs workdir), the same init
(``sandlot-helper init`` as pid 1 of the sandbox), the same status protocol
and the same ``RunMonitor``. What differs is how the box is started::

    sandlot-helper launch --keep-root   (join the box's cgroups, stay root)
      -> runsc run --bundle ...         (gVisor: Sentry + gofer, all in that cgroup)
        -> sandlot-helper init          (pid 1 inside, as root of gVisor's kernel)
          -> the program                (as the box's uid)

runsc passes nothing but stdio into the sandbox, so the init's status,
command and signal channels are host FIFOs in ``<box>/.gvisor`` (on the box's
own tmpfs), bind-mounted at ``/.sandlot``, next to a file holding the jail's
seccomp program; runsc's ``--host-fifo=open`` lets the init open them. All of
it is root's (mode 0600 in a 0700 directory), and the init unlinks every name
as soon as it holds it, before any program exists, so a program cannot reopen
them to forge a status.

The host holds both ends of each FIFO from before the launch: a status reader
(what the monitor reads) plus a writer kept until runsc exits (so EOF means
the sandbox is gone, never "the init has not opened it yet"), a command
writer plus a reader that keeps a written command buffered until the init
reads it, and a signal writer (one byte per signal, for the program's process
group; a full FIFO drops it) plus a reader for the same reason.

The init and the program. gVisor (runsc 2022) lacks four things the jail
gets from the host kernel or bwrap, so the init supplies them (helper.c):
it starts as root with only the capabilities of ``INIT_CAPABILITIES`` and
keeps CAP_KILL alone after forking the program as the box uid with an empty
bounding set, since gVisor lets a program SIGKILL its own pid 1 (a kernel
ignores that) and a different uid is what stops it; it installs the same
seccomp program bwrap loads; it relays the program's output from pipes of
gVisor's own, since gVisor's writes to a host pipe return short; and it sets
RLIMIT_NPROC to the run's ``max_processes``, which gVisor counts per uid,
threads included, as the host cgroup's pids limit cannot (it sees gVisor's
host threads, not the program's tasks).

The bundle (``config.json``) is written per launch into the box's run
directory: read-only /usr and /etc (the synthetic one, as files copied into a
per-host directory, since symlinks out of a bind mount would point back into
the sandbox), the root a read-only empty directory with the host's top-level
symlinks, /usr/local masked, the workdir at /box, size-capped tmpfs /tmp and
/dev/shm, a private /proc, no network, no capabilities, no_new_privs.

Accounting: runsc runs with ``--ignore-cgroups`` inside the box's cgroup, so
the cgroup holds the whole sandbox. CPU time and peak memory therefore
include gVisor's own kernel doing the program's syscalls; the memory limit
gets an allowance for it (``gvisor_memory_overhead_bytes``). The program's
tasks are bounded by RLIMIT_NPROC inside; the cgroup's pids limit only has to
hold gVisor's host tasks for that many, which ``host_task_limit`` sizes for
the worst case. It is not a small multiple: under the ptrace platform every
address space of the sandbox is a host stub process that gets a stub thread
for each Sentry thread that ever ran one of its tasks (a thread can have one
tracer only) and keeps it, and stubs are pooled, never ended (gVisor issue
3942). With ``max_processes + 256`` a bash fork bomb capped at 20 processes
took the host tasks to 228-276 and, in 8 runs of 40, runsc's next stub
failed with EAGAIN, the Sentry panicked and the init could write no status.
The memory limit bounds them as well: their kernel memory (~26 KiB each) is
charged to the box's memory cgroup. docs/security.md has the figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandlot.config import Settings
from sandlot.errors import IsolationUnavailable
from sandlot.sandbox import policy

CONTROL_DIR = "/.sandlot"  # where the FIFOs appear inside the sandbox
STATUS_FIFO = "status"
COMMAND_FIFO = "command"
SIGNAL_FIFO = "signal"
SECCOMP_FILE = "seccomp"
INIT_UID = 0  # see "The init and the program" above
# What the init starts with: switching the program to the box uid with an empty bounding set, searching
# the box uid's 0700 workdir (its start-up cwd) and, the one it keeps after the fork, killing the box
# uid's processes.
INIT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH", "CAP_KILL")
_PROBE_TIMEOUT_S = 30.0
# Go threads of the Sentry that no task of the program holds (its runtime, timers, gofer and host I/O):
# about 17 on an idle sandbox with 2 CPUs, counted here with room to spare.
_SENTRY_SERVICE_THREADS = 32
_PIDS_MAX_LIMIT = 4 * 1024 * 1024  # the largest pids.max the kernel accepts (PID_MAX_LIMIT, 64-bit)


def host_task_limit(max_processes: int, fixed_overhead: int) -> int:
    """The host cgroup's pids limit for a gVisor box whose program may have ``max_processes`` tasks.

    An upper bound of what runsc's ptrace platform can need, so that gVisor's own
    threads are never what hits it (see "Accounting" above): the program's
    tasks are bounded inside, by RLIMIT_NPROC. ``fixed_overhead`` covers runsc,
    the gofer and the Sentry's start-up (``gvisor_task_overhead``).
    """
    tasks = max_processes + 1  # the program's, plus the init
    # A Sentry thread not locked to a stub is running Go code (two per CPU: running and spinning) or held
    # by one task: in a host syscall, or tracing the task's stub while it runs the program's code.
    sentry_threads = tasks + 2 * (os.cpu_count() or 1) + _SENTRY_SERVICE_THREADS
    # A live one per process, a second while one execs, a third for one whose release is under way.
    address_spaces = 3 * tasks
    # Each: its first thread, the Sentry thread locked to it for making more, and a stub thread for
    # each Sentry thread that ran a task in it plus one for each that changed its mappings.
    per_address_space = 2 + 2 * sentry_threads
    return min(_PIDS_MAX_LIMIT, fixed_overhead + sentry_threads + address_spaces * per_address_space)


@dataclass(frozen=True)
class GvisorBundle:
    """Paths of one box's gVisor launch: its bundle, runsc state and FIFO directory."""

    run_dir: Path  # root-only: config.json and runsc's --root
    control_dir: Path  # on the box's tmpfs: the two FIFOs

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "runsc"

    @property
    def status_fifo(self) -> Path:
        return self.control_dir / STATUS_FIFO

    @property
    def command_fifo(self) -> Path:
        return self.control_dir / COMMAND_FIFO

    @property
    def signal_fifo(self) -> Path:
        return self.control_dir / SIGNAL_FIFO

    @property
    def seccomp_file(self) -> Path:
        return self.control_dir / SECCOMP_FILE


class Gvisor:
    """Host-wide gVisor context: the shared rootfs and /etc, the runsc flags, the probe."""

    def __init__(self, settings: Settings, *, etc_dir: Path) -> None:
        self.settings = settings
        self.base_dir = settings.state_dir / "gvisor"
        self.rootfs = self.base_dir / "rootfs"
        self.etc_dir = self.base_dir / "etc"
        self._source_etc = etc_dir
        self._problem: str | None = None
        self._prepared = False
        self._probed = False

    # ------------------------------------------------------------ availability

    def check(self, *, probe: bool = True) -> None:
        """Raise IsolationUnavailable with runsc's own words unless boxes can start here.

        The cheap part (runsc present, the shared host files ready) runs once and
        is enough to open a box: a launch that fails then shows runsc's error in its
        Result. ``probe`` also starts one throw-away sandbox (once; ~0.3 s), so a
        server can refuse the level up front with the exact reason.
        """
        if self._problem is None and not self._prepared:
            self._problem = self._prepare()
            self._prepared = True
        if self._problem is None and probe and not self._probed:
            self._problem = self._probe()
            self._probed = True
        if self._problem is not None:
            raise IsolationUnavailable("gvisor", self._problem)

    def _prepare(self) -> str | None:
        runsc = self.settings.runsc_path
        if not os.access(runsc, os.X_OK):
            return f"runsc not found at {runsc}; install the runsc package (gVisor)"
        try:
            self.prepare_host()
        except OSError as exc:
            return f"cannot prepare gVisor's root filesystem: {exc}"
        return None

    def _probe(self) -> str | None:
        # Per process: another sandlot process on the host may be probing at the same time.
        probe_dir = self.settings.run_dir / f"gvisor-probe-{os.getpid()}"
        shutil.rmtree(probe_dir, ignore_errors=True)
        bundle = probe_dir / "bundle"
        bundle.mkdir(parents=True)
        try:
            config = self.config(
                args=["/bin/true"],
                env={"PATH": policy.BASE_PATH},
                uid=65534,
                gid=65534,
                workdir=None,
                tmp_size_bytes=1024 * 1024,
                binds=(),
                helper=None,
                control_dir=None,
            )
            (bundle / "config.json").write_text(json.dumps(config))
            argv = self.runsc_argv(probe_dir / "runsc", bundle, f"probe-{os.getpid()}")
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                return f"runsc did not start a sandbox within {_PROBE_TIMEOUT_S:g} s (platform {self.platform})"
            except OSError as exc:
                return f"cannot run runsc: {exc}"
            if proc.returncode != 0:
                detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                return f"runsc failed (exit {proc.returncode}): {detail[-1] if detail else 'no message'}"
            return None
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)

    @property
    def platform(self) -> str:
        return self.settings.gvisor_platform

    # ------------------------------------------------------------ host files

    def prepare_host(self) -> None:
        """The empty read-only root (with the host's top-level symlinks) and the /etc copy, shared by all boxes.

        Other sandlot processes on the host may be starting sandboxes from these
        very directories: nothing that exists is ever changed in place. The root
        gets only missing links, and /etc is a new directory named by its
        content, switched to by ``etc_dir``.
        """
        self.rootfs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)
        os.chmod(self.rootfs, 0o755)
        for top in policy.TOP_LEVEL:
            link = self.rootfs / top.lstrip("/")
            if os.path.islink(top) and not link.is_symlink():
                with contextlib.suppress(FileExistsError):
                    link.symlink_to(os.readlink(top))
        fresh = self.base_dir / f".etc.{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        for name in policy.SYNTHETIC_ETC:
            shutil.copy2(self._source_etc / name, fresh / name)
        for path in policy.ETC_FILES:
            source = Path(path)
            target = fresh / source.name
            if source.is_symlink() and not source.is_dir():
                target.symlink_to(os.readlink(source))
            elif source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            elif source.exists():
                shutil.copy2(source, target)
        os.chmod(fresh, 0o755)
        digest = hashlib.sha256()
        for entry in sorted(fresh.rglob("*")):
            digest.update(str(entry.relative_to(fresh)).encode())
            if entry.is_symlink():
                digest.update(os.readlink(entry).encode())
            elif entry.is_file():
                digest.update(entry.read_bytes())
        target = self.base_dir / f"etc-{digest.hexdigest()[:16]}"
        if target.exists():
            shutil.rmtree(fresh, ignore_errors=True)
        else:
            try:
                os.rename(fresh, target)
            except OSError:  # another process made the same one first
                shutil.rmtree(fresh, ignore_errors=True)
        self.etc_dir = target

    def bundle_for(self, run_dir: Path, box_root: Path) -> GvisorBundle:
        return GvisorBundle(run_dir=run_dir, control_dir=box_root / ".gvisor")

    def make_channels(self, bundle: GvisorBundle, *, with_command: bool, seccomp_program: bytes) -> None:
        """Fresh FIFOs and the seccomp program for one launch, root's alone (the init opens them as root)."""
        bundle.control_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(bundle.control_dir, INIT_UID, INIT_UID)
        os.chmod(bundle.control_dir, 0o700)
        for fifo in (bundle.status_fifo, bundle.command_fifo, bundle.signal_fifo):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            if fifo != bundle.command_fifo or with_command:
                os.mkfifo(fifo, 0o600)
        with contextlib.suppress(FileNotFoundError):
            bundle.seccomp_file.unlink()
        fd = os.open(bundle.seccomp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, seccomp_program)  # a few KiB: one write to a fresh tmpfs file
        finally:
            os.close(fd)

    # ------------------------------------------------------------ argv and config

    def runsc_argv(self, state_dir: Path, bundle_dir: Path, container_id: str) -> list[str]:
        return [
            str(self.settings.runsc_path),
            "--root",
            str(state_dir),
            "--platform",
            self.platform,
            "--network",
            "none",
            "--ignore-cgroups",
            "--host-fifo",
            "open",
            "run",
            "--bundle",
            str(bundle_dir),
            container_id,
        ]

    def config(
        self,
        *,
        args: Sequence[str],
        env: Mapping[str, str],
        uid: int,
        gid: int,
        workdir: Path | None,
        tmp_size_bytes: int,
        binds: Sequence[policy.Bind],
        helper: Path | None,
        control_dir: Path | None,
        capabilities: Sequence[str] = (),
        environment_root: Path | None = None,
    ) -> dict[str, Any]:
        """The OCI runtime spec of one sandbox: the jail's policy in OCI terms.

        ``environment_root``: an environment's root as the bundle's (read-only) root instead of the
        shared empty one with the host's system dirs bound in; sandlot's synthetic /etc files lie
        over the image's one by one. runsc makes missing mount points inside the root, on disk: give
        it a per-box copy-on-write view of the stored root (``Box._gvisor_root``), never the store's.
        """
        tmp_options = ["nosuid", "nodev", "mode=1777", f"size={tmp_size_bytes}"]
        mounts: list[dict[str, Any]] = [{"destination": "/proc", "type": "proc", "source": "proc"}]
        if environment_root is None:
            mounts += [
                _bind("/usr", "/usr", writable=False),
                {"destination": "/usr/local", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "size=4096"]},
                _bind(str(self.etc_dir), "/etc", writable=False),
            ]
            for top in policy.TOP_LEVEL:
                if os.path.isdir(top) and not os.path.islink(top):
                    mounts.append(_bind(top, top, writable=False))
        else:
            for name in policy.SYNTHETIC_ETC:
                mounts.append(_bind(str(self.etc_dir / name), f"/etc/{name}", writable=False))
        mounts += [
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmp_options},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": tmp_options},
        ]
        if workdir is not None:
            mounts.append(_bind(str(workdir), policy.BOX_WORKDIR, writable=True))
        for bind in binds:
            if bind.optional and not bind.source.exists():
                continue
            mounts.append(_bind(str(bind.source), bind.dest, writable=bind.writable))
        if helper is not None:
            mounts.append(_bind(str(helper), policy.INIT_PATH, writable=False))
        if control_dir is not None:
            mounts.append(_bind(str(control_dir), CONTROL_DIR, writable=True))
        caps = list(capabilities)
        cap_sets = {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []}
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": uid, "gid": gid, "additionalGids": []},
                "args": list(args),
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": policy.BOX_WORKDIR if workdir is not None else "/",
                "capabilities": cap_sets,
                "noNewPrivileges": True,
            },
            "root": {"path": str(environment_root or self.rootfs), "readonly": True},
            "hostname": policy.BOX_HOSTNAME,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"],
            },
        }

    def init_args(
        self,
        *,
        with_command: bool,
        command: Sequence[str] | None,
        rlimits: Mapping[str, int],
        uid: int,
        gid: int,
    ) -> list[str]:
        """The init's argv: the channels, the program's uid, its seccomp program, output relayed."""
        args = [policy.INIT_PATH, "init", "--status-path", f"{CONTROL_DIR}/{STATUS_FIFO}"]
        if with_command:
            args += ["--command-path", f"{CONTROL_DIR}/{COMMAND_FIFO}"]
        args += ["--signal-path", f"{CONTROL_DIR}/{SIGNAL_FIFO}", "--seccomp-path", f"{CONTROL_DIR}/{SECCOMP_FILE}"]
        args += ["--uid", str(uid), "--gid", str(gid), "--relay-output"]
        for resource, amount in rlimits.items():
            args += ["--rlimit", f"{resource}={amount}"]
        if command is not None:
            args += ["--", *command]
        return args


def fix_environment_mount_points(root: Path) -> None:
    """Make an environment's root (a copy-on-write view of it: see ``Box``) take runsc's mounts.

    runsc resolves a mount's destination inside the root and makes it there: an image's
    ``etc -> /etc`` resolved to itself and the sandbox did not start. A link (or a non-directory)
    where a mount goes is replaced by an empty directory, a link where a file is bound by nothing
    (runsc makes the file). Only links are removed: never followed, never on the host.
    """
    for name in ("etc", "tmp", "proc", "dev", policy.BOX_WORKDIR.lstrip("/"), CONTROL_DIR.lstrip("/")):
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
            path.mkdir(mode=0o755)
    for path in [root / policy.INIT_PATH.lstrip("/"), *(root / "etc" / name for name in policy.SYNTHETIC_ETC)]:
        if path.is_symlink():
            path.unlink()


def _bind(source: str, dest: str, *, writable: bool) -> dict[str, Any]:
    return {
        "destination": dest,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rw" if writable else "ro", "nosuid", "nodev"],
    }
