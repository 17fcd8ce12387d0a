"""The jail policy: what the box sees, written as bubblewrap arguments.

Read-only system directories, a synthetic /etc, the box's own workdir at /box,
size-capped tmpfs /tmp and /dev/shm, a private /proc (with the host's kernel
details masked, as container runtimes do), no /sys, and fresh user,
mount, pid, net, ipc, uts and cgroup namespaces. In an environment (an imported or
built root, ``rootfs``) the root's own top-level entries and /etc entries are
bound read-only instead of the host's system directories and /etc files, with
the synthetic /etc files over the image's (``_rootfs_args``). Nothing of sandlot itself
(its code, config or state directory) is mounted; the only sandlot file in the
box is the static init helper at ``INIT_PATH``, bound like the synthetic /etc
from a copy in the box's own tmpfs (``write_jail_files``) so that the box's
mountinfo names no host path of sandlot's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BOX_WORKDIR = "/box"
INIT_PATH = "/.init"
BOX_UID = 1000  # the uid the program sees; the host uid is unique per box
BOX_HOSTNAME = "sandlot"
SECCOMP_FD = 3
STATUS_FD = 4
COMMAND_FD = 5  # only for jails launched ahead of time
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Every rlimit the kernel has, set for the box whatever the service's own limits are (the
# launcher sets them as root, gVisor from its OCI spec); the run's own (cpu, fsize, nofile,
# stack, core) are set on top of these by the init. -1 is unlimited.
RLIM_UNLIMITED = -1
BOX_RLIMITS: dict[str, int] = {
    "cpu": RLIM_UNLIMITED,  # the run's CPU backstop replaces it
    "fsize": RLIM_UNLIMITED,  # the run's file size limit replaces it
    "core": 0,
    "as": RLIM_UNLIMITED,  # memory is the cgroup's; an address-space cap breaks Go and Java's reservations
    "data": RLIM_UNLIMITED,  # idem
    "rss": RLIM_UNLIMITED,  # ignored by Linux
    "memlock": 8 * 1024 * 1024,  # Linux's default; locked pages are charged to the box's cgroup anyway
    "msgqueue": 819_200,  # Linux's default; POSIX queues live in the box's own ipc namespace
    "nproc": RLIM_UNLIMITED,  # the cgroup's pids limit counts processes and threads
    "sigpending": 4096,  # queued signals are kernel memory
    "locks": 1024,
    "nice": 0,  # no raising priority above the default
    "rtprio": 0,  # no real-time scheduling: SCHED_FIFO/RR would run ahead of every other box
    "rttime": 0,  # and should a task be real-time anyway, it is killed at once
}

# Host files from /etc the toolchains need; everything else of /etc stays out.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
)
# /proc entries that describe the host rather than the box (boot command line, kernel
# symbols, keys, timers, hardware): an empty read-only file (files) or tmpfs (dirs) over them.
MASKED_PROC_FILES = (
    "cmdline",  # the host's boot line, with the hypervisor agent's flags
    "kcore",
    "kallsyms",
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "config.gz",
    "sysrq-trigger",
    "kmsg",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "iomem",
    "ioports",
    "vmallocinfo",
    "slabinfo",
    "modules",
)
MASKED_PROC_DIRS = ("acpi", "scsi", "asound", "driver")
SYNTHETIC_ETC = ("passwd", "group", "hosts", "nsswitch.conf")  # written by sandlot, not the host's
JAIL_INIT = "init"  # the helper's copy among a box's jail files (see write_jail_files)
JAIL_EMPTY = "empty"  # an empty file, bound over masked /proc entries
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

PASSWD = f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{BOX_UID}:{BOX_UID}:sandbox:{BOX_WORKDIR}:/bin/bash\n"
PASSWD += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = f"root:x:0:\nsandbox:x:{BOX_UID}:\nnogroup:x:65534:\n"
HOSTS = f"127.0.0.1 localhost {BOX_HOSTNAME}\n::1 localhost ip6-localhost ip6-loopback\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"


def oci_rlimits(rlimits: Mapping[str, int]) -> list[dict[str, object]]:
    """The same rlimits as an OCI runtime spec's ``process.rlimits`` (gVisor)."""
    unlimited = 2**64 - 1
    return [
        {
            "type": f"RLIMIT_{name.upper()}",
            "hard": unlimited if v == RLIM_UNLIMITED else v,
            "soft": unlimited if v == RLIM_UNLIMITED else v,
        }
        for name, v in rlimits.items()
    ]


@dataclass(frozen=True)
class Bind:
    source: Path
    dest: str
    writable: bool = False
    optional: bool = False


def write_synthetic_etc(etc_dir: Path) -> None:
    """The /etc files the box gets instead of the host's (no shadow, no real users)."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    for name, content in zip(SYNTHETIC_ETC, (PASSWD, GROUP, HOSTS, NSSWITCH), strict=True):
        path = etc_dir / name
        if not path.exists() or path.read_text() != content:
            tmp = etc_dir / f".{name}.tmp"
            tmp.write_text(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)


def write_jail_files(target: Path, *, etc_dir: Path, helper: Path) -> None:
    """Copy what a jail binds from sandlot (synthetic /etc, the init, an empty file) into target.

    target is inside the box's own fresh tmpfs, which no program has touched yet.
    """
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    for name in SYNTHETIC_ETC:
        shutil.copyfile(etc_dir / name, target / name)
        os.chmod(target / name, 0o644)
    shutil.copyfile(helper, target / JAIL_INIT)
    os.chmod(target / JAIL_INIT, 0o755)
    (target / JAIL_EMPTY).touch(mode=0o444)


def _proc_mask_args(empty: Path) -> list[str]:
    """Mask what exists: a box's /proc shows the entries of the host's kernel, so the host's /proc says which."""
    args: list[str] = []
    for name in MASKED_PROC_FILES:
        if os.path.isfile(f"/proc/{name}"):
            args += ["--ro-bind", str(empty), f"/proc/{name}"]
    for name in MASKED_PROC_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            args += ["--perms", "0555", "--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
    return args


def _top_level_args() -> list[str]:
    args: list[str] = []
    for path in TOP_LEVEL:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


# Top-level names of an environment's root the jail provides itself (fresh /proc, /dev, /tmp, /box,
# the init, a synthetic /etc), or never shows (/sys): the image's are not bound.
_JAIL_OWNED = frozenset({"proc", "dev", "sys", "tmp", "etc", BOX_WORKDIR.lstrip("/"), INIT_PATH.lstrip("/")})


def _entry_args(entry: os.DirEntry[str], dest: str) -> list[str]:
    """One entry of an environment's root shown at dest: links re-made, dirs and files bound read-only.

    Checked without following links: an image may plant ``etc -> /etc``, and the host side must
    never resolve it. Devices, FIFOs and sockets are not shown (import drops them anyway).
    """
    if entry.is_symlink():
        return ["--symlink", os.readlink(entry.path), dest]
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
        return ["--ro-bind", entry.path, dest]
    return []


def _rootfs_args(rootfs: Path) -> list[str]:
    """The environment's root instead of the host's system dirs; /etc is a directory of its entries
    (so the synthetic passwd/group/hosts/nsswitch can lie over the image's without writing to it)."""
    args: list[str] = []
    with os.scandir(rootfs) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name not in _JAIL_OWNED:
                args += _entry_args(entry, f"/{entry.name}")
    args += ["--perms", "0755", "--dir", "/etc"]
    etc = rootfs / "etc"
    if etc.is_dir() and not etc.is_symlink():
        with os.scandir(etc) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name not in SYNTHETIC_ETC:
                    args += _entry_args(entry, f"/etc/{entry.name}")
    return args


def _host_root_args() -> list[str]:
    """The host's /usr (without /usr/local), top-level system dirs and the few /etc files toolchains need."""
    args = ["--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local", "--remount-ro", "/usr/local", *_top_level_args()]
    args += ["--perms", "0755", "--dir", "/etc"]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_argv(
    *,
    bwrap: Path,
    helper: Path,
    workdir: Path,
    jail_files: Path,
    tmp_size_bytes: int,
    binds: Sequence[Bind],
    env: Mapping[str, str],
    rlimits: Mapping[str, int],
    command: Sequence[str] | None,
    rootfs: Path | None = None,
) -> list[str]:
    """The full argv after the launcher: bwrap, its options, then init and the command.

    ``rootfs``: an environment's root to run in instead of the host's system directories.

    Without a command the init reads it later from COMMAND_FD (a jail launched ahead of time).
    jail_files holds the synthetic /etc files and the empty file (``write_jail_files``).
    """
    argv = [
        str(bwrap),
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
        "--uid",
        str(BOX_UID),
        "--gid",
        str(BOX_UID),
        "--hostname",
        BOX_HOSTNAME,
    ]
    argv += _host_root_args() if rootfs is None else _rootfs_args(rootfs)
    for etc_name in SYNTHETIC_ETC:
        argv += ["--ro-bind", str(jail_files / etc_name), f"/etc/{etc_name}"]
    argv += [
        "--proc",
        "/proc",
        *_proc_mask_args(jail_files / JAIL_EMPTY),
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(tmp_size_bytes),
        "--tmpfs",
        "/tmp",
        "--perms",
        "1777",
        "--size",
        str(tmp_size_bytes),
        "--tmpfs",
        "/dev/shm",
        "--bind",
        str(workdir),
        BOX_WORKDIR,
    ]
    for bind in binds:
        if bind.writable:
            flag = "--bind-try" if bind.optional else "--bind"
        else:
            flag = "--ro-bind-try" if bind.optional else "--ro-bind"
        argv += [flag, str(bind.source), bind.dest]
    argv += ["--ro-bind", str(helper), INIT_PATH]
    # bwrap's own root and /dev are tmpfs; freeze them so only /box, /tmp and /dev/shm take writes.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX_WORKDIR, "--clearenv"]
    for key, env_value in env.items():
        argv += ["--setenv", key, env_value]
    argv += ["--seccomp", str(SECCOMP_FD), "--", INIT_PATH, "init", "--status-fd", str(STATUS_FD)]
    if command is None:
        argv += ["--command-fd", str(COMMAND_FD)]
    for resource, amount in rlimits.items():
        argv += ["--rlimit", f"{resource}={amount}"]
    if command is not None:
        argv += ["--", *command]
    return argv
