"""Box slots: a numbered identity (host uid, cgroup name, host directory) held by one process at a time.

A slot is held through an flock on ``<run_dir>/slots/<n>.lock``, so two sandlot
processes on one host (a CLI run beside a server) never share a uid or a cgroup,
and a slot whose holder died is free again: whoever takes it next cleans up what
the dead holder left (cgroup, mounts) before using it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from sandlot.errors import SandboxError


@dataclass(frozen=True)
class Slot:
    index: int
    uid: int
    gid: int
    lock_fd: int

    @property
    def cgroup_name(self) -> str:
        return f"box-{self.index}"

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)  # closing drops the flock


def _lock_dir(run_dir: Path) -> Path:
    path = run_dir / "slots"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def try_acquire(run_dir: Path, index: int, uid_base: int) -> Slot | None:
    lock_path = _lock_dir(run_dir) / f"{index}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Slot(index=index, uid=uid_base + index, gid=uid_base + index, lock_fd=fd)


def acquire_any(run_dir: Path, uid_base: int, max_boxes: int, start: int = 0) -> Slot:
    """Take the first free slot at or after ``start``."""
    for index in range(start, max_boxes):
        slot = try_acquire(run_dir, index, uid_base)
        if slot is not None:
            return slot
    raise SandboxError(f"all {max_boxes} box slots are in use on this host")
