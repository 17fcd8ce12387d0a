"""cgroups v1 and v2 behind one interface.

A box gets a fresh cgroup per run, named ``<group>/box-<slot>``, so accounting
starts at zero and nothing of a previous run lingers. The helper process writes
its own pid into every ``procs_files`` entry before it execs bubblewrap, so
every process of the run is accounted from its first instruction.

v1 ("legacy" or "hybrid" hosts) uses the memory, pids, cpu, cpuacct and freezer
hierarchies wherever they are mounted (co-mounted or not). v2 uses one unified
directory with the memory, pids and cpu controllers enabled for our subtree.

Socket buffers: v2 charges them to the cgroup's memory (memory.current) on its
own. v1 charges them to a host-wide pool unless the cgroup's TCP accounting is
on, which writing ``memory.kmem.tcp.limit_in_bytes`` turns on (for sockets
created afterwards: so it is written before any process joins). Despite its
name this counter takes every socket's buffers (UDP too): they then have a
budget of the memory limit of their own, and the peak reported is user memory
plus socket buffers.

This module is the mechanism only (create, limit, read, signal, rmdir); when and
in what order a box's processes are killed and its cgroup removed, and every
wait that takes, belongs to ``reaper.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandlot.errors import ConfigError, SandboxError
from sandlot.sandbox.hostfs import unescape_mountinfo

CPU_PERIOD_US = 100_000
CPU_WEIGHT_DEFAULT = 100  # cgroup v2's cpu.weight scale (1..10000); v1's cpu.shares is it x 1024 / 100
CPU_WEIGHT_WARMING = 1  # a box starting ahead of time yields the CPU to boxes running programs
FREEZE_TIMEOUT_S = 1.0
_GROUP_RACE_TRIES = 3  # see _mkdir_in_group
_FREEZE_TICK_S = 0.0005  # freezer.state has no notification: polled, in a worker thread only
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_V1_REQUIRED = ("memory", "pids", "cpuacct")
_V2_CONTROLLERS = ("memory", "pids", "cpu")
_V1_TCP_LIMIT = "memory.kmem.tcp.limit_in_bytes"  # v1's TCP buffer accounting (v2 charges sockets to memory)
_V1_TCP_PEAK = "memory.kmem.tcp.max_usage_in_bytes"


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


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot write {value!r} to {path}: {exc.strerror}") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot read {path}: {exc.strerror}") from exc


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SandboxError(f"cgroup: cannot read {path}: {exc.strerror}") from exc


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _mkdir_in_group(path: Path, ensure_group: Callable[[], None]) -> None:
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


def _rmdir(path: Path) -> bool:
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


# ----------------------------------------------------------------------- v1


class _V1Cgroup:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self._dirs = dirs
        # Co-mounted controllers share a directory; join each directory once.
        unique: dict[Path, None] = dict.fromkeys(dirs.values())
        self._unique_dirs = tuple(unique)

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self._unique_dirs)

    def cpu_time_s(self) -> float:
        return int(_read(self._dirs["cpuacct"] / "cpuacct.usage")) / 1e9

    def stats(self) -> CgroupStats:
        mem = self._dirs["memory"]
        oom = _keyed(_read(mem / "memory.oom_control")).get("oom_kill", 0)
        peak = int(_read(mem / "memory.max_usage_in_bytes"))
        tcp_peak = mem / _V1_TCP_PEAK
        if tcp_peak.exists():  # charged apart from user memory on v1: count both
            peak += int(_read(tcp_peak))
        return CgroupStats(cpu_time_s=self.cpu_time_s(), memory_peak_bytes=peak, oom_kills=oom)

    def pids(self) -> list[int]:
        return _read_pids(self._dirs["pids"] / "cgroup.procs")

    def kill(self) -> None:
        freezer = self._dirs.get("freezer")
        if freezer is None:
            # Without a freezer, repeat until no new process appears (pids.max bounds it).
            for _ in range(64):
                pids = self.pids()
                if not pids:
                    return
                _kill_all(pids)
            return
        state = freezer / "freezer.state"
        _write(state, "FROZEN")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while _read(state).strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(_FREEZE_TICK_S)
        try:
            _kill_all(_read_pids(freezer / "cgroup.procs"))
        finally:
            _write(state, "THAWED")

    def remove(self) -> bool:
        removed = [_rmdir(d) for d in self._unique_dirs]  # every directory, even after a busy one
        return all(removed)

    def set_limits(self, limits: CgroupLimits) -> None:
        mem = self._dirs["memory"]
        limit_file = mem / "memory.limit_in_bytes"
        memsw = mem / "memory.memsw.limit_in_bytes"
        value = str(limits.memory_bytes)
        # memsw (memory+swap) may never be below the memory limit: raise it first, lower it last.
        if memsw.exists() and limits.memory_bytes > int(_read(memsw)):
            _write(memsw, value)
            _write(limit_file, value)
        else:
            _write(limit_file, value)
            if memsw.exists():  # swap accounting on: equal to the limit forbids swap entirely
                _write(memsw, value)
        if (mem / _V1_TCP_LIMIT).exists():  # absent on kernels without kmem accounting
            _write(mem / _V1_TCP_LIMIT, value)
        _write(self._dirs["pids"] / "pids.max", str(limits.max_pids))
        if "cpu" in self._dirs:
            _write(self._dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(self._dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_cores * CPU_PERIOD_US))))
            _write(self._dirs["cpu"] / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // CPU_WEIGHT_DEFAULT)))

    def reset_peak(self) -> None:
        mem = self._dirs["memory"]
        _write(mem / "memory.max_usage_in_bytes", "0")  # resets to current usage
        if (mem / _V1_TCP_PEAK).exists():
            _write(mem / _V1_TCP_PEAK, "0")


class CgroupV1Driver:
    """Legacy and hybrid hierarchies: one directory per controller mount."""

    version = 1

    def __init__(self, mounts: dict[str, Path], group: str) -> None:
        missing = [c for c in _V1_REQUIRED if c not in mounts]
        if missing:
            raise ConfigError(f"cgroup v1: controllers not mounted: {', '.join(missing)}")
        self._mounts = {c: p for c, p in mounts.items() if c in _V1_CONTROLLERS}
        self._group = group
        try:
            self._ensure_group()
        except OSError as exc:
            raise ConfigError(f"cgroup v1: cannot create {group}: {exc.strerror}") from exc

    def _ensure_group(self) -> None:
        # Another sandlot process sharing the group may have removed it when it stopped.
        for base in set(self._mounts.values()):
            (base / self._group).mkdir(exist_ok=True)

    def _dirs(self, name: str) -> dict[str, Path]:
        return {c: base / self._group / name for c, base in self._mounts.items()}

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        dirs = self._dirs(name)
        created: list[Path] = []
        try:
            self._ensure_group()
            for d in dict.fromkeys(dirs.values()):
                _mkdir_in_group(d, self._ensure_group)
                created.append(d)
            # Swap accounting on: memsw equal to the limit forbids swap entirely.
            _V1Cgroup(dirs).set_limits(limits)
        except (OSError, SandboxError) as exc:
            for d in created:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"cgroup: cannot create {name}: {exc.strerror}") from exc
        return _V1Cgroup(dirs)

    def open_existing(self, name: str) -> Cgroup | None:
        dirs = self._dirs(name)
        if not any(d.exists() for d in dirs.values()):
            return None
        return _V1Cgroup({c: d for c, d in dirs.items() if d.exists()} | {"pids": dirs["pids"]})

    def remove_group(self) -> None:
        """Remove our parent group if no box is left in it (another process may still use it)."""
        for base in set(self._mounts.values()):
            with contextlib.suppress(OSError):
                os.rmdir(base / self._group)

    def existing_names(self) -> list[str]:
        names: set[str] = set()
        for base in set(self._mounts.values()):
            with contextlib.suppress(FileNotFoundError):
                names.update(p.name for p in (base / self._group).iterdir() if p.is_dir())
        return sorted(names)


# ----------------------------------------------------------------------- v2


class _V2Cgroup:
    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return (self._path / "cgroup.procs",)

    def cpu_time_s(self) -> float:
        return _keyed(_read(self._path / "cpu.stat")).get("usage_usec", 0) / 1e6

    def stats(self) -> CgroupStats:
        peak_file = self._path / "memory.peak"
        peak = int(_read(peak_file)) if peak_file.exists() else int(_read(self._path / "memory.current"))
        return CgroupStats(
            cpu_time_s=self.cpu_time_s(),
            memory_peak_bytes=peak,
            oom_kills=_keyed(_read(self._path / "memory.events")).get("oom_kill", 0),
        )

    def pids(self) -> list[int]:
        return _read_pids(self._path / "cgroup.procs")

    def kill(self) -> None:
        kill_file = self._path / "cgroup.kill"
        if kill_file.exists():
            _write(kill_file, "1")
            return
        _write(self._path / "cgroup.freeze", "1")
        try:
            _kill_all(self.pids())
        finally:
            _write(self._path / "cgroup.freeze", "0")

    def remove(self) -> bool:
        return _rmdir(self._path)

    def set_limits(self, limits: CgroupLimits) -> None:
        _write(self._path / "memory.max", str(limits.memory_bytes))
        _write(self._path / "memory.swap.max", "0")
        _write(self._path / "pids.max", str(limits.max_pids))
        _write(self._path / "cpu.max", f"{max(1000, int(limits.cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        _write(self._path / "cpu.weight", str(min(10_000, max(1, limits.cpu_weight))))

    def reset_peak(self) -> None:
        # v2 resets memory.peak only per open file (kernel 6.12+); the peak then
        # includes the jail's own start-up, a few hundred KiB.
        return


class CgroupV2Driver:
    """The unified hierarchy: memory, pids and cpu enabled for our subtree."""

    version = 2

    def __init__(self, root: Path, group: str) -> None:
        self._base = root / group
        try:
            available = _read(root / "cgroup.controllers").split()
        except SandboxError as exc:
            raise ConfigError(f"cgroup v2: {exc}") from exc
        missing = [c for c in _V2_CONTROLLERS if c not in available]
        if missing:
            raise ConfigError(f"cgroup v2 at {root}: controllers not available: {', '.join(missing)}")
        self._root = root
        try:
            self._ensure_group()
        except (OSError, SandboxError) as exc:
            raise ConfigError(f"cgroup v2: cannot prepare {self._base}: {exc}") from exc

    def _ensure_group(self) -> None:
        # Another sandlot process sharing the group may have removed it when it stopped.
        if self._base.is_dir():
            return
        enabled = set(_read(self._root / "cgroup.subtree_control").split())
        if not set(_V2_CONTROLLERS) <= enabled:
            _write(self._root / "cgroup.subtree_control", " ".join("+" + c for c in _V2_CONTROLLERS))
        self._base.mkdir(exist_ok=True)
        _write(self._base / "cgroup.subtree_control", " ".join("+" + c for c in _V2_CONTROLLERS))

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        path = self._base / name
        try:
            self._ensure_group()
            _mkdir_in_group(path, self._ensure_group)
        except OSError as exc:
            raise SandboxError(f"cgroup: cannot create {path}: {exc.strerror}") from exc
        cgroup = _V2Cgroup(path)
        _write(path / "memory.oom.group", "1")  # an OOM ends the whole run
        cgroup.set_limits(limits)
        return cgroup

    def open_existing(self, name: str) -> Cgroup | None:
        path = self._base / name
        return _V2Cgroup(path) if path.is_dir() else None

    def remove_group(self) -> None:
        """Remove our parent group if no box is left in it (another process may still use it)."""
        with contextlib.suppress(OSError):
            os.rmdir(self._base)

    def existing_names(self) -> list[str]:
        try:
            return sorted(p.name for p in self._base.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []


# ------------------------------------------------------------------ detect


def _v1_mounts(mountinfo: str) -> dict[str, Path]:
    mounts: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) < 3 or fields[0] != "cgroup":
            continue
        mount_point = Path(unescape_mountinfo(left.split()[4]))
        for option in fields[2].split(","):
            if option in _V1_CONTROLLERS:
                mounts.setdefault(option, mount_point)
    return mounts


def _v2_root(mountinfo: str) -> Path | None:
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            root = Path(unescape_mountinfo(left.split()[4]))
            try:
                if set(_V2_CONTROLLERS) <= set((root / "cgroup.controllers").read_text().split()):
                    return root
            except OSError:
                continue
    return None


def detect_driver(group: str, mountinfo_path: Path = Path("/proc/self/mountinfo")) -> CgroupDriver:
    """Pick v2 when the unified hierarchy has our controllers, else v1."""
    try:
        mountinfo = mountinfo_path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {mountinfo_path}: {exc.strerror}") from exc
    v2 = _v2_root(mountinfo)
    if v2 is not None:
        return CgroupV2Driver(v2, group)
    mounts = _v1_mounts(mountinfo)
    if mounts:
        return CgroupV1Driver(mounts, group)
    raise ConfigError("no usable cgroup hierarchy: mount cgroup2 with memory, pids and cpu, or cgroup v1")
