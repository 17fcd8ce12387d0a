"""Host-side filesystem work on paths the sandbox controls, without ever following its traps.

The program may plant symlinks, hardlinks, fifos or devices in its workdir. Every
host-side access here walks from a directory fd with O_NOFOLLOW, refuses
anything that is not a plain file or directory, and never blocks on a fifo
(the class of Judge0's CVE-2024-28185 and CVE-2024-28189). The workdir is its
own tmpfs, so a hardlink to a host file cannot exist there at all (EXDEV), and
cleaning up is an unmount, not a tree walk.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandlot.errors import FileBusy, FileMissing, RejectedError, SandboxError
from sandlot.paths import MAX_PATH_DEPTH, validate_relative_path

_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
MAX_LIST_ENTRIES = 10_000  # files and directories one listing looks at before it stops (truncated)


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


def bind_shared(path: Path) -> None:
    """Make ``path`` a mount of its own with shared propagation (a bind onto itself).

    A jail bubblewrap starts afterwards gets its copy of the mount as a slave
    (bwrap marks its whole tree MS_SLAVE), so a mount later made here on the host
    shows up in the running jail too: how a session's workdir reaches a jail
    that was launched before the session's run was asked for.
    """
    _mount(str(path), path, "", _MS_BIND, "")
    _mount("none", path, "", _MS_SHARED, "")


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


Root = Path | int  # a directory's path, or an fd of it (a session's detached workdir: see workdirs.py)


def open_root(root: Root) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if isinstance(root, int):
        return os.open(".", flags, dir_fd=root)  # a new fd of our own: the caller closes it
    return os.open(root, flags)


@contextlib.contextmanager
def _owned(fd: int) -> Iterator[int]:
    """fd, closed when the block ends however it ends: every walk below holds several at once."""
    try:
        yield fd
    finally:
        os.close(fd)


def write_file(root: Root, name: str, data: bytes, *, uid: int, gid: int, mode: int = 0o644) -> None:
    """Create or replace root/name with data; whatever the program planted there is unlinked, not followed."""
    parts = validate_relative_path(name, field="files.name")
    with _owned(open_root(root)) as root_fd:
        try:
            dir_fd = _open_dir_beneath(root_fd, parts[:-1], create=True, uid=uid, gid=gid)
        except (NotADirectoryError, OSError) as exc:
            raise RejectedError.at("files.name", f"cannot create directory for {name!r}: {exc.strerror}") from exc
    with _owned(dir_fd):
        try:
            os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError as exc:
            raise RejectedError.at("files.name", f"{name!r} is a directory") from exc
        try:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                dir_fd=dir_fd,
            )
        except FileExistsError as exc:  # the running program created it again after our unlink
            raise FileBusy.at("files.name", f"{name!r} was recreated by the running program; retry") from exc
        with _owned(fd):
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                # A full workdir: leave no half-written file filling it (a name only unlinked, never followed).
                with contextlib.suppress(OSError):
                    os.unlink(parts[-1], dir_fd=dir_fd)
                raise
            os.fchown(fd, uid, gid)


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int


def read_file(root: Root, name: str, *, max_bytes: int) -> bytes:
    """Read a plain file the program left; links, fifos and devices are refused."""
    parts = validate_relative_path(name)
    with _owned(open_root(root)) as root_fd:
        try:
            dir_fd = _open_dir_beneath(root_fd, parts[:-1], create=False, uid=0, gid=0)
        except OSError as exc:
            raise FileMissing(f"{name}: no such file") from exc
    with _owned(dir_fd):
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise FileMissing(f"{name}: no such file") from exc
        except OSError as exc:  # ELOOP: a symlink
            raise RejectedError(f"{name}: not a regular file ({exc.strerror})") from exc
    with _owned(fd):
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


@dataclass(frozen=True)
class Listing:
    files: list[FileInfo]
    truncated: bool  # the entry cap or the depth limit stopped the walk before it saw everything


def list_files(root: Root, *, max_entries: int = MAX_LIST_ENTRIES) -> Listing:
    """Regular files below root, without following any link, in bounded fds and time.

    Directories still to visit are kept as relative paths, not open fds: each is
    reopened from the root one component at a time with O_NOFOLLOW (a directory
    the program swapped for a link meanwhile is skipped, never followed), so a
    walk holds at most two fds per level of depth whatever the tree's width.
    Every entry looked at, file or directory, counts toward ``max_entries``;
    past it, or below MAX_PATH_DEPTH, the walk stops and says ``truncated``.
    An entry the running program deletes while we look is simply not listed.
    """
    out: list[FileInfo] = []
    seen = 0
    truncated = False
    pending: deque[tuple[str, ...]] = deque([()])
    with _owned(open_root(root)) as root_fd:
        while pending and not truncated:
            parts = pending.popleft()
            try:
                fd = _open_dir_beneath(root_fd, parts, create=False, uid=0, gid=0)
            except OSError:
                continue  # removed or replaced by the program since we saw it
            with _owned(fd), os.scandir(fd) as it:
                for entry in it:
                    seen += 1
                    if seen > max_entries:
                        truncated = True
                        break
                    if not _is_utf8(entry.name):
                        continue  # no request could name it (paths are UTF-8), and JSON cannot carry it
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if len(parts) + 1 >= MAX_PATH_DEPTH:
                                truncated = True  # its files could not be named in a request anyway
                                continue
                            pending.append((*parts, entry.name))
                        elif entry.is_file(follow_symlinks=False):
                            size = entry.stat(follow_symlinks=False).st_size
                            out.append(FileInfo("/".join((*parts, entry.name)), size))
                    except FileNotFoundError:
                        continue
    return Listing(sorted(out, key=lambda f: f.path), truncated)


def _is_utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # os.scandir decodes undecodable bytes to lone surrogates
        return False
    return True
