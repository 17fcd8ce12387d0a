"""The seccomp policy, compiled with libseccomp into one BPF program: bwrap loads it (jail), the init under gVisor.

Default allow, with a deny list of the syscalls a sandboxed program has no
business making. Denied calls fail with EPERM (so programs get an error, not a
mysterious death); any foreign ABI (32-bit x86 via int 0x80, x32) kills the
process, since it would bypass every per-syscall rule.

Three rules look at arguments: socket families are an allow-list (a family a
namespace does not isolate, such as vsock, reaches past the box), real-time
scheduling policies are denied (a SCHED_FIFO loop would escape the CPU quota),
and clone's namespace flags are denied like unshare.

The policy is data (``DENIED_SYSCALLS``, ``ALLOWED_SOCKET_FAMILIES``,
``ALLOWED_NETLINK_PROTOCOLS``, ``DENIED_SCHED_POLICIES``) so that every
isolation level can apply the same one; ``compile_filter`` turns it into BPF.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from sandlot.errors import ConfigError

# libseccomp constants (seccomp.h)
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_ACT_BADARCH = 2
_SCMP_CMP_GE = 5
_SCMP_CMP_EQ = 4
_SCMP_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# Each rule: syscall -> the reason it is denied.
DENIED_SYSCALLS: dict[str, str] = {
    "ptrace": "inspecting or controlling other processes",
    "process_vm_readv": "reading another process's memory",
    "process_vm_writev": "writing another process's memory",
    "mount": "changing the filesystem layout",
    "umount2": "changing the filesystem layout",
    "pivot_root": "changing the filesystem root",
    "chroot": "changing the filesystem root",
    "move_mount": "new mount API",
    "open_tree": "new mount API",
    "fsopen": "new mount API",
    "fsmount": "new mount API",
    "fsconfig": "new mount API",
    "fspick": "new mount API",
    "mount_setattr": "new mount API",
    "unshare": "new namespaces escape our accounting and policy",
    "setns": "joining other namespaces",
    "bpf": "loading kernel programs",
    "perf_event_open": "kernel profiling, a rich side channel",
    "keyctl": "the kernel keyring is not namespaced",
    "add_key": "the kernel keyring is not namespaced",
    "request_key": "the kernel keyring is not namespaced",
    "userfaultfd": "a common primitive in kernel exploits",
    "io_uring_setup": "io_uring bypasses syscall filtering and has a long CVE history",
    "io_uring_enter": "io_uring bypasses syscall filtering",
    "io_uring_register": "io_uring bypasses syscall filtering",
    "kexec_load": "replacing the kernel",
    "kexec_file_load": "replacing the kernel",
    "init_module": "loading kernel modules",
    "finit_module": "loading kernel modules",
    "delete_module": "unloading kernel modules",
    "open_by_handle_at": "opening files by handle escapes the mount namespace",
    "name_to_handle_at": "pairs with open_by_handle_at",
    "reboot": "host control",
    "swapon": "host control",
    "swapoff": "host control",
    "acct": "host control",
    "quotactl": "host control",
    "syslog": "reading the kernel log",
    "lookup_dcookie": "kernel internals",
    "vhangup": "terminal control",
    "iopl": "raw port I/O",
    "ioperm": "raw port I/O",
    "settimeofday": "setting the clock",
    "clock_settime": "setting the clock",
    "clock_adjtime": "setting the clock",
    "adjtimex": "setting the clock",
    "fanotify_init": "watching the filesystem globally",
    "inotify_init": "watches on shared read-only mounts report other tenants' file activity",
    "inotify_init1": "watches on shared read-only mounts report other tenants' file activity",
    "sched_setattr": "its policy is in memory seccomp cannot read; sched_setscheduler covers ordinary use",
    "nfsservctl": "kernel services",
    "migrate_pages": "NUMA policy",
    "move_pages": "NUMA policy",
}

# socket(2) and socketpair(2): the families a program may use; any other fails with EAFNOSUPPORT,
# as if the kernel lacked it.
ALLOWED_SOCKET_FAMILIES: dict[int, str] = {
    1: "AF_UNIX: local sockets, inside the box's own mount and net namespaces",
    2: "AF_INET: the box's own net namespace (loopback only)",
    10: "AF_INET6: the box's own net namespace (loopback only)",
    16: "AF_NETLINK: getifaddrs (glibc, Go's net.Interfaces, Node, Java) reads routes and links",
}
SOCKETPAIR_FAMILIES = (1,)  # only AF_UNIX implements socketpair
# Netlink protocols a program may open (others fail with EPROTONOSUPPORT): the families of
# netlink reach kernel subsystems (audit, uevents, netfilter, crypto) that are not the box's.
ALLOWED_NETLINK_PROTOCOLS: dict[int, str] = {0: "NETLINK_ROUTE: getifaddrs, if_nametoindex"}
_AF_NETLINK = 16
_FAMILY_RANGE = 64  # AF_MAX is 46 on Linux 6.x; everything at or above this is denied wholesale

# sched_setscheduler(2) policies denied (EPERM): real-time ones run ahead of the CFS quota.
DENIED_SCHED_POLICIES: dict[int, str] = {
    1: "SCHED_FIFO: runs until it yields, outside the CPU quota's fairness",
    2: "SCHED_RR: real-time round robin",
    6: "SCHED_DEADLINE: reserves CPU bandwidth on the host",
}
_SCHED_RESET_ON_FORK = 0x40000000  # may be OR'ed into the policy; the policy is the rest

# clone(2) with any namespace flag: same reason as unshare.
_CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)


# mknod/mknodat of a device node: the jail's kernel refuses it without CAP_MKNOD, gVisor's tmpfs does
# not; the node would open one of gVisor's own devices. FIFOs and plain files stay allowed.
_S_IFMT = 0o170000
_DEVICE_NODE_TYPES = (0o020000, 0o060000)  # S_IFCHR, S_IFBLK
_MODE_ARG = {"mknod": 1, "mknodat": 2}


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _load_libseccomp() -> ctypes.CDLL:
    # The package's soname first: find_library runs `ldconfig -p` (a process) on every CLI call.
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so", use_errno=True)
        except OSError as exc:
            raise ConfigError(f"libseccomp not found ({exc}); install libseccomp2") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise ConfigError(f"libseccomp: {what}: {os.strerror(-rc)}")


def _add_rule(lib: ctypes.CDLL, ctx: int, action: int, syscall: str, *cmps: tuple[int, int, int, int]) -> None:
    """Add one rule: the syscall, when every (arg, op, a, b) comparison holds (none: always)."""
    nr = lib.seccomp_syscall_resolve_name(syscall.encode())
    if nr < 0:  # not a syscall on this architecture
        return
    array = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
    _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array), f"rule for {syscall}")


def _deny_socket_families(lib: ctypes.CDLL, ctx: int) -> None:
    """socket/socketpair: an allow-list of families (libseccomp ORs rules, so deny each other value)."""
    no_family = _act_errno(errno.EAFNOSUPPORT)
    for syscall, allowed in (("socket", ALLOWED_SOCKET_FAMILIES), ("socketpair", SOCKETPAIR_FAMILIES)):
        for family in range(_FAMILY_RANGE):
            if family not in allowed:
                _add_rule(lib, ctx, no_family, syscall, (0, _SCMP_CMP_EQ, family, 0))
        # Compared on all 64 bits: a family with high bits set is denied too (the kernel would truncate it).
        _add_rule(lib, ctx, no_family, syscall, (0, _SCMP_CMP_GE, _FAMILY_RANGE, 0))
    no_protocol = _act_errno(errno.EPROTONOSUPPORT)
    netlink = (0, _SCMP_CMP_EQ, _AF_NETLINK, 0)
    for protocol in range(_FAMILY_RANGE):
        if protocol not in ALLOWED_NETLINK_PROTOCOLS:
            _add_rule(lib, ctx, no_protocol, "socket", netlink, (2, _SCMP_CMP_EQ, protocol, 0))
    _add_rule(lib, ctx, no_protocol, "socket", netlink, (2, _SCMP_CMP_GE, _FAMILY_RANGE, 0))


def _deny_realtime_scheduling(lib: ctypes.CDLL, ctx: int) -> None:
    """sched_setscheduler with a real-time policy, with or without SCHED_RESET_ON_FORK."""
    deny = _act_errno(errno.EPERM)
    # The policy is an int: the kernel reads the low 32 bits only, so compare those alone.
    mask = 0xFFFFFFFF & ~_SCHED_RESET_ON_FORK
    for policy in DENIED_SCHED_POLICIES:
        _add_rule(lib, ctx, deny, "sched_setscheduler", (1, _SCMP_CMP_MASKED_EQ, mask, policy))


@lru_cache(maxsize=1)
def compile_filter() -> bytes:
    """Build the policy and return it as a BPF program (what bwrap --seccomp reads)."""
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise ConfigError("libseccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, _SCMP_ACT_KILL_PROCESS), "bad-arch action")
        deny = _act_errno(errno.EPERM)
        for name in DENIED_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture
                continue
            _check(lib.seccomp_rule_add_array(ctx, deny, nr, 0, None), f"deny {name}")
        clone_nr = lib.seccomp_syscall_resolve_name(b"clone")
        cmp = (_ArgCmp * 1)(_ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_NAMESPACE_FLAGS, 0))
        # MASKED_EQ(flags & NS, 0) allows; so deny each flag separately.
        for bit in range(32):
            flag = 1 << bit
            if _CLONE_NAMESPACE_FLAGS & flag:
                cmp[0] = _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag)
                _check(lib.seccomp_rule_add_array(ctx, deny, clone_nr, 1, cmp), "deny clone namespaces")
        _deny_socket_families(lib, ctx)
        _deny_realtime_scheduling(lib, ctx)
        for name, arg in _MODE_ARG.items():
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            for kind in _DEVICE_NODE_TYPES:
                cmp[0] = _ArgCmp(arg, _SCMP_CMP_MASKED_EQ, _S_IFMT, kind)
                _check(lib.seccomp_rule_add_array(ctx, deny, nr, 1, cmp), f"deny {name} of devices")
        # clone3 passes flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        clone3_nr = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3_nr >= 0:
            _check(lib.seccomp_rule_add_array(ctx, _act_errno(errno.ENOSYS), clone3_nr, 0, None), "clone3")
        fd = os.memfd_create("sandlot-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


_BPF_INSTRUCTION_BYTES = 8  # struct sock_filter


def cached_filter(cache_dir: Path) -> bytes:
    """``compile_filter()``'s program, compiled once per host and kept in ``cache_dir`` (root's alone).

    Compiling takes ~2-3 ms, paid by every ``sandlot run``. The file's name is a
    digest of everything the program depends on: this module (the policy), the
    libseccomp version (its syscall tables) and the kernel (libseccomp asks it
    which actions exist), so a stale program is never read, only a new one
    compiled. Whoever can write ``cache_dir`` could replace the helper binary
    there too: the cache adds no one to trust.
    """
    lib = _load_libseccomp()
    version = lib.seccomp_version().contents
    kernel = os.uname()
    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update(f"{version.major}.{version.minor}.{version.micro} {kernel.release} {kernel.machine}".encode())
    path = cache_dir / f"seccomp-{key.hexdigest()[:16]}.bpf"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        pass  # not compiled yet (or not a plain file: replaced below)
    else:
        with os.fdopen(fd, "rb") as f:
            program = f.read()
        if program and len(program) % _BPF_INSTRUCTION_BYTES == 0:
            return program
    program = compile_filter()
    tmp = cache_dir / f".{path.name}.{os.getpid()}"  # per process: another may be writing the same one
    try:
        cache_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        tmp.write_bytes(program)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:  # a read-only state dir: compile on every start instead
        with contextlib.suppress(OSError):
            tmp.unlink()
    return program
