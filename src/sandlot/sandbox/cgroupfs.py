"""What both cgroup versions share: the limits and stats types, the interface, and the file helpers.

Every read and write of a cgroup file goes through ``read`` and ``write`` here, so
an error names the file, and a test can watch or fake what the drivers do by
replacing them in this one module. The drivers are ``cgroup_v1`` and ``cgroup_v2``;
``cgroups`` picks one for the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandlot.errors import SandboxError

CPU_PERIOD_US = 100_000
CPU_WEIGHT_DEFAULT = 100  # cgroup v2's cpu.weight scale (1..10000); v1's cpu.shares is it x 1024 / 100
CPU_WEIGHT_WARMING = 1  # a box starting ahead of time yields the CPU to boxes running programs
FREEZE_TIMEOUT_S = 1.0
_GROUP_RACE_TRIES = 3  # see mkdir_in_group


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    max_pids: int
    cpu_cores: float
    cpu_weight: int = CPU_WEIGHT_DEFAULT  # its share of a contended CPU against its sibling boxes


@dataclass(frozen=True)
class CgroupStats:
    cpu_time_s: float
    memory_peak_bytes: int
    oom_kills: int


class Cgroup(Protocol):
    """One box's cgroup for one run."""

    @property
    def procs_files(self) -> tuple[Path, ...]: ...

    def cpu_time_s(self) -> float: ...

    def stats(self) -> CgroupStats: ...

    def pids(self) -> list[int]: ...

    def kill(self) -> None:
        """SIGKILL every process in it. May wait (v1's freezer): never on an event loop (reaper.py)."""
        ...

    def remove(self) -> bool:
        """rmdir it, once: True if it is gone, False while tasks are still leaving it (EBUSY)."""
        ...

    def set_limits(self, limits: CgroupLimits) -> None: ...

    def reset_peak(self) -> None: ...


class CgroupDriver(Protocol):
    version: int

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        """A fresh cgroup; one an earlier run left must be ended first (reaper.clear_stale)."""
        ...

    def open_existing(self, name: str) -> Cgroup | None: ...

    def existing_names(self) -> list[str]: ...

    def remove_group(self) -> None: ...


# ------------------------------------------------------------------ helpers


def write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot write {value!r} to {path}: {exc.strerror}") from exc


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot read {path}: {exc.strerror}") from exc


def keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot read {path}: {exc.strerror}") from exc


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def mkdir_in_group(path: Path, ensure_group: Callable[[], None]) -> None:
    """mkdir a box's cgroup, making the parent group again if another process removed it meanwhile.

    Every sandlot process sharing the group removes it when it finds it empty
    (``remove_group``), which can fall between our ``ensure_group`` and this mkdir;
    once our directory exists the parent is no longer empty and stays.
    """
    for attempt in range(_GROUP_RACE_TRIES):
        try:
            path.mkdir()
            return
        except FileNotFoundError:
            if attempt == _GROUP_RACE_TRIES - 1:
                raise
            ensure_group()


def rmdir(path: Path) -> bool:
    """Remove one cgroup directory: True if it is gone, False if tasks are still leaving it."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise SandboxError(f"cgroup: cannot remove {path}: {exc.strerror}") from exc
    return True
