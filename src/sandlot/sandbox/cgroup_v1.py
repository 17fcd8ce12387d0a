"""cgroup v1 ("legacy" or "hybrid" hosts): one directory per controller mount.

The memory, pids, cpu, cpuacct and freezer hierarchies are used wherever they are
mounted, co-mounted or not. Socket buffers are charged to a host-wide pool unless
the cgroup's TCP accounting is on, which writing ``memory.kmem.tcp.limit_in_bytes``
turns on (for sockets created afterwards, so it is written before any process
joins); despite its name it takes every socket's buffers, UDP too, and the peak
reported is user memory plus socket buffers. Killing freezes first (the freezer
has no notification: polled, so never on an event loop).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from sandlot.errors import ConfigError, SandboxError
from sandlot.sandbox import cgroupfs as fs
from sandlot.sandbox.cgroupfs import (
    CPU_PERIOD_US,
    CPU_WEIGHT_DEFAULT,
    FREEZE_TIMEOUT_S,
    Cgroup,
    CgroupLimits,
    CgroupStats,
)
from sandlot.sandbox.hostfs import unescape_mountinfo

_FREEZE_TICK_S = 0.0005  # freezer.state has no notification: polled, in a worker thread only
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_V1_REQUIRED = ("memory", "pids", "cpuacct")
_V1_TCP_LIMIT = "memory.kmem.tcp.limit_in_bytes"  # v1's TCP buffer accounting (v2 charges sockets to memory)
_V1_TCP_PEAK = "memory.kmem.tcp.max_usage_in_bytes"


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
        return int(fs.read(self._dirs["cpuacct"] / "cpuacct.usage")) / 1e9

    def stats(self) -> CgroupStats:
        mem = self._dirs["memory"]
        oom = fs.keyed(fs.read(mem / "memory.oom_control")).get("oom_kill", 0)
        peak = int(fs.read(mem / "memory.max_usage_in_bytes"))
        tcp_peak = mem / _V1_TCP_PEAK
        if tcp_peak.exists():  # charged apart from user memory on v1: count both
            peak += int(fs.read(tcp_peak))
        return CgroupStats(cpu_time_s=self.cpu_time_s(), memory_peak_bytes=peak, oom_kills=oom)

    def pids(self) -> list[int]:
        return fs.read_pids(self._dirs["pids"] / "cgroup.procs")

    def kill(self) -> None:
        freezer = self._dirs.get("freezer")
        if freezer is None:
            # Without a freezer, repeat until no new process appears (pids.max bounds it).
            for _ in range(64):
                pids = self.pids()
                if not pids:
                    return
                fs.kill_all(pids)
            return
        state = freezer / "freezer.state"
        fs.write(state, "FROZEN")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while fs.read(state).strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(_FREEZE_TICK_S)
        try:
            fs.kill_all(fs.read_pids(freezer / "cgroup.procs"))
        finally:
            fs.write(state, "THAWED")

    def remove(self) -> bool:
        removed = [fs.rmdir(d) for d in self._unique_dirs]  # every directory, even after a busy one
        return all(removed)

    def set_limits(self, limits: CgroupLimits) -> None:
        mem = self._dirs["memory"]
        limit_file = mem / "memory.limit_in_bytes"
        memsw = mem / "memory.memsw.limit_in_bytes"
        value = str(limits.memory_bytes)
        # memsw (memory+swap) may never be below the memory limit: raise it first, lower it last.
        if memsw.exists() and limits.memory_bytes > int(fs.read(memsw)):
            fs.write(memsw, value)
            fs.write(limit_file, value)
        else:
            fs.write(limit_file, value)
            if memsw.exists():  # swap accounting on: equal to the limit forbids swap entirely
                fs.write(memsw, value)
        if (mem / _V1_TCP_LIMIT).exists():  # absent on kernels without kmem accounting
            fs.write(mem / _V1_TCP_LIMIT, value)
        fs.write(self._dirs["pids"] / "pids.max", str(limits.max_pids))
        if "cpu" in self._dirs:
            fs.write(self._dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            fs.write(self._dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_cores * CPU_PERIOD_US))))
            fs.write(self._dirs["cpu"] / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // CPU_WEIGHT_DEFAULT)))

    def reset_peak(self) -> None:
        mem = self._dirs["memory"]
        fs.write(mem / "memory.max_usage_in_bytes", "0")  # resets to current usage
        if (mem / _V1_TCP_PEAK).exists():
            fs.write(mem / _V1_TCP_PEAK, "0")


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
                fs.mkdir_in_group(d, self._ensure_group)
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


def v1_mounts(mountinfo: str) -> dict[str, Path]:
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
