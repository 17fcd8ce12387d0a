"""cgroups v1 and v2 behind one interface.

A box gets a fresh cgroup per run, named ``<group>/box-<slot>``, so accounting
starts at zero and nothing of a previous run lingers. The helper process writes
its own pid into every ``procs_files`` entry before it execs bubblewrap, so
every process of the run is accounted from its first instruction.

Where each part lives: ``cgroupfs`` (the limits and stats types, the ``Cgroup``
and ``CgroupDriver`` interface, every file read and write), ``cgroup_v1`` (legacy
and hybrid hosts: memory, pids, cpu, cpuacct and freezer wherever mounted; socket
buffers charged by turning TCP accounting on), ``cgroup_v2`` (one unified
directory with memory, pids and cpu enabled for our subtree; the kernel charges
socket buffers to memory itself). This module picks the driver for the host.

These modules are the mechanism only (create, limit, read, signal, rmdir); when and
in what order a box's processes are killed and its cgroup removed, and every
wait that takes, belongs to ``reaper.py``.
"""

from __future__ import annotations

from pathlib import Path

from sandlot.errors import ConfigError
from sandlot.sandbox.cgroup_v1 import CgroupV1Driver, v1_mounts
from sandlot.sandbox.cgroup_v2 import CgroupV2Driver, v2_root
from sandlot.sandbox.cgroupfs import (
    CPU_PERIOD_US,
    CPU_WEIGHT_DEFAULT,
    CPU_WEIGHT_WARMING,
    FREEZE_TIMEOUT_S,
    Cgroup,
    CgroupDriver,
    CgroupLimits,
    CgroupStats,
)

__all__ = [
    "CPU_PERIOD_US",
    "CPU_WEIGHT_DEFAULT",
    "CPU_WEIGHT_WARMING",
    "FREEZE_TIMEOUT_S",
    "Cgroup",
    "CgroupDriver",
    "CgroupLimits",
    "CgroupStats",
    "CgroupV1Driver",
    "CgroupV2Driver",
    "detect_driver",
]


def detect_driver(group: str, mountinfo_path: Path = Path("/proc/self/mountinfo")) -> CgroupDriver:
    """Pick v2 when the unified hierarchy has our controllers, else v1."""
    try:
        mountinfo = mountinfo_path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {mountinfo_path}: {exc.strerror}") from exc
    v2 = v2_root(mountinfo)
    if v2 is not None:
        return CgroupV2Driver(v2, group)
    mounts = v1_mounts(mountinfo)
    if mounts:
        return CgroupV1Driver(mounts, group)
    raise ConfigError("no usable cgroup hierarchy: mount cgroup2 with memory, pids and cpu, or cgroup v1")
