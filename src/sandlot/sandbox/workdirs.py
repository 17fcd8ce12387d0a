"""Session workdirs: one small tmpfs per file session, with its own size and file-count quota.

Theory of operation
-------------------
A file session owns a directory, not a box. Each is a tmpfs of its own
(``size=`` and ``nr_inodes=`` are the quota, so a program that fills it gets
ENOSPC, and so does an upload); an idle one costs a superblock and a root inode
of kernel memory, no disk, and the bytes it stores (see docs/sessions.md for
the numbers). A run of the session leases any box and binds the workdir over
the box's own (``Box.attach_workdir``).

One ``Workdirs`` is opened per pool: it takes an area of its own under
``<state_dir>/sessions/<token>`` and holds an flock on ``<run_dir>/sessions/
<token>.lock`` while it lives, so areas of a dead process (its lock is free) are
swept at the next start (``sweep_stale``) without ever touching a live process's.

Files in a workdir belong to the host uid of the box that ran last; a run in
another box takes them over first (``chown_tree``). The walk never follows a
link (lchown on the link itself) and cannot leave the workdir: it is its own
filesystem, so a hardlink to anything outside cannot exist in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sandlot.errors import SandboxError
from sandlot.sandbox import hostfs

__all__ = ["Usage", "Workdirs", "chown_tree"]


@dataclass(frozen=True)
class Usage:
    bytes_used: int
    files_used: int  # inodes: files, directories and links (the root counts as one)


class Workdirs:
    """The session workdirs of one pool; created at start-up and passed in."""

    def __init__(self, state_dir: Path, run_dir: Path, *, size_bytes: int, inodes: int) -> None:
        self.size_bytes = size_bytes
        self.inodes = inodes
        self._base = state_dir / "sessions"
        self._locks = run_dir / "sessions"
        self._token = secrets.token_hex(8)
        self.area = self._base / self._token
        self._lock_fd = -1
        self._numbers = itertools.count()

    def open(self) -> None:
        """Sweep what dead processes left, then take this pool's own area."""
        for path in (self._base, self._locks):
            path.mkdir(parents=True, exist_ok=True, mode=0o711)
            os.chmod(path, 0o711)
        self.sweep_stale()
        lock = self._locks / f"{self._token}.lock"
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.area.mkdir(mode=0o711)

    def close(self) -> None:
        """Remove every workdir of this area, then the area and its lock."""
        if self._lock_fd < 0:
            return
        _remove_area(self.area)
        with contextlib.suppress(OSError):
            os.unlink(self._locks / f"{self._token}.lock")
        os.close(self._lock_fd)
        self._lock_fd = -1

    def sweep_stale(self) -> int:
        """Remove the areas no live process holds (their lock is free). Returns how many."""
        swept = 0
        for area in sorted(self._base.iterdir()) if self._base.exists() else []:
            lock = self._locks / f"{area.name}.lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process's
                _remove_area(area)
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                swept += 1
            finally:
                os.close(fd)
        return swept

    def create(self) -> Path:
        """A new, empty workdir (its own tmpfs, owned by root until a run takes it over)."""
        path = self.area / str(next(self._numbers))
        path.mkdir(mode=0o711)
        try:
            hostfs.mount_tmpfs(path, size_bytes=self.size_bytes, inodes=self.inodes, uid=0, gid=0, mode=0o700)
        except SandboxError:
            path.rmdir()
            raise
        return path

    def remove(self, path: Path) -> None:
        """Free the workdir's memory: unmount its tmpfs and remove the mount point."""
        hostfs.unmount(path)
        with contextlib.suppress(OSError):
            path.rmdir()

    @staticmethod
    def usage(path: Path) -> Usage:
        st = os.statvfs(path)
        return Usage(bytes_used=(st.f_blocks - st.f_bfree) * st.f_frsize, files_used=st.f_files - st.f_ffree)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give every inode of the workdir ``root`` to uid:gid, never following a link."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for _dir, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _remove_area(area: Path) -> None:
    for mount in hostfs.mounts_below(area):
        hostfs.unmount(mount)
    shutil.rmtree(area, ignore_errors=True)  # only empty mount points are left
