"""cgroup v2 (the unified hierarchy): one directory per box with memory, pids and cpu enabled for our subtree.

Socket buffers are charged to the cgroup's memory (memory.current) by the kernel
itself. Killing is ``cgroup.kill`` where the kernel has it, else freeze, kill, thaw.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandlot.errors import ConfigError, SandboxError
from sandlot.sandbox import cgroupfs as fs
from sandlot.sandbox.cgroupfs import CPU_PERIOD_US, Cgroup, CgroupLimits, CgroupStats
from sandlot.sandbox.hostfs import unescape_mountinfo

_V2_CONTROLLERS = ("memory", "pids", "cpu")


class _V2Cgroup:
    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return (self._path / "cgroup.procs",)

    def cpu_time_s(self) -> float:
        return fs.keyed(fs.read(self._path / "cpu.stat")).get("usage_usec", 0) / 1e6

    def stats(self) -> CgroupStats:
        peak_file = self._path / "memory.peak"
        peak = int(fs.read(peak_file)) if peak_file.exists() else int(fs.read(self._path / "memory.current"))
        return CgroupStats(
            cpu_time_s=self.cpu_time_s(),
            memory_peak_bytes=peak,
            oom_kills=fs.keyed(fs.read(self._path / "memory.events")).get("oom_kill", 0),
        )

    def pids(self) -> list[int]:
        return fs.read_pids(self._path / "cgroup.procs")

    def kill(self) -> None:
        kill_file = self._path / "cgroup.kill"
        if kill_file.exists():
            fs.write(kill_file, "1")
            return
        fs.write(self._path / "cgroup.freeze", "1")
        try:
            fs.kill_all(self.pids())
        finally:
            fs.write(self._path / "cgroup.freeze", "0")

    def remove(self) -> bool:
        return fs.rmdir(self._path)

    def set_limits(self, limits: CgroupLimits) -> None:
        fs.write(self._path / "memory.max", str(limits.memory_bytes))
        fs.write(self._path / "memory.swap.max", "0")
        fs.write(self._path / "pids.max", str(limits.max_pids))
        fs.write(self._path / "cpu.max", f"{max(1000, int(limits.cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        fs.write(self._path / "cpu.weight", str(min(10_000, max(1, limits.cpu_weight))))

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
            available = fs.read(root / "cgroup.controllers").split()
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
        enabled = set(fs.read(self._root / "cgroup.subtree_control").split())
        if not set(_V2_CONTROLLERS) <= enabled:
            fs.write(self._root / "cgroup.subtree_control", " ".join("+" + c for c in _V2_CONTROLLERS))
        self._base.mkdir(exist_ok=True)
        fs.write(self._base / "cgroup.subtree_control", " ".join("+" + c for c in _V2_CONTROLLERS))

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        path = self._base / name
        try:
            self._ensure_group()
            fs.mkdir_in_group(path, self._ensure_group)
        except OSError as exc:
            raise SandboxError(f"cgroup: cannot create {path}: {exc.strerror}") from exc
        cgroup = _V2Cgroup(path)
        fs.write(path / "memory.oom.group", "1")  # an OOM ends the whole run
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


def v2_root(mountinfo: str) -> Path | None:
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
