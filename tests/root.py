"""Which tests need root, in one place (see conftest.py): the rest run as any user.

Real sandboxes need root (namespaces, cgroups, mounts), and so do the suite's
shared locks and state (``/run/sandlot-test*``, ``/var/lib/sandlot-test``).
Whatever reaches for those first calls ``require_root``: the ``sandbox``
fixture, a started Service, the loopback port reservations of process-level
tests. Run as another user, such a test is skipped with the reason instead of
failing, and the pure-logic tests still run.
"""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0
SANDBOXES = "it runs real sandboxes (namespaces, cgroups, mounts)"


def require_root(why: str = SANDBOXES) -> None:
    """Skip the calling test (or fixture) with the reason, unless this process is root."""
    if not IS_ROOT:
        pytest.skip(f"needs root: {why}")
