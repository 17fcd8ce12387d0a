"""The cgroup drivers against fake cgroup trees, and detection from a fake mountinfo.

This host runs cgroups v1 (hybrid), so the v2 driver is exercised against a
temporary directory laid out like a unified cgroupfs: the driver only reads and
writes files, so the values it writes and how it parses what the kernel reports
can be checked exactly. The v1 driver gets the same treatment with one
temporary directory per controller mount.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandlot.errors import ConfigError, SandboxError
from sandlot.sandbox import cgroupfs
from sandlot.sandbox.cgroups import CgroupLimits, CgroupV1Driver, CgroupV2Driver, detect_driver

_GROUP = "sandlot"
_LIMITS = CgroupLimits(memory_bytes=64 * 1024 * 1024, max_pids=32, cpu_cores=1.5)
_V1_ALL = ("memory", "pids", "cpu", "cpuacct", "freezer")


def _v2_root(path: Path, controllers: str = "cpuset cpu io memory pids", enabled: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled)
    return path


def _v1_mounts(base: Path, controllers: tuple[str, ...] = _V1_ALL) -> dict[str, Path]:
    mounts = {c: base / c for c in controllers}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    return mounts


def _read(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process whose pid a fake cgroup.procs can list, so kill() has something to kill."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every (file name, value) the drivers write, in order."""
    recorded: list[tuple[str, str]] = []
    original: Callable[[Path, str], None] = cgroupfs.write

    def recording(path: Path, value: str) -> None:
        recorded.append((path.name, value))
        original(path, value)

    monkeypatch.setattr(cgroupfs, "write", recording)
    return recorded


# ---------------------------------------------------------------------- v2


def test_v2_enables_controllers(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    driver = CgroupV2Driver(root, _GROUP)
    assert driver.version == 2
    assert _read(root / "cgroup.subtree_control") == "+memory +pids +cpu"
    assert (root / _GROUP).is_dir()
    assert _read(root / _GROUP / "cgroup.subtree_control") == "+memory +pids +cpu"


def test_v2_leaves_enabled_root_alone(tmp_path: Path) -> None:
    root = _v2_root(tmp_path, enabled="cpuset cpu io memory pids")
    CgroupV2Driver(root, _GROUP)
    assert _read(root / "cgroup.subtree_control") == "cpuset cpu io memory pids"
    assert _read(root / _GROUP / "cgroup.subtree_control") == "+memory +pids +cpu"


@pytest.mark.parametrize("missing", ["memory", "pids", "cpu"])
def test_v2_missing_controller(tmp_path: Path, missing: str) -> None:
    available = " ".join(c for c in ("cpuset", "cpu", "io", "memory", "pids") if c != missing)
    root = _v2_root(tmp_path, controllers=available)
    with pytest.raises(ConfigError, match=rf"not available: {missing}$"):
        CgroupV2Driver(root, _GROUP)


def test_v2_not_a_cgroupfs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cgroup v2"):
        CgroupV2Driver(tmp_path, _GROUP)


def test_v2_create_writes_limits(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    box = root / _GROUP / "box-1"
    assert box.is_dir()
    assert _read(box / "memory.max") == str(64 * 1024 * 1024)
    assert _read(box / "memory.swap.max") == "0"
    assert _read(box / "memory.oom.group") == "1"
    assert _read(box / "pids.max") == "32"
    assert _read(box / "cpu.max") == "150000 100000"
    assert _read(box / "cpu.weight") == "100"
    assert cgroup.procs_files == (box / "cgroup.procs",)
    cgroup.set_limits(dataclasses.replace(_LIMITS, cpu_weight=1))  # a box warming up ahead of its run
    assert _read(box / "cpu.weight") == "1"


def test_v2_cpu_quota_has_a_floor(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    CgroupV2Driver(root, _GROUP).create("box-2", CgroupLimits(memory_bytes=1 << 20, max_pids=1, cpu_cores=0.001))
    assert _read(root / _GROUP / "box-2" / "cpu.max") == "1000 100000"


def test_v2_stats(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    box = root / _GROUP / "box-1"
    (box / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (box / "memory.peak").write_text("12345678\n")
    (box / "memory.current").write_text("4096\n")
    (box / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 1\n")
    stats = cgroup.stats()
    assert stats.cpu_time_s == 2.5
    assert stats.memory_peak_bytes == 12345678
    assert stats.oom_kills == 1
    assert cgroup.cpu_time_s() == 2.5


def test_v2_stats_falls_back_to_memory_current(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    box = root / _GROUP / "box-1"
    (box / "cpu.stat").write_text("user_usec 1\n")
    (box / "memory.current").write_text("4096\n")
    (box / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\n")
    stats = cgroup.stats()
    assert stats.cpu_time_s == 0.0
    assert stats.memory_peak_bytes == 4096
    assert stats.oom_kills == 0


def test_v2_stats_unreadable_is_a_sandbox_error(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    with pytest.raises(SandboxError, match="cgroup: cannot read"):
        cgroup.stats()


def test_v2_pids(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    assert cgroup.pids() == []
    (root / _GROUP / "box-1" / "cgroup.procs").write_text("12\n34\n")
    assert cgroup.pids() == [12, 34]


def test_v2_kill_uses_cgroup_kill(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    box = root / _GROUP / "box-1"
    (box / "cgroup.kill").write_text("")
    writes.clear()
    cgroup.kill()
    assert _read(box / "cgroup.kill") == "1"
    assert writes == [("cgroup.kill", "1")]
    assert not (box / "cgroup.freeze").exists()


def test_v2_kill_falls_back_to_freezing(
    tmp_path: Path, writes: list[tuple[str, str]], sleeper: subprocess.Popen[bytes]
) -> None:
    root = _v2_root(tmp_path)
    cgroup = CgroupV2Driver(root, _GROUP).create("box-1", _LIMITS)
    box = root / _GROUP / "box-1"
    (box / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    writes.clear()
    cgroup.kill()
    assert writes == [("cgroup.freeze", "1"), ("cgroup.freeze", "0")]
    assert _read(box / "cgroup.freeze") == "0"
    assert sleeper.wait(timeout=30) == -9


def test_v2_existing_names_and_open_existing(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    driver = CgroupV2Driver(root, _GROUP)
    assert driver.existing_names() == []
    assert driver.open_existing("box-1") is None
    driver.create("box-3", _LIMITS)
    (root / _GROUP / "box-1").mkdir()
    assert driver.existing_names() == ["box-1", "box-3"]  # cgroup.subtree_control is a file, not a group
    existing = driver.open_existing("box-1")
    assert existing is not None
    assert existing.procs_files == (root / _GROUP / "box-1" / "cgroup.procs",)
    existing.remove()
    assert not (root / _GROUP / "box-1").exists()
    assert driver.existing_names() == ["box-3"]
    existing.remove()  # already gone: fine


# ---------------------------------------------------------------------- v1


@pytest.fixture
def memsw_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make fake v1 memory cgroups look like a kernel with swap accounting (the file appears on mkdir)."""
    original: Callable[[Path, str], None] = cgroupfs.write

    def with_memsw(path: Path, value: str) -> None:
        if path.name == "memory.limit_in_bytes":
            memsw = path.with_name("memory.memsw.limit_in_bytes")
            if not memsw.exists():
                memsw.write_text("9223372036854771712\n")
        original(path, value)

    monkeypatch.setattr(cgroupfs, "write", with_memsw)


def test_v1_create_writes_limits(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path)
    driver = CgroupV1Driver(mounts, _GROUP)
    assert driver.version == 1
    cgroup = driver.create("box-1", _LIMITS)
    dirs = {c: mounts[c] / _GROUP / "box-1" for c in _V1_ALL}
    assert all(d.is_dir() for d in dirs.values())
    assert _read(dirs["memory"] / "memory.limit_in_bytes") == str(64 * 1024 * 1024)
    assert not (dirs["memory"] / "memory.memsw.limit_in_bytes").exists()
    assert _read(dirs["pids"] / "pids.max") == "32"
    assert _read(dirs["cpu"] / "cpu.cfs_period_us") == "100000"
    assert _read(dirs["cpu"] / "cpu.cfs_quota_us") == "150000"
    assert set(cgroup.procs_files) == {d / "cgroup.procs" for d in dirs.values()}


@pytest.mark.usefixtures("memsw_kernel")
def test_v1_memsw_forbids_swap(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path)
    CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    memory = mounts["memory"] / _GROUP / "box-1"
    assert _read(memory / "memory.memsw.limit_in_bytes") == str(64 * 1024 * 1024)
    assert _read(memory / "memory.limit_in_bytes") == str(64 * 1024 * 1024)


def test_v1_co_mounted_controllers_share_a_directory(tmp_path: Path) -> None:
    shared = tmp_path / "cpu,cpuacct"
    shared.mkdir()
    mounts = {"memory": tmp_path / "memory", "pids": tmp_path / "pids", "cpu": shared, "cpuacct": shared}
    for path in mounts.values():
        path.mkdir(exist_ok=True)
    cgroup = CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    assert sorted(cgroup.procs_files) == sorted(
        {mounts[c] / _GROUP / "box-1" / "cgroup.procs" for c in ("memory", "pids", "cpu")}
    )
    assert len(cgroup.procs_files) == 3
    assert _read(shared / _GROUP / "box-1" / "cpu.cfs_quota_us") == "150000"


def test_v1_without_cpu_controller(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path, ("memory", "pids", "cpuacct"))
    cgroup = CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    assert len(cgroup.procs_files) == 3
    assert _read(mounts["pids"] / _GROUP / "box-1" / "pids.max") == "32"


@pytest.mark.parametrize("missing", ["memory", "pids", "cpuacct"])
def test_v1_missing_required_controller(tmp_path: Path, missing: str) -> None:
    mounts = _v1_mounts(tmp_path, tuple(c for c in _V1_ALL if c != missing))
    with pytest.raises(ConfigError, match=rf"not mounted: {missing}$"):
        CgroupV1Driver(mounts, _GROUP)


def test_v1_stats(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path)
    cgroup = CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    memory = mounts["memory"] / _GROUP / "box-1"
    (mounts["cpuacct"] / _GROUP / "box-1" / "cpuacct.usage").write_text("2500000000\n")
    (memory / "memory.max_usage_in_bytes").write_text("7654321\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    stats = cgroup.stats()
    assert stats.cpu_time_s == 2.5
    assert stats.memory_peak_bytes == 7654321
    assert stats.oom_kills == 2


def test_v1_charges_tcp_buffers_where_the_kernel_accounts_them(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path)
    cgroup = CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    memory = mounts["memory"] / _GROUP / "box-1"
    assert not (memory / "memory.kmem.tcp.limit_in_bytes").exists()  # a kernel without it: nothing written
    # A kernel with kmem accounting: the files exist, and sockets get the memory limit as their budget.
    (memory / "memory.kmem.tcp.limit_in_bytes").write_text("9223372036854771712\n")
    (memory / "memory.kmem.tcp.max_usage_in_bytes").write_text("1000\n")
    cgroup.set_limits(_LIMITS)
    assert _read(memory / "memory.kmem.tcp.limit_in_bytes") == str(64 * 1024 * 1024)
    cgroup.reset_peak()
    assert _read(memory / "memory.kmem.tcp.max_usage_in_bytes") == "0"
    (mounts["cpuacct"] / _GROUP / "box-1" / "cpuacct.usage").write_text("0\n")
    (memory / "memory.max_usage_in_bytes").write_text("7654321\n")
    (memory / "memory.kmem.tcp.max_usage_in_bytes").write_text("30000000\n")
    (memory / "memory.oom_control").write_text("oom_kill 0\n")
    assert cgroup.stats().memory_peak_bytes == 7654321 + 30000000  # socket buffers are reported


def test_v1_kill_freezes_kills_thaws(
    tmp_path: Path, writes: list[tuple[str, str]], sleeper: subprocess.Popen[bytes]
) -> None:
    mounts = _v1_mounts(tmp_path)
    cgroup = CgroupV1Driver(mounts, _GROUP).create("box-1", _LIMITS)
    (mounts["freezer"] / _GROUP / "box-1" / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    writes.clear()
    cgroup.kill()
    assert writes == [("freezer.state", "FROZEN"), ("freezer.state", "THAWED")]
    assert sleeper.wait(timeout=30) == -9


def test_v1_create_survives_another_process_removing_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another sandlot process's remove_group can fall between our ensure_group and our mkdir."""
    mounts = _v1_mounts(tmp_path)
    driver = CgroupV1Driver(mounts, _GROUP)
    real = driver._ensure_group
    calls: list[int] = []

    def racing() -> None:
        real()
        if not calls:
            (mounts["cpu"] / _GROUP).rmdir()  # the other process found it empty just now
        calls.append(1)

    monkeypatch.setattr(driver, "_ensure_group", racing)
    cgroup = driver.create("box-1", _LIMITS)
    assert len(calls) == 2
    assert (mounts["cpu"] / _GROUP / "box-1" / "cpu.cfs_quota_us").is_file()
    assert len(cgroup.procs_files) == len(_V1_ALL)


def test_v1_existing_names_and_open_existing(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path)
    driver = CgroupV1Driver(mounts, _GROUP)
    assert driver.existing_names() == []
    assert driver.open_existing("box-7") is None
    (mounts["memory"] / _GROUP / "box-7").mkdir()
    (mounts["pids"] / _GROUP / "box-8").mkdir()
    assert driver.existing_names() == ["box-7", "box-8"]
    stale = driver.open_existing("box-7")
    assert stale is not None
    assert stale.pids() == []
    stale.remove()
    assert driver.existing_names() == ["box-8"]


# ---------------------------------------------------------------------- detect


def _mountinfo_line(mount_id: int, mount_point: Path, fstype: str, options: str) -> str:
    escaped = str(mount_point).replace(" ", "\\040")
    optional = "rw,nosuid,nodev,noexec,relatime shared:9"
    return f"{mount_id} 23 0:{mount_id} / {escaped} {optional} - {fstype} {fstype} {options}\n"


def _write_mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(
        "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        "23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n" + "".join(lines)
    )
    return path


def _v1_lines(mounts: dict[str, Path]) -> list[str]:
    return [_mountinfo_line(30 + i, path, "cgroup", f"rw,{name}") for i, (name, path) in enumerate(mounts.items())]


def test_detect_v2(tmp_path: Path) -> None:
    root = _v2_root(tmp_path / "unified")
    mountinfo = _write_mountinfo(tmp_path, [_mountinfo_line(40, root, "cgroup2", "rw,nsdelegate")])
    driver = detect_driver(_GROUP, mountinfo_path=mountinfo)
    assert isinstance(driver, CgroupV2Driver)
    assert driver.version == 2
    assert (root / _GROUP).is_dir()


def test_detect_v2_mount_point_with_space(tmp_path: Path) -> None:
    """mountinfo escapes a space in a mount point as \\040; detection must unescape it."""
    root = _v2_root(tmp_path / "cgroup root")
    mountinfo = _write_mountinfo(tmp_path, [_mountinfo_line(40, root, "cgroup2", "rw")])
    driver = detect_driver(_GROUP, mountinfo_path=mountinfo)
    assert driver.version == 2
    assert (root / _GROUP).is_dir()


def test_detect_v1(tmp_path: Path) -> None:
    mounts = _v1_mounts(tmp_path / "v1", ("memory", "pids", "cpuacct"))
    mountinfo = _write_mountinfo(tmp_path, _v1_lines(mounts))
    driver = detect_driver(_GROUP, mountinfo_path=mountinfo)
    assert isinstance(driver, CgroupV1Driver)
    assert driver.version == 1
    assert all((path / _GROUP).is_dir() for path in mounts.values())


def test_detect_hybrid_prefers_v1_when_unified_has_no_controllers(tmp_path: Path) -> None:
    """Like this host: a cgroup2 mount without controllers next to the v1 hierarchies."""
    unified = _v2_root(tmp_path / "unified", controllers="")
    mounts = _v1_mounts(tmp_path / "v1")
    lines = [*_v1_lines(mounts), _mountinfo_line(50, unified, "cgroup2", "rw")]
    driver = detect_driver(_GROUP, mountinfo_path=_write_mountinfo(tmp_path, lines))
    assert driver.version == 1
    assert not (unified / _GROUP).exists()


def test_detect_co_mounted_v1(tmp_path: Path) -> None:
    shared = tmp_path / "cpu,cpuacct"
    memory = tmp_path / "memory"
    pids = tmp_path / "pids"
    for path in (shared, memory, pids):
        path.mkdir()
    lines = [
        _mountinfo_line(31, shared, "cgroup", "rw,cpu,cpuacct"),
        _mountinfo_line(32, memory, "cgroup", "rw,memory"),
        _mountinfo_line(33, pids, "cgroup", "rw,pids"),
    ]
    driver = detect_driver(_GROUP, mountinfo_path=_write_mountinfo(tmp_path, lines))
    cgroup = driver.create("box-1", _LIMITS)
    assert len(cgroup.procs_files) == 3
    assert _read(shared / _GROUP / "box-1" / "cpu.cfs_quota_us") == "150000"


def test_detect_nothing_usable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable cgroup"):
        detect_driver(_GROUP, mountinfo_path=_write_mountinfo(tmp_path, []))


def test_detect_unreadable_mountinfo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        detect_driver(_GROUP, mountinfo_path=tmp_path / "missing")


def test_detect_this_host_is_v1() -> None:
    from tests.conftest import TEST_CGROUP

    assert detect_driver(TEST_CGROUP).version == 1
