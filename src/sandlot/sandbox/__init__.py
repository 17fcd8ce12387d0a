"""Isolation: everything that touches namespaces, cgroups, seccomp and the host filesystem.

Theory of operation: see ``box.py``. Layers above this package see only
``Sandbox`` (created once), ``Box`` (one slot, ``run`` yields events then a
``Result``) and ``Bind``; they never learn which backend or cgroup version runs.
"""

from sandlot.sandbox.box import Box, Sandbox
from sandlot.sandbox.policy import BOX_WORKDIR, Bind

__all__ = ["BOX_WORKDIR", "Bind", "Box", "Sandbox"]
