"""A box's workdir as bytes on the host: read out after a compile, written into other boxes to run it there.

Judge mode and a Judge0 batch's compile-once compile a program in one box and run it in many: the
compiled workdir (binary, class files, sources) is read with the link-safe host file layer (never
following what a box planted) and copied into each fresh box.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandlot.errors import RejectedError
from sandlot.models import Result
from sandlot.sandbox import Box

WorkdirFiles = tuple[tuple[str, bytes], ...]  # (path, content) of each regular file of a workdir


@dataclass(frozen=True)
class Compiled:
    """A program compiled once, for many runs: its compile stage's Result and its workdir after it."""

    result: Result
    files: WorkdirFiles


def read_workdir(box: Box, max_bytes: int) -> WorkdirFiles:
    """A box's workdir (after a compile): every regular file, never following a link (blocking I/O).

    RejectedError when it holds more than ``max_bytes`` or too many entries to list.
    """
    listing = box.listing()
    total = sum(f.size for f in listing.files)
    if listing.truncated or total > max_bytes:
        raise RejectedError(f"{total} bytes in {len(listing.files)} files (more than {max_bytes} bytes, or files)")
    return tuple((f.path, box.read_file(f.path, max_bytes=max_bytes)) for f in listing.files)


def write_workdir(box: Box, files: WorkdirFiles) -> None:
    """Copy a workdir into box. Executable for all: the listing does not carry modes, a compiled binary
    must stay runnable, and the box's own user owns these files and could chmod them anyway."""
    for path, content in files:
        box.write_file(path, content, mode=0o755)
