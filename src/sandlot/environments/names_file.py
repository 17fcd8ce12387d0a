"""The store's ``names.json`` as last read, read again only when it changed.

Theory of operation
-------------------
The store's writers never change ``names.json`` in place: they write a new file and rename it over the
old one (``EnvironmentStore._write_names``), in this process or in another (``sandlot env import`` next
to a running server). So while nothing changes the path names the same inode, and every change is a new
one. The file last parsed is kept open: an inode held open is never freed, so its number cannot be
given to a later file, and "the path still names the inode we hold" means exactly "unchanged". (Its
size and modification time are compared too, for a hand edit in place; alone they would be fooled by a
re-point to a digest of the same length within one tick of the file system's clock.)

A look is one ``stat`` instead of an open, a read and a JSON parse: every submit that names an
environment looks (``SharedEnvironments.resolve``, on the event loop), as do ``inspect`` and
``by_digest``.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from pathlib import Path

from sandlot.errors import SandboxError

_READ_CHUNK = 64 * 1024


class NamesFile:
    """``names.json`` at ``path``: ``read`` gives name -> digest hex, parsed again only after a change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # looks come from the event loop and from threads at once
        self._held: list[int] = []  # the fd of the file parsed; a list so the finalizer shares it
        self._seen: tuple[int, int, int, int] | None = None  # (dev, inode, size, mtime ns) of that file
        self._names: dict[str, str] = {}
        weakref.finalize(self, _close, self._held)

    def read(self) -> dict[str, str]:
        """Every name and the digest hex it points to ({} without the file); a copy the caller may change."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SandboxError(f"{self.path}: unreadable: {exc}") from exc
        with self._lock:
            if self._seen != _identity(info) and not self._load():
                return {}  # removed since the stat
            return dict(self._names)

    def _load(self) -> bool:
        """Parse the file at the path now and hold it open; False if it is gone."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SandboxError(f"{self.path}: unreadable: {exc}") from exc
        try:
            seen = _identity(os.fstat(fd))  # of what is read, whatever the path names by now
            data = json.loads(b"".join(iter(lambda: os.read(fd, _READ_CHUNK), b"")))
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise SandboxError(f"{self.path}: unreadable: {exc}") from exc
        _close(self._held)
        self._held.append(fd)
        self._seen = seen
        self._names = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        return True


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _close(held: list[int]) -> None:
    while held:
        os.close(held.pop())
