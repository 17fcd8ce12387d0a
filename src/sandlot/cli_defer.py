"""Defer loading asyncio (and json, subprocess) until first used: ``sandlot run`` starts its jail meanwhile.

Imported first by cli.py, before any module that imports them. Judges and
scripts call ``sandlot run`` once per test, so its start-up counts: asyncio
(with concurrent.futures, logging, ssl and socket behind it) is the biggest
import of a local run, and nothing before the jail's spawn needs it, nor json
or subprocess (a helper build, a gVisor probe). Registered as modules not yet
executed, the sandbox modules' ``import asyncio`` costs nothing; ``run`` opens
its box and pre-launches the jail synchronously (the same ``Box.prelaunch`` the
server's pool uses), and asyncio is then really loaded by the first
``asyncio.run``, while the jail's helper, bubblewrap and init start on the
other core (benchmarks/cli_startup.py --phases shows both).

Nothing changes where a module is already loaded (a test process, a server).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types

DEFERRED = ("asyncio", "json", "subprocess")

_LOCK = threading.RLock()  # one module executed once, whichever threads ask for it first
_executing: set[str] = set()


class _Deferred(types.ModuleType):
    """A module registered but not executed: the first attribute it lacks executes it.

    (``importlib.util.LazyLoader`` would too, but on Python 3.11 any attribute,
    even the ``__spec__`` that a repeated ``import asyncio`` looks at, loads it.)
    Other threads wait for the execution; while it runs, the executing thread
    sees the module as partly initialised, as an ordinary import would show it.
    """

    def __getattr__(self, attr: str) -> object:
        name = self.__name__
        with _LOCK:
            if type(self) is _Deferred and name not in _executing:
                _executing.add(name)
                try:
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None
                    spec.loader.exec_module(self)
                finally:
                    _executing.discard(name)
                object.__setattr__(self, "__class__", types.ModuleType)  # from here on, a plain module
        return object.__getattribute__(self, attr)


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


for _name in DEFERRED:
    defer(_name)
