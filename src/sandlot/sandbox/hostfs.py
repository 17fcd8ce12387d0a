"""Host-side filesystem work on paths the sandbox controls, without ever following its traps.

The program may plant symlinks, hardlinks, fifos or devices in its workdir. Every
host-side access here walks from a directory fd with O_NOFOLLOW, refuses
anything that is not a plain file or directory, and never blocks on a fifo
(the class of Judge0's CVE-2024-28185 and CVE-2024-28189). The workdir is its
own tmpfs, so a hardlink to a host file cannot exist there at all (EXDEV), and
cleaning up is an unmount, not a tree walk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from sandlot.errors import RejectedError, SandboxError

_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
MAX_PATH_BYTES = 1024
MAX_PATH_DEPTH = 32


def _load_libc() -> ctypes.CDLL:
    # glibc's stable soname first: find_library runs `ldconfig -p` (a process, ~2.5 ms on every CLI call).
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_libc = _load_libc()
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"mount {fstype} on {target}: {os.strerror(err)}")


def mount_tmpfs(target: Path, *, size_bytes: int, inodes: int, uid: int, gid: int, mode: int) -> None:
    data = f"size={size_bytes},nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}"
    _mount("sandlot", target, "tmpfs", _MS_NOSUID | _MS_NODEV, data)


def mount_overlay(*, lower: Path, upper: Path, work: Path, target: Path) -> None:
    data = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _mount("sandlot", target, "overlay", _MS_NOSUID | _MS_NODEV, data)


def unmount(target: Path) -> None:
    """Lazily detach a mount; a missing or unmounted target is fine."""
    if _libc.umount2(str(target).encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise SandboxError(f"umount {target}: {os.strerror(err)}")


def is_mount_point(path: Path) -> bool:
    try:
        return path.is_mount()
    except OSError:
        return False


def unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_below(prefix: Path) -> list[Path]:
    """Mount points at or below prefix, deepest first (from /proc/self/mountinfo)."""
    found: list[Path] = []
    prefix_s = str(prefix).rstrip("/")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = unescape_mountinfo(line.split()[4])
            if point == prefix_s or point.startswith(prefix_s + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


# --------------------------------------------------------------- paths


def validate_relative_path(name: str, *, field: str = "path") -> tuple[str, ...]:
    """Split a user-supplied relative path, refusing anything that could leave the workdir."""
    if not name or "\x00" in name or len(name.encode()) > MAX_PATH_BYTES:
        raise RejectedError(f"{field}: invalid file name {name!r}", field=field)
    if name.startswith("/"):
        raise RejectedError(f"{field}: absolute paths are not allowed: {name!r}", field=field)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or any(p == ".." for p in parts) or len(parts) > MAX_PATH_DEPTH:
        raise RejectedError(f"{field}: path must stay inside the workdir: {name!r}", field=field)
    return parts


def _open_dir_beneath(root_fd: int, parts: tuple[str, ...], *, create: bool, uid: int, gid: int) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.fchown(nxt, uid, gid)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_root(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def write_file(root: Path, name: str, data: bytes, *, uid: int, gid: int, mode: int = 0o644) -> None:
    """Create or replace root/name with data; whatever the program planted there is unlinked, not followed."""
    parts = validate_relative_path(name, field="files.name")
    root_fd = open_root(root)
    try:
        try:
            dir_fd = _open_dir_beneath(root_fd, parts[:-1], create=True, uid=uid, gid=gid)
        except (NotADirectoryError, OSError) as exc:
            raise RejectedError(f"files.name: cannot create directory for {name!r}: {exc.strerror}") from exc
        try:
            try:
                os.unlink(parts[-1], dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError as exc:
                raise RejectedError(f"files.name: {name!r} is a directory") from exc
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                dir_fd=dir_fd,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


class FileMissing(RejectedError):
    """The path names nothing in the workdir (a door's 404, not a refusal)."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int


def read_file(root: Path, name: str, *, max_bytes: int) -> bytes:
    """Read a plain file the program left; links, fifos and devices are refused."""
    parts = validate_relative_path(name)
    root_fd = open_root(root)
    try:
        try:
            dir_fd = _open_dir_beneath(root_fd, parts[:-1], create=False, uid=0, gid=0)
        except OSError as exc:
            raise FileMissing(f"{name}: no such file") from exc
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise FileMissing(f"{name}: no such file") from exc
            except OSError as exc:  # ELOOP: a symlink
                raise RejectedError(f"{name}: not a regular file ({exc.strerror})") from exc
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise RejectedError(f"{name}: not a regular file")
                if st.st_size > max_bytes:
                    raise RejectedError(f"{name}: larger than {max_bytes} bytes")
                chunks: list[bytes] = []
                remaining = max_bytes + 1
                while remaining > 0:
                    chunk = os.read(fd, min(remaining, 1 << 16))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
                data = b"".join(chunks)
                if len(data) > max_bytes:
                    raise RejectedError(f"{name}: larger than {max_bytes} bytes")
                return data
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


def list_files(root: Path, *, max_entries: int = 10_000) -> list[FileInfo]:
    """Regular files below root, without following any link."""
    out: list[FileInfo] = []
    root_fd = open_root(root)
    try:
        stack: list[tuple[int, str]] = [(os.dup(root_fd), "")]
        while stack:
            fd, prefix = stack.pop()
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        if len(out) >= max_entries:
                            break
                        rel = prefix + entry.name
                        if entry.is_dir(follow_symlinks=False):
                            try:
                                sub = os.open(
                                    entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                                )
                            except OSError:
                                continue
                            stack.append((sub, rel + "/"))
                        elif entry.is_file(follow_symlinks=False):
                            out.append(FileInfo(rel, entry.stat(follow_symlinks=False).st_size))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return sorted(out, key=lambda f: f.path)
