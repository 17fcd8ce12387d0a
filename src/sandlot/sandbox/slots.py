"""Box slots: a numbered identity (host uid, cgroup name, host directory) held by one process at a time.

A slot is held through an flock on ``<run_dir>/slots/<n>.lock``, so two sandlot
processes on one host (a CLI run beside a server) never share a uid or a cgroup,
and a slot whose holder died is free again: whoever takes it next cleans up what
the dead holder left (cgroup, mounts) before using it.

The slot's host uid is locked as well, host-wide, through an flock on
``/run/sandlot-uids/<uid>.lock`` (not under run_dir): two sandlot instances with
different run dirs but the same ``box_uid_base`` would otherwise hand one uid to
two live boxes, and one's leftover cleanup (which kills every process of the
slot's uid) would kill the other's program. A slot is held only with both locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from sandlot.errors import SandboxError, UidInUse

UID_LOCK_DIR = Path("/run/sandlot-uids")  # host-wide, whatever an instance's run_dir


@dataclass(frozen=True)
class Slot:
    index: int
    uid: int
    gid: int
    lock_fd: int
    uid_lock_fd: int = -1

    @property
    def cgroup_name(self) -> str:
        return f"box-{self.index}"

    def release(self) -> None:
        for fd in (self.uid_lock_fd, self.lock_fd):  # closing drops the flock
            with contextlib.suppress(OSError):
                os.close(fd)


def _lock_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on path, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SandboxError(f"cannot open the lock {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def try_acquire(run_dir: Path, index: int, uid_base: int, *, uid_lock_dir: Path = UID_LOCK_DIR) -> Slot | None:
    """Take slot ``index``: None if this run_dir's slot is held; UidInUse if only its uid is."""
    fd = _try_lock(_lock_dir(run_dir / "slots") / f"{index}.lock")
    if fd is None:
        return None
    uid = uid_base + index
    try:
        uid_fd = _try_lock(_lock_dir(uid_lock_dir) / f"{uid}.lock")
    except BaseException:
        os.close(fd)
        raise
    if uid_fd is None:
        os.close(fd)
        raise UidInUse(
            f"host uid {uid} (box slot {index}) is held by another sandlot instance on this host: "
            "give each instance its own box_uid_base"
        )
    return Slot(index=index, uid=uid, gid=uid, lock_fd=fd, uid_lock_fd=uid_fd)


def acquire_any(run_dir: Path, uid_base: int, max_boxes: int, start: int = 0) -> Slot:
    """Take the first free slot at or after ``start``."""
    collision: UidInUse | None = None
    for index in range(start, max_boxes):
        try:
            slot = try_acquire(run_dir, index, uid_base)
        except UidInUse as exc:
            collision = exc  # another instance's box: never ours to use or clean
            continue
        if slot is not None:
            return slot
    if collision is not None:
        raise SandboxError(f"no free box slot: {collision}") from collision
    raise SandboxError(f"all {max_boxes} box slots are in use on this host")
