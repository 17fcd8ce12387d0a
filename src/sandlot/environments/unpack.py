"""Applying an image's layers, in order, into a fresh directory: hostile-input safe.

Theory of operation: every path in a layer is the image author's choice, so no path is ever handed to the
kernel whole. We hold a directory fd on the root and walk each entry's parent one component at a time
(``openat`` with ``O_NOFOLLOW | O_DIRECTORY``): a symlink or a file in the middle of a path is refused, so a
layer that plants ``lib -> /etc`` and then writes ``lib/passwd`` stops there (well-formed layers never write
through a link: a layer is a filesystem diff, which records the link's target path). The last component is
created relative to its parent's fd with ``O_EXCL | O_NOFOLLOW`` after the old entry is removed. ``..`` and
absolute paths are refused outright; a hard link must name a file this import already wrote inside the root.
Device nodes and FIFOs are dropped, set-id bits and xattrs (file capabilities) are never applied, and
:func:`seal` then makes the tree root-owned and read-only. Size and entry counts are capped while writing.

Whiteouts follow the OCI layer spec (as umoci's ``tar_extract.go`` applies them): ``.wh.NAME`` removes NAME
and ``.wh..wh..opq`` empties its directory, both from the lower layers only: what this same layer wrote
(tracked in ``upper``, with every ancestor) is kept whatever the order of entries in the tar.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sandlot.environments.oci import ImageSource
from sandlot.errors import EnvironmentLimitExceeded, ImageRejected, SandboxError

DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3  # bytes written by one import, all layers together
DEFAULT_MAX_FILES = 1_000_000  # entries created by one import, all layers together
_CHUNK = 1024 * 1024
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


@dataclass(frozen=True)
class UnpackLimits:
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_files: int = DEFAULT_MAX_FILES


@dataclass
class UnpackStats:
    bytes_written: int = 0
    entries: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # what was neutralised, by kind

    def drop(self, kind: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1


def unpack(source: ImageSource, root: Path, limits: UnpackLimits) -> UnpackStats:
    """Apply every layer of ``source`` into the empty directory ``root``, verifying each layer's digests."""
    stats = UnpackStats()
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        layers = source.image.layers
        for number, layer in enumerate(layers, 1):
            what = f"layer {number} of {len(layers)}"
            stream = source.open_layer(layer, what)
            try:
                _Layer(root_fd, stats, limits, what).apply(stream.stream)
                stream.finish(what)
            finally:
                stream.close()
    finally:
        os.close(root_fd)
    return stats


def unpack_tar(stream: IO[bytes], root: Path, limits: UnpackLimits, what: str) -> UnpackStats:
    """Apply one tar (an environment moved from another node) into the empty directory ``root``, as a layer is."""
    stats = UnpackStats()
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        _Layer(root_fd, stats, limits, what).apply(stream)
    finally:
        os.close(root_fd)
    return stats


def _parts(name: str, what: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise ImageRejected(f"{what}: absolute path {name!r} refused")
    parts = tuple(part for part in name.split("/") if part not in {"", "."})
    if ".." in parts:
        raise ImageRejected(f"{what}: path {name!r} refused: it climbs out with '..'")
    return parts


class _Layer:
    """One layer's tar applied onto the root (see the module docstring)."""

    def __init__(self, root_fd: int, stats: UnpackStats, limits: UnpackLimits, what: str) -> None:
        self._root = root_fd
        self._stats = stats
        self._limits = limits
        self._what = what
        self._upper: set[tuple[str, ...]] = set()

    def apply(self, stream: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    self._entry(tar, member)
        except tarfile.TarError as exc:
            raise ImageRejected(f"{self._what}: not a valid tar: {exc}") from exc
        except OSError as exc:
            if exc.errno in _HOST_ERRNOS:
                raise SandboxError(f"{self._what}: cannot write the environment: {exc}") from exc
            raise ImageRejected(f"{self._what}: {exc}") from exc

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name, self._what)
        if not parts:
            return  # the root itself: its mode and owner are ours to choose
        base = parts[-1]
        if base.startswith(_WHITEOUT):
            if base == _OPAQUE:
                self._opaque(parts[:-1])
            elif not base.startswith(_WHITEOUT + _WHITEOUT) and len(base) > len(_WHITEOUT):
                self._whiteout((*parts[:-1], base[len(_WHITEOUT) :]))
            return  # other .wh..wh.* names are aufs bookkeeping, never files of the image
        if member.ischr() or member.isblk() or member.isfifo():
            self._stats.drop("device" if member.isdev() and not member.isfifo() else "fifo")
            return
        if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
            self._stats.drop("other")
            return
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            self._stats.drop("setid-bit")
        self._count_entry(member.name)
        parent = self._walk(parts[:-1], member.name)
        try:
            for depth in range(1, len(parts) + 1):
                self._upper.add(parts[:depth])
            self._create(tar, member, parent, base)
        finally:
            os.close(parent)

    def _count_entry(self, name: str) -> None:
        self._stats.entries += 1
        if self._stats.entries > self._limits.max_files:
            raise EnvironmentLimitExceeded(
                f"{self._what}: {name!r} is over the file-count cap "
                f"environment_import_max_files={self._limits.max_files}",
                limit="environment_import_max_files",
            )

    def _walk(self, parts: tuple[str, ...], name: str, *, create: bool = True) -> int:
        """An fd on the directory ``parts`` below the root, never following a link; -1 if absent and not create."""
        fd = os.dup(self._root)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return -1
                    self._count_entry(name)
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in {errno.ELOOP, errno.ENOTDIR}:
                        raise
                    if not create:
                        os.close(fd)
                        return -1
                    through = "/".join(parts[:depth])
                    raise ImageRejected(
                        f"{self._what}: {name!r} refused: it goes through {through!r}, "
                        "which is a symlink or not a directory"
                    ) from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str) -> None:
        existing = _lstat(base, parent)
        if member.isdir():
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                return  # merged with the lower layers' directory
            _remove(base, parent, existing)
            os.mkdir(base, 0o755, dir_fd=parent)
            return
        if member.islnk():
            self._hardlink(member, parent, base, existing)
            return
        _remove(base, parent, existing)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)  # stored, never followed by us
            return
        mode = 0o755 if member.mode & 0o111 else 0o644
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            data = tar.extractfile(member)
            assert data is not None  # a regular file always has a data stream
            while chunk := data.read(_CHUNK):
                self._stats.bytes_written += len(chunk)
                if self._stats.bytes_written > self._limits.max_total_bytes:
                    raise EnvironmentLimitExceeded(
                        f"{self._what}: {member.name!r} takes the image over the size cap "
                        f"environment_import_max_bytes={self._limits.max_total_bytes}",
                        limit="environment_import_max_bytes",
                    )
                out.write(chunk)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, base: str, existing: os.stat_result | None) -> None:
        target = _parts(member.linkname, self._what)
        target_dir = self._walk(target[:-1], member.linkname, create=False) if target else -1
        try:
            found = _lstat(target[-1], target_dir) if target_dir >= 0 else None
            if found is None or not (stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)):
                raise ImageRejected(
                    f"{self._what}: hard link {member.name!r} -> {member.linkname!r} refused: "
                    "the target is not a file this image wrote"
                )
            if existing is not None and os.path.samestat(existing, found):
                return  # a link onto itself: already there
            _remove(base, parent, existing)
            os.link(target[-1], base, src_dir_fd=target_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            if target_dir >= 0:
                os.close(target_dir)

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        if parts in self._upper:
            return  # written by this same layer: a whiteout hides the lower layers only
        parent = self._walk(parts[:-1], "/".join(parts), create=False)
        if parent < 0:
            return  # nothing below to hide
        try:
            _remove(parts[-1], parent, _lstat(parts[-1], parent))
        finally:
            os.close(parent)

    def _opaque(self, parts: tuple[str, ...]) -> None:
        fd = self._walk(parts, "/".join(parts), create=False)
        if fd < 0:
            return
        try:
            for name in os.listdir(fd):
                child = (*parts, name)
                if child not in self._upper:
                    _remove(name, fd, _lstat(name, fd))
                elif stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    self._opaque(child)  # kept for this layer's entries; its lower contents still go
        finally:
            os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int, existing: os.stat_result | None) -> None:
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, never follows a link out of the tree
    else:
        os.unlink(name, dir_fd=dir_fd)


@dataclass(frozen=True)
class SealStats:
    size_bytes: int
    file_count: int
    dropped: dict[str, int]


def seal(root: Path) -> SealStats:
    """Make ``root`` what a box may bind: root-owned, read-only, no devices, FIFOs, sockets or set-id bits.

    Also used on a built root (mmdebstrap leaves device nodes in ``/dev``; a box brings its own).
    Counts the size (each inode once) and the entries.
    """
    size = 0
    count = 0
    dropped: dict[str, int] = {}
    inodes: set[tuple[int, int]] = set()
    for _, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in [*filenames, *dirnames]:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = stat.S_IFMT(info.st_mode)
            if kind not in {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}:
                os.unlink(name, dir_fd=dir_fd)
                dropped["special"] = dropped.get("special", 0) + 1
                continue
            count += 1
            if info.st_uid or info.st_gid:
                os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
            if kind == stat.S_IFLNK:
                continue
            if kind == stat.S_IFREG and (info.st_dev, info.st_ino) not in inodes:
                inodes.add((info.st_dev, info.st_ino))
                size += info.st_size
            if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                dropped["setid-bit"] = dropped.get("setid-bit", 0) + 1
            wanted = 0o555 if kind == stat.S_IFDIR or info.st_mode & 0o111 else 0o444
            if stat.S_IMODE(info.st_mode) != wanted:
                # Not a link (checked above), and only this import writes in its private temp dir.
                os.chmod(name, wanted, dir_fd=dir_fd)
    os.chmod(root, 0o555)
    os.chown(root, 0, 0)
    return SealStats(size, count, dropped)
