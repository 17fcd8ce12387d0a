"""Session workdirs: one small tmpfs per file session, with its own size and file-count quota, detached.

Theory of operation
-------------------
A file session owns a directory, not a box. Each is a tmpfs of its own
(``size=`` and ``nr_inodes=`` are the quota, so a program that fills it gets
ENOSPC, and so does an upload), made with the new mount API (fsopen, fsconfig,
fsmount) and kept *detached*: it is in no mount table, only held by its fd.
So a thousand sessions add nothing to the mount tree every jail's new mount
namespace copies (1,000 attached mounts made each bubblewrap start ~18 ms
slower here), a dead process's workdirs vanish with its fds (nothing to sweep),
and no path names them. An idle one costs a superblock and a root inode of
kernel memory, no disk, plus the bytes it stores (docs/sessions.md).

A run of the session leases any box and attaches a clone of the workdir's mount
over the box's own workdir (``attach``: open_tree(OPEN_TREE_CLONE) then
move_mount, ~40 us); unmounting that clone after the run leaves the session's
tmpfs as it was. Host-side file operations work from the fd (``hostfs`` takes a
directory fd as its root), never from a path.

Files in a workdir belong to the host uid of the box that ran last; a run in
another box takes them over first (``chown_tree``). The walk never follows a
link (lchown on the link itself) and cannot leave the workdir: it is its own
filesystem, so a hardlink to anything outside cannot exist in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path

from sandlot.errors import SandboxError

__all__ = ["Usage", "Workdir", "Workdirs", "attach", "chown_tree"]

# x86-64 and arm64 share these numbers (the new syscalls are numbered alike on every architecture).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 428, 429, 430, 431, 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x2, 0x4
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC, _AT_EMPTY_PATH = 1, os.O_CLOEXEC, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH, _AT_FDCWD = 0x4, -100
_CLONE_FLAGS = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_EMPTY_PATH

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(what: str, number: int, *args: object) -> int:
    result = int(_libc.syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")
    return result


@dataclass(frozen=True)
class Usage:
    bytes_used: int
    files_used: int  # inodes: files, directories and links (the root counts as one)
    size_bytes: int  # what the file system holds at most (a tmpfs: its size=)
    inodes: int  # and its inode count (nr_inodes=)


def usage_of(fd: int) -> Usage:
    """The usage of the file system ``fd`` is on (one fstatvfs)."""
    st = os.statvfs(fd)
    return Usage(
        bytes_used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        files_used=st.f_files - st.f_ffree,
        size_bytes=st.f_blocks * st.f_frsize,
        inodes=st.f_files,
    )


@dataclass(eq=False)
class Workdir:
    """A session's tmpfs, held by ``fd`` (the detached mount) until ``Workdirs.remove``."""

    fd: int
    closed: bool = field(default=False)

    def dup(self) -> int:
        """An fd of the workdir of the caller's own, to use off the event loop and close there.

        Never hand ``fd`` itself to a thread: ``remove`` may close it meanwhile, and
        the number could then name another session's workdir.
        """
        if self.closed:
            raise SandboxError("the session's workdir is gone")
        return os.dup(self.fd)

    def usage(self) -> Usage:
        return usage_of(self.fd)


class Workdirs:
    """Makes and frees session workdirs of one quota; created at start-up and passed in."""

    def __init__(self, *, size_bytes: int, inodes: int) -> None:
        self.size_bytes = size_bytes
        self.inodes = inodes

    def check(self) -> None:
        """Fail at start-up, saying why, on a kernel that cannot clone a detached mount (what ``attach`` does)."""
        workdir = self.create()
        try:
            clone = _syscall("open_tree", _SYS_OPEN_TREE, workdir.fd, b"", _CLONE_FLAGS)
        except SandboxError as exc:
            raise SandboxError(
                f"file sessions need a kernel that can clone a detached mount (6.18 works): {exc}"
            ) from exc
        else:
            os.close(clone)
        finally:
            self.remove(workdir)

    def create(self) -> Workdir:
        """A new, empty workdir (owned by root until a run takes it over)."""
        fs = _syscall("fsopen tmpfs", _SYS_FSOPEN, b"tmpfs", _FSOPEN_CLOEXEC)
        try:
            for key, value in (("size", self.size_bytes), ("nr_inodes", self.inodes), ("mode", "700")):
                _syscall(f"tmpfs {key}", _SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), str(value).encode(), 0)
            _syscall("tmpfs create", _SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0)
            fd = _syscall("fsmount", _SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
        finally:
            os.close(fs)
        return Workdir(fd)

    @staticmethod
    def remove(workdir: Workdir) -> None:
        """Free the workdir: its last reference (this fd) goes, and the tmpfs with it."""
        if not workdir.closed:
            workdir.closed = True
            os.close(workdir.fd)


def attach(workdir: Workdir, target: Path) -> None:
    """Mount a clone of the workdir over ``target`` (the session's tmpfs itself stays detached)."""
    clone = _syscall(
        "open_tree", _SYS_OPEN_TREE, workdir.fd, b"", _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_EMPTY_PATH
    )
    try:
        _syscall(
            f"move_mount to {target}",
            _SYS_MOVE_MOUNT,
            clone,
            b"",
            _AT_FDCWD,
            os.fsencode(target),
            _MOVE_MOUNT_F_EMPTY_PATH,
        )
    finally:
        os.close(clone)


def chown_tree(workdir: Workdir, uid: int, gid: int) -> None:
    """Give every inode of the workdir to uid:gid, never following a link."""
    os.chown(".", uid, gid, dir_fd=workdir.fd, follow_symlinks=False)  # the root itself
    for _dir, dirs, files, dir_fd in os.fwalk(".", follow_symlinks=False, dir_fd=workdir.fd):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
