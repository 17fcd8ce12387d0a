"""Defer loading asyncio until it is first used: ``sandlot run`` starts its jail meanwhile.

Imported first by cli.py, before any module that imports asyncio. Judges and
scripts call ``sandlot run`` once per test, so its start-up counts: asyncio
(with concurrent.futures, logging, ssl and socket behind it) is the biggest
import of a local run, and nothing before the jail's spawn needs it. With
asyncio registered as a module not yet executed, the
sandbox modules' ``import asyncio`` costs nothing; ``run`` opens its box and
pre-launches the jail synchronously (the same ``Box.prelaunch`` the server's
pool uses), and asyncio is then really loaded by the first ``asyncio.run``,
while the jail's helper, bubblewrap and init start on the other core.

Nothing changes where asyncio is already loaded (a test process, a server).
"""

from __future__ import annotations

import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """A module registered but not executed: the first attribute it lacks executes it.

    (``importlib.util.LazyLoader`` would too, but on Python 3.11 any attribute,
    even the ``__spec__`` that a repeated ``import asyncio`` looks at, loads it.)
    """

    def __getattr__(self, attr: str) -> object:
        object.__setattr__(self, "__class__", types.ModuleType)  # from here on, a plain module
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(self)
        return getattr(self, attr)


def defer(name: str) -> None:
    """Register module ``name`` now and execute it on its first real use."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # not found: the real import will say so
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module


defer("asyncio")
