"""The host-wide sandbox context: checked once at start-up, then hands out boxes.

``Sandbox`` checks bubblewrap, builds the static helper, compiles the seccomp
program, detects the cgroup version and prepares the state directory; then
``open_box`` takes a free slot (an flock) and returns a ``Box`` (box.py) with
whatever a dead holder of the slot left cleaned (reaper.py), and
``sweep_stale`` cleans every slot no live process holds (at start-up).
"""

from __future__ import annotations

import os

from sandlot.config import Settings, check_state_dir_reachable
from sandlot.errors import ConfigError, SandboxError, UidInUse
from sandlot.sandbox import policy, seccomp, slots
from sandlot.sandbox.box import Box
from sandlot.sandbox.cgroups import CgroupDriver, detect_driver
from sandlot.sandbox.gvisor import Gvisor
from sandlot.sandbox.helper import helper_path

__all__ = ["Sandbox"]


class Sandbox:
    """Host-wide sandbox context, created once at start-up and passed in."""

    def __init__(self, settings: Settings, *, driver: CgroupDriver | None = None) -> None:
        if os.geteuid() != 0:
            raise ConfigError("sandlot must run as root to create boxes (it drops to a per-box uid itself)")
        if not os.access(settings.bwrap_path, os.X_OK):
            raise ConfigError(f"bubblewrap not found at {settings.bwrap_path}; install the bubblewrap package")
        self.settings = settings
        check_state_dir_reachable(settings.state_dir)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.state_dir, 0o711)
        self.boxes_dir = settings.state_dir / "boxes"
        self.boxes_dir.mkdir(exist_ok=True)
        os.chmod(self.boxes_dir, 0o711)
        self.etc_dir = settings.state_dir / "etc"
        policy.write_synthetic_etc(self.etc_dir)
        os.chmod(self.etc_dir, 0o755)
        self.helper = helper_path(settings.state_dir)
        self.seccomp_program = seccomp.cached_filter(settings.state_dir / "bin")
        self.driver = driver or detect_driver(settings.cgroup_name)
        self.gvisor = Gvisor(settings, etc_dir=self.etc_dir)

    def check_isolation(self, isolation: str, *, probe: bool = True) -> None:
        """Raise unless boxes of this level can start here (IsolationUnavailable says exactly why).

        ``probe=False`` skips starting a throw-away gVisor sandbox (see ``Gvisor.check``).
        """
        if isolation == "gvisor":
            self.gvisor.check(probe=probe)
        elif isolation != "jail":
            raise SandboxError(f"unknown isolation level {isolation!r}")

    def open_box(self, index: int | None = None, *, isolation: str = "jail") -> Box:
        """Take a slot (the given one, or the first free) and prepare its workdir."""
        self.check_isolation(isolation, probe=False)  # a server probed at start; the CLI's run says it all
        s = self.settings
        if index is None:
            slot = slots.acquire_any(s.run_dir, s.box_uid_base, s.max_boxes)
        else:
            maybe = slots.try_acquire(s.run_dir, index, s.box_uid_base)
            if maybe is None:
                raise SandboxError(f"box slot {index} is held by another process")
            slot = maybe
        box = Box(self, slot, isolation=isolation)
        try:
            box.clean_leftovers()
            box.prepare()
        except BaseException:
            slot.release()
            raise
        return box

    def sweep_stale(self) -> int:
        """Clean every slot no live process holds (run at start-up). Returns how many had leftovers."""
        cleaned = 0
        names = set(self.driver.existing_names())
        indexes = {int(n.removeprefix("box-")) for n in names if n.removeprefix("box-").isdigit()}
        if self.boxes_dir.exists():
            indexes |= {int(p.name) for p in self.boxes_dir.iterdir() if p.name.isdigit()}
        for index in sorted(indexes):
            try:
                slot = slots.try_acquire(self.settings.run_dir, index, self.settings.box_uid_base)
            except UidInUse:
                continue  # another sandlot instance's box: never ours to clean
            if slot is None:
                continue  # a live process holds it
            try:
                box = Box(self, slot)
                cleaned += box.clean_leftovers()
            finally:
                slot.release()
        self.driver.remove_group()  # made by the driver on the way in; kept only while a box is in it
        return cleaned
