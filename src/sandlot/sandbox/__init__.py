"""Isolation: everything that touches namespaces, cgroups, seccomp and the host filesystem.

Theory of operation: see ``box.py``; ``host.py`` hands out boxes, ``reaper.py``
is the one owner of ending them, ``protocol.py`` specifies how the host and the
box's init talk. Layers above this package see only ``Sandbox`` (created once),
``Box`` (one slot, ``run`` yields events then a ``Result``) and ``Bind``; they
never learn which backend or cgroup version runs.
"""

from sandlot.sandbox.box import Box
from sandlot.sandbox.host import Sandbox
from sandlot.sandbox.policy import BOX_WORKDIR, Bind

__all__ = ["BOX_WORKDIR", "Bind", "Box", "Sandbox"]
