"""What a relative path from a request may be: the one rule every layer checks names against.

A path a caller names (a file of a run, of a session, of a Judge0 zip, a file to
fetch) must stay inside the workdir: relative, no ``..``, no NUL, UTF-8, at
most ``MAX_PATH_DEPTH`` components of at most ``MAX_NAME_BYTES`` bytes each
and ``MAX_PATH_BYTES`` in all. Pure: the doors check names here as they parse,
and ``sandbox.hostfs`` checks them again before touching the disk.
"""

from __future__ import annotations

from sandlot.errors import RejectedError

MAX_PATH_BYTES = 1024
MAX_PATH_DEPTH = 32
MAX_NAME_BYTES = 255  # NAME_MAX: a longer component is the caller's mistake (ENAMETOOLONG), said up front


def validate_relative_path(name: str, *, field: str = "path") -> tuple[str, ...]:
    """Split a user-supplied relative path, refusing anything that could leave the workdir."""
    try:
        encoded = name.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no file can have this name
        raise RejectedError.at(field, f"not valid UTF-8: {name!r}") from exc
    if not name or "\x00" in name or len(encoded) > MAX_PATH_BYTES:
        raise RejectedError.at(field, f"invalid file name {name!r}")
    if name.startswith("/"):
        raise RejectedError.at(field, f"absolute paths are not allowed: {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or any(p == ".." for p in parts) or len(parts) > MAX_PATH_DEPTH:
        raise RejectedError.at(field, f"path must stay inside the workdir: {name!r}")
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        raise RejectedError.at(field, f"a path component is over {MAX_NAME_BYTES} bytes: {name!r}")
    return parts
