"""Isolation, layer by layer: what a program in a box can see, touch and do, and what the host sees of it.

Each test asserts something that would differ if its layer were missing:
namespaces (pid, net, ipc, uts, mount), read-only system directories and
size-capped writable ones, the per-box host uid and the absence of
capabilities, the seccomp deny list and its foreign-ABI kill, the box's
cgroup (membership, no swap, nothing survives the run), rlimits, a clean
environment without inherited fds, and the host-side file operations that
must never follow what a program planted in its workdir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.errors import RejectedError
from sandlot.models import Limits, OutputEvent, Result, Status
from sandlot.sandbox import Box, Sandbox
from sandlot.sandbox.policy import BASE_PATH, BOX_HOSTNAME, BOX_UID
from tests.conftest import run_in, run_job

BOTH_LEVELS = True  # the behaviour suite: every test runs at isolation jail and gvisor

PYTHON = "/usr/bin/python3"
BASH = "/usr/bin/bash"

# ----------------------------------------------------------------- helpers


async def _python(box: Box, settings: Settings, code: str, *args: str) -> Result:
    result = await run_in(box, [PYTHON, "-c", code, *args], settings.run_defaults)
    assert result.status is Status.OK, result
    return result


async def _python_json(box: Box, settings: Settings, code: str, *args: str) -> object:
    """Run python code in the box; its last stdout line is JSON."""
    result = await _python(box, settings, code, *args)
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def _status_fields(pid: int) -> dict[str, str] | None:
    """/proc/<pid>/status as a dict, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _live_pids_with_uid(uid: int) -> dict[int, dict[str, str]]:
    """Every host process (zombies aside: they run nothing) with uid among its real/effective/saved/fs uids."""
    found: dict[int, dict[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _status_fields(int(entry))
        if fields is None or fields.get("State", "").startswith("Z"):
            continue
        if str(uid) in fields.get("Uid", "").split():
            found[int(entry)] = fields
    return found


def _run_descendants(before: set[int]) -> set[int]:
    """This process's descendants that the run started (others, like a session-wide redis-server
    fixture, existed before it)."""
    return _descendants(os.getpid()) - before


def _descendants(pid: int) -> set[int]:
    """All descendants of pid, from /proc/<pid>/task/*/children."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


# A bash tail that announces readiness, then waits (forking nothing) until the host creates /box/go.
_GO_FILE = "go"
_WAIT_FOR_GO = f"""
mkfifo /tmp/.wait && exec 9<>/tmp/.wait
echo ready
while [ ! -e /box/{_GO_FILE} ]; do read -r -t 0.05 -u 9 || :; done
"""
# Start a background `sleep 200` and wait until it has really exec'd sleep.
_SLEEP_200 = """
sleep 200 &
until read -r comm < /proc/$!/comm && [ "$comm" = sleep ]; do :; done
"""


@contextlib.asynccontextmanager
async def _running(box: Box, script: str, limits: Limits) -> AsyncIterator[asyncio.Task[Result]]:
    """Run a bash script in the box and yield while it waits; leaving lets it finish normally."""
    ready = asyncio.Event()

    async def consume() -> Result:
        seen = b""
        result: Result | None = None
        async for item in box.run([BASH, "-c", script + _WAIT_FOR_GO], limits=limits):
            if isinstance(item, OutputEvent):
                seen += item.data
                if b"ready" in seen:
                    ready.set()
            else:
                result = item
        assert result is not None
        return result

    task = asyncio.create_task(consume())
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        raise AssertionError(f"the run ended before it was ready: {task.result()}")
    try:
        yield task
    finally:
        try:
            box.write_file(_GO_FILE, b"")
        except BaseException:
            task.cancel()  # box.run's own cleanup kills the cgroup
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        await task


# ------------------------------------------------------------ namespaces

_PID_PROBE = """
import json, os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
init = open("/proc/1/cmdline", "rb").read().split(b"\\0")[:2]
print(json.dumps({"pids": pids, "me": os.getpid(), "ppid": os.getppid(), "init": [a.decode() for a in init]}))
"""


async def test_pid_namespace_shows_only_the_box(box: Box, settings: Settings) -> None:
    seen = await _python_json(box, settings, _PID_PROBE)
    assert isinstance(seen, dict)
    # Exactly the box's init (pid 1) and this program, its child; nothing of the host.
    assert seen["pids"] == sorted({1, seen["me"]}), seen
    assert seen["ppid"] == 1
    assert seen["init"] == ["/.init", "init"]


_NET_PROBE = """
import errno, json, socket, sys
port, name = int(sys.argv[1]), sys.argv[2]

def attempt(family, kind, address):
    s = socket.socket(family, kind)
    s.settimeout(5)
    try:
        s.connect(address)
        return "connected"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()

print(json.dumps({
    "interfaces": sorted(n for _, n in socket.if_nameindex()),
    "host_tcp": attempt(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port)),
    "host_abstract": attempt(socket.AF_UNIX, socket.SOCK_STREAM, "\\0" + name),
    "internet_tcp": attempt(socket.AF_INET, socket.SOCK_STREAM, ("8.8.8.8", 53)),
    "internet_udp": attempt(socket.AF_INET, socket.SOCK_DGRAM, ("8.8.8.8", 53)),
}))
"""


def _had_connection(listener: socket.socket) -> bool:
    """Whether a connection is waiting on listener (closing it if so)."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_net_namespace_has_only_loopback_and_no_way_out(box: Box, settings: Settings) -> None:
    abstract_name = f"sandlot-test-{uuid.uuid4().hex}"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        unix.bind("\0" + abstract_name)
        unix.listen(8)
        port = tcp.getsockname()[1]
        # Sanity: both listeners are reachable from the host's namespace.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        tcp.accept()[0].close()

        seen = await _python_json(box, settings, _NET_PROBE, str(port), abstract_name)
        reached = [_had_connection(tcp), _had_connection(unix)]
    assert reached == [False, False]
    assert seen == {
        "interfaces": ["lo"],
        "host_tcp": "ECONNREFUSED",  # the box's own loopback, where nothing listens
        "host_abstract": "ECONNREFUSED",  # abstract unix sockets belong to the net namespace
        # No route at all; gVisor's network stack words it as "host unreachable".
        "internet_tcp": "EHOSTUNREACH" if box.isolation == "gvisor" else "ENETUNREACH",
        "internet_udp": "EHOSTUNREACH" if box.isolation == "gvisor" else "ENETUNREACH",
    }


_NS_PROBE = """
import json, os, socket
names = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
def link(n):
    try:
        return os.readlink(f"/proc/self/ns/{n}")
    except OSError:
        return None
print(json.dumps({
    "ns": {n: link(n) for n in names},
    "hostname": socket.gethostname(),
    "nodename": os.uname().nodename,
}))
"""


async def test_ipc_uts_and_other_namespaces_are_fresh(box: Box, settings: Settings) -> None:
    seen = await _python_json(box, settings, _NS_PROBE)
    assert isinstance(seen, dict)
    assert seen["hostname"] == BOX_HOSTNAME == "sandlot"
    assert seen["nodename"] == "sandlot"
    assert socket.gethostname() != "sandlot"  # or this would prove nothing
    for name, inside in seen["ns"].items():
        if inside is None:  # gVisor's own kernel does not show every kind of namespace
            assert box.isolation == "gvisor", name
            continue
        outside = os.readlink(f"/proc/self/ns/{name}")
        assert inside != outside, f"the box shares the host's {name} namespace ({inside})"
    inode = os.stat("/proc/self/ns/ipc").st_ino
    assert seen["ns"]["ipc"] != f"ipc:[{inode}]"


# Host directories where installs and checkouts usually live; each gets a fresh directory of
# the test's own, so what is checked does not depend on what this machine happens to hold.
_HOST_PARENTS = ("/opt", "/srv", "/home", "/root", "/mnt", "/media")


@pytest.fixture
def host_dirs(tmp_path: Path) -> Iterator[list[str]]:
    """Directories the test makes on the host (and removes): a box must see none of them."""
    made = [tempfile.mkdtemp(prefix="sandlot-hidden-", dir=parent) for parent in _HOST_PARENTS]
    try:
        yield [*made, str(tmp_path)]
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def _host_paths_the_box_must_not_see(settings: Settings, host_dirs: list[str]) -> list[str]:
    return [
        "/home",
        "/root",
        "/etc/shadow",
        "/etc/sudoers",
        "/etc/ssh",
        "/sys",
        "/sys/fs/cgroup",
        "/var",
        str(settings.state_dir),
        str(settings.state_dir / "boxes"),
        str(settings.run_dir),
        str(Path(sandlot.__file__).parent),  # the code of the host side, wherever it is installed
        *_outside_system_dirs([sys.prefix, os.getcwd()]),  # the suite's virtualenv and working directory
        *host_dirs,
        "/run",
    ]


def _outside_system_dirs(paths: list[str]) -> list[str]:
    """Those of paths a box may not see: not under /usr (a system interpreter's prefix is there)."""
    return [p for p in paths if not (p in {"/", "/usr"} or p.startswith("/usr/"))]


async def test_mount_namespace_hides_the_host(box: Box, settings: Settings, host_dirs: list[str]) -> None:
    paths = _host_paths_the_box_must_not_see(settings, host_dirs)
    # Everything but the optional system files exists on the host (the test made what it needs),
    # so its absence inside means something.
    optional = {"/etc/shadow", "/etc/sudoers", "/etc/ssh"}
    assert [p for p in paths if p not in optional and not os.path.lexists(p)] == []
    assert os.path.lexists("/etc/shadow")  # the one secret file every Debian system has
    code = "import json, os, sys; print(json.dumps({p: os.path.lexists(p) for p in sys.argv[1:]}))"
    seen = await _python_json(box, settings, code, *paths)
    assert isinstance(seen, dict)
    # gVisor always mounts a /sys of its own kernel's making (nothing of the host's).
    expected = ["/sys", "/sys/fs/cgroup"] if box.isolation == "gvisor" else []
    assert sorted(p for p, exists in seen.items() if exists) == expected


# ------------------------------------------------------- filesystem

_WRITE_PROBE = """
import errno, json, os, sys
out = {}
for d in sys.argv[1:]:
    target = os.path.join(d, ".sandlot-write-probe")
    try:
        with open(target, "w") as f:
            f.write("x")
        os.unlink(target)
        out[d] = "ok"
    except OSError as exc:
        out[d] = errno.errorcode.get(exc.errno, str(exc.errno))
ro = {d: bool(os.statvfs(d).f_flag & os.ST_RDONLY) for d in sys.argv[1:]}
print(json.dumps({"write": out, "ro": ro}))
"""


async def test_system_directories_are_read_only_mounts(box: Box, settings: Settings) -> None:
    ro_dirs = ["/usr", "/usr/bin", "/usr/local", "/usr/lib", "/bin", "/lib", "/etc/ld.so.conf.d", "/etc/alternatives"]
    rw_dirs = ["/box", "/tmp", "/dev/shm"]
    seen = await _python_json(box, settings, _WRITE_PROBE, *ro_dirs, *rw_dirs)
    assert isinstance(seen, dict)
    # EROFS, not EACCES: the mount is read-only, not merely owned by someone else. (gVisor
    # checks ownership first and says EACCES; the read-only flag is asserted below either way.)
    if box.isolation == "gvisor":
        assert {d: seen["write"][d] in ("EACCES", "EROFS") for d in ro_dirs} == dict.fromkeys(ro_dirs, True)
        assert {d: seen["write"][d] for d in rw_dirs} == dict.fromkeys(rw_dirs, "ok")
    else:
        assert seen["write"] == {**dict.fromkeys(ro_dirs, "EROFS"), **dict.fromkeys(rw_dirs, "ok")}
    if box.isolation == "gvisor":  # gVisor's statvfs does not report the read-only flag dependably
        assert {d: seen["ro"][d] for d in rw_dirs} == dict.fromkeys(rw_dirs, False)
    else:
        assert seen["ro"] == {**dict.fromkeys(ro_dirs, True), **dict.fromkeys(rw_dirs, False)}
    # The synthetic /etc files are read-only binds too (opening them says EACCES first: root owns them).
    etc_files = ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ld.so.cache"]
    code = "import json, os, sys; print(json.dumps([bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in sys.argv[1:]]))"
    if box.isolation != "gvisor":  # see above: gVisor's statvfs flag is not dependable; writes are checked
        assert await _python_json(box, settings, code, *etc_files) == [True] * len(etc_files)


async def test_root_etc_and_dev_are_not_writable(box: Box, settings: Settings) -> None:
    seen = await _python_json(box, settings, _WRITE_PROBE, "/", "/etc", "/dev")
    assert isinstance(seen, dict)
    refused = "EACCES" if box.isolation == "gvisor" else "EROFS"  # see the test above
    assert seen["write"] == {"/": refused, "/etc": refused, "/dev": refused}


async def test_workdir_tmp_and_shm_are_size_capped(box: Box, settings: Settings) -> None:
    code = """
import json, os
sizes = {d: os.statvfs(d).f_blocks * os.statvfs(d).f_frsize for d in ("/box", "/tmp", "/dev/shm")}
print(json.dumps(sizes))
"""
    sizes = await _python_json(box, settings, code)
    assert isinstance(sizes, dict)
    assert 0 < sizes["/box"] <= settings.box_disk_bytes
    assert 0 < sizes["/tmp"] <= settings.tmp_size_bytes
    assert 0 < sizes["/dev/shm"] <= settings.tmp_size_bytes


_FILL_TMP = """
import errno, json, os, sys
chunk = b"\\0" * (1 << 20)
per_file = int(sys.argv[1])  # below RLIMIT_FSIZE, so only the filesystem can say no
written, n, error = 0, 0, None
while error is None and written < 4 * int(sys.argv[2]):
    try:
        with open(f"/tmp/fill{n}", "wb") as f:
            for _ in range(per_file // len(chunk)):
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    n += 1
print(json.dumps({"written": written, "error": error}))
"""


async def test_filling_tmp_past_its_cap_gets_enospc(box: Box, settings: Settings) -> None:
    per_file = min(8 << 20, settings.run_defaults.max_file_size_bytes // 2)
    assert settings.tmp_size_bytes + (16 << 20) < settings.run_defaults.memory_limit_bytes
    seen = await _python_json(box, settings, _FILL_TMP, str(per_file), str(settings.tmp_size_bytes))
    assert seen == {"written": pytest.approx(settings.tmp_size_bytes, abs=1 << 20), "error": "ENOSPC"}


# ----------------------------------------------------------- uid and caps


@pytest.mark.jail_only("under gVisor the box runs as the slot uid itself: tests/sandbox/test_gvisor.py")
async def test_box_runs_as_uid_1000_mapped_to_the_slot_uid(box: Box, settings: Settings) -> None:
    assert box.slot.uid != 0
    assert box.slot.uid == settings.box_uid_base + box.slot.index
    result = await run_in(box, ["/usr/bin/id", "-u"], settings.run_defaults)
    assert result.stdout == b"1000\n"
    result = await run_in(box, ["/usr/bin/cat", "/proc/self/uid_map", "/proc/self/gid_map"], settings.run_defaults)
    # Seen from inside, one single id is mapped. (bwrap --disable-userns nests two user
    # namespaces, so the outside id shown here is the intermediate namespace's, not the host's.)
    lines = [line.split() for line in result.stdout.decode().splitlines()]
    assert [(inner, count) for inner, _, count in lines] == [("1000", "1"), ("1000", "1")]


async def test_two_open_boxes_get_different_host_uids(sandbox: Sandbox, settings: Settings) -> None:
    with contextlib.ExitStack() as stack:
        first = sandbox.open_box()
        stack.callback(first.close)
        second = sandbox.open_box()
        stack.callback(second.close)
        assert first.slot.uid != second.slot.uid
        assert 0 not in (first.slot.uid, second.slot.uid)
        for b in (first, second):
            st = os.stat(b.workdir)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (b.slot.uid, b.slot.gid, 0o700)
        async with (
            _running(first, _SLEEP_200, settings.run_defaults),
            _running(second, _SLEEP_200, settings.run_defaults),
        ):
            in_first = _live_pids_with_uid(first.slot.uid)
            in_second = _live_pids_with_uid(second.slot.uid)
        assert in_first
        assert in_second
        assert not set(in_first) & set(in_second)
        assert {f["Name"] for f in in_first.values()} >= {"bash", "sleep"}
        assert {f["Name"] for f in in_second.values()} >= {"bash", "sleep"}


@pytest.mark.jail_only("under gVisor the program is no host process; the host sees gVisor's sentry and gofer")
async def test_host_sees_box_processes_as_the_slot_uid(box: Box, settings: Settings) -> None:
    uid = box.slot.uid
    before = _descendants(os.getpid())
    async with _running(box, _SLEEP_200, settings.run_defaults):
        owned = _live_pids_with_uid(uid)
        ours = _run_descendants(before)
        # Every process the run started is the box's uid, and nothing else runs as it.
        assert set(owned) == ours
        names = sorted(f["Name"] for f in owned.values())
        assert "bash" in names
        assert "sleep" in names
        assert any(n == "bwrap" for n in names)
        for fields in owned.values():
            assert fields["Uid"].split() == [str(uid)] * 4, fields
            assert fields["Gid"].split() == [str(box.slot.gid)] * 4, fields
            assert fields["Groups"] == ""
            assert int(fields["CapEff"], 16) == 0
        # From the host, the box's one mapped id is the slot uid.
        for pid, fields in owned.items():
            if fields["Name"] in ("bash", "sleep"):
                mapping = Path(f"/proc/{pid}/uid_map").read_text().split()
                assert mapping == [str(BOX_UID), str(uid), "1"]
                mapping = Path(f"/proc/{pid}/gid_map").read_text().split()
                assert mapping == [str(BOX_UID), str(box.slot.gid), "1"]


async def test_no_capabilities_and_no_new_privs(box: Box, settings: Settings) -> None:
    code = "print(open('/proc/self/status').read())"
    result = await _python(box, settings, code)
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in result.stdout.decode().splitlines())}
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if cap == "CapAmb" and box.isolation == "gvisor":
            assert cap not in fields  # gVisor's kernel has no ambient capabilities at all
            continue
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    if box.isolation == "gvisor":
        assert "NoNewPrivs" not in fields  # not reported by gVisor; set in the bundle (tests/sandbox/test_gvisor.py)
    else:
        assert fields["NoNewPrivs"] == "1"


# Exec each setuid binary with a stdin that never gets data; once it has really
# exec'd (its comm changed) read its credentials, whether it blocks or exits.
_SETUID_PROBE = """
import json, os, stat, sys, time
out = {}
for path in sys.argv[1:]:
    st = os.stat(path)
    assert st.st_mode & stat.S_ISUID, path
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(r, 0)
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:
            os.execv(path, [path, "root"])
        finally:
            os._exit(127)
    name = os.path.basename(path)[:15]
    deadline = time.monotonic() + 5
    while open(f"/proc/{pid}/comm").read().strip() != name:
        assert time.monotonic() < deadline, f"{path} never started"
        time.sleep(0.005)
    uids = [l for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")][0].split()[1:]
    out[path] = {"owner": st.st_uid, "uids": uids}
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
print(json.dumps(out))
"""


async def test_setuid_binaries_do_not_give_root(box: Box, settings: Settings) -> None:
    result = await run_in(box, ["/usr/bin/find", "/usr/bin", "-perm", "-4000", "-type", "f"], settings.run_defaults)
    setuid = sorted(result.stdout.decode().split())
    assert "/usr/bin/su" in setuid or "/usr/bin/mount" in setuid, setuid
    seen = await _python_json(box, settings, _SETUID_PROBE, *setuid)
    assert isinstance(seen, dict)
    assert sorted(seen) == setuid
    for path, creds in seen.items():
        # Owned by root on the host: in the box that is the overflow uid, and the bit is ignored.
        inner_uid = box.slot.uid if box.isolation == "gvisor" else BOX_UID
        assert creds["owner"] != inner_uid, path
        assert creds["uids"] == [str(inner_uid)] * 4, (path, creds)


# --------------------------------------------------------------- seccomp

_SYSCALL_PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY_SPEC_PROCESS_KEYRING (-2)
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define UFFD_USER_MODE_ONLY 1

static void report(const char *name, long rc, int err) {
    printf("%s %ld %d\n", name, rc, rc == -1 ? err : 0);
}

#define CHECK(name, call) do { errno = 0; long rc_ = (call); report(name, rc_, errno); } while (0)

/* A raw clone with only SIGCHLD behaves like fork; the child leaves at once. */
static void check_clone(const char *name, unsigned long flags) {
    fflush(stdout);
    errno = 0;
    long pid = syscall(SYS_clone, flags, 0, 0, 0, 0);
    int err = errno;
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    report(name, pid, err);
}

int main(void) {
    char status[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(status, sizeof status, f))
        if (!strncmp(status, "Seccomp:", 8)) printf("status %s", status);
    if (f) fclose(f);

    CHECK("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    CHECK("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    CHECK("unshare_mnt", syscall(SYS_unshare, CLONE_NEWNS));
    CHECK("unshare_net", syscall(SYS_unshare, CLONE_NEWNET));
    check_clone("clone_newnet", CLONE_NEWNET | SIGCHLD);
    check_clone("clone_newuser", CLONE_NEWUSER | SIGCHLD);
    check_clone("clone_newpid", CLONE_NEWPID | SIGCHLD);
    check_clone("clone_plain", SIGCHLD);
    CHECK("clone3", syscall(SYS_clone3, NULL, 0));

    int nsfd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    CHECK("setns", syscall(SYS_setns, nsfd, CLONE_NEWNET));
    CHECK("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    CHECK("umount2", syscall(SYS_umount2, "/tmp", 0));
    CHECK("chroot", syscall(SYS_chroot, "/tmp"));
    CHECK("mknod_chr", syscall(SYS_mknodat, AT_FDCWD, "/tmp/null", S_IFCHR | 0600, makedev(1, 3)));
    CHECK("mknod_blk", syscall(SYS_mknod, "/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
    CHECK("mknod_fifo", syscall(SYS_mknodat, AT_FDCWD, "/tmp/fifo", S_IFIFO | 0600, 0));

    union bpf_attr battr;
    memset(&battr, 0, sizeof battr);
    battr.map_type = BPF_MAP_TYPE_ARRAY;
    battr.key_size = 4;
    battr.value_size = 4;
    battr.max_entries = 1;
    CHECK("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &battr, sizeof battr));

    struct perf_event_attr pattr;
    memset(&pattr, 0, sizeof pattr);
    pattr.type = PERF_TYPE_SOFTWARE;
    pattr.size = sizeof pattr;
    pattr.config = PERF_COUNT_SW_TASK_CLOCK;
    pattr.exclude_kernel = 1;
    pattr.exclude_hv = 1;
    CHECK("perf_event_open", syscall(SYS_perf_event_open, &pattr, 0, -1, -1, 0));

    CHECK("add_key", syscall(SYS_add_key, "user", "sandlot", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    CHECK("keyctl", syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL));
    CHECK("request_key", syscall(SYS_request_key, "user", "sandlot", NULL, 0));
    CHECK("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));

    struct io_uring_params uparams;
    memset(&uparams, 0, sizeof uparams);
    CHECK("io_uring_setup", syscall(SYS_io_uring_setup, 1, &uparams));
    CHECK("io_uring_enter", syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0));
    CHECK("io_uring_register", syscall(SYS_io_uring_register, -1, 0, NULL, 0));

    CHECK("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    CHECK("init_module", syscall(SYS_init_module, NULL, 0, ""));
    CHECK("finit_module", syscall(SYS_finit_module, -1, "", 0));

    char secret[16] = "sandlot-secret", copy[16] = "";
    struct iovec local = {copy, sizeof copy}, remote = {secret, sizeof secret};
    CHECK("process_vm_readv", syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0));
    CHECK("process_vm_writev", syscall(SYS_process_vm_writev, getpid(), &remote, 1, &local, 1, 0));

    struct { unsigned int bytes; int type; unsigned char data[128]; } handle;
    memset(&handle, 0, sizeof handle);
    handle.bytes = sizeof handle.data;
    int mount_id = 0;
    CHECK("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/box", &handle, &mount_id, 0));
    CHECK("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &handle, O_RDONLY));
    return 0;
}
"""

# Each of these succeeds, or fails differently, without the filter (in this box,
# with these sysctls): ptrace(TRACEME), add_key, keyctl, perf_event_open (self,
# user only), userfaultfd (user-mode only), io_uring_setup, process_vm_*,
# name_to_handle_at. The rest are namespace/mount/kernel calls, denied outright.
_DENIED = (
    "ptrace",
    "unshare_user",
    "unshare_mnt",
    "unshare_net",
    "clone_newnet",
    "clone_newuser",
    "clone_newpid",
    "setns",
    "mount",
    "umount2",
    "chroot",
    "mknod_chr",
    "mknod_blk",
    "bpf",
    "perf_event_open",
    "add_key",
    "keyctl",
    "request_key",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "init_module",
    "finit_module",
    "process_vm_readv",
    "process_vm_writev",
    "name_to_handle_at",
    "open_by_handle_at",
)


async def test_seccomp_denies_dangerous_syscalls_with_eperm(engine: Engine, box: Box) -> None:
    run = await run_job(engine, box, "c", _SYSCALL_PROBE)
    assert run.result.status is Status.OK, run.result
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["status", "Seccomp:", "2"]
    seen = {name: (int(rc), int(err)) for name, rc, err in (line.split() for line in lines[1:])}
    expected = dict.fromkeys(_DENIED, (-1, errno.EPERM))
    expected["clone3"] = (-1, errno.ENOSYS)  # so libc falls back to clone, whose flags seccomp can read
    clone_plain = seen.pop("clone_plain")
    fifo = seen.pop("mknod_fifo")
    assert seen == expected
    assert clone_plain[0] > 0  # an ordinary fork is still fine
    assert fifo == (0, 0)  # and so is a FIFO


_FOREIGN_ABI = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    long ret = -1;
    printf("before\n");
    fflush(stdout);
    if (argc > 1 && !strcmp(argv[1], "x32")) {
        /* getpid through the x32 ABI: the syscall number with bit 30 set */
        __asm__ volatile("syscall" : "=a"(ret) : "a"(39L | 0x40000000L) : "rcx", "r11", "memory");
    } else {
        /* getpid through the 32-bit ABI */
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    }
    printf("survived %ld\n", ret);
    return 0;
}
"""


async def test_seccomp_kills_foreign_abi_syscalls(engine: Engine, box: Box, settings: Settings) -> None:
    run = await run_job(engine, box, "c", _FOREIGN_ABI, args=("int80",))
    if box.isolation == "gvisor":
        # gVisor has no 32-bit ABI (its filter never sees one): the call does nothing and fails.
        assert run.result.status is Status.OK, run.result
        before, survived = run.stdout.splitlines()
        assert before == "before"
        assert int(survived.split()[1]) < 0  # an error, never the pid getpid would have returned
    else:
        assert run.result.status is Status.SIGNALED, run.result
        assert run.result.signal == signal.SIGSYS
        assert int(signal.SIGSYS) == 31
        assert run.stdout == "before\n"
    # Same binary, the x32 ABI: killed as well.
    result = await run_in(box, ["./main", "x32"], settings.run_defaults)
    assert result.status is Status.SIGNALED, result
    assert result.signal == signal.SIGSYS
    assert result.stdout == b"before\n"


# --------------------------------------------------------------- cgroups


def _cgroup_dirs(sandbox: Sandbox, box: Box) -> list[Path]:
    cgroup = sandbox.driver.open_existing(box.slot.cgroup_name)
    assert cgroup is not None, "the box has no cgroup while running"
    return [p.parent for p in cgroup.procs_files]


@pytest.mark.jail_only("gVisor's host processes run as root; test_gvisor.py checks they are all in the cgroup")
async def test_every_process_of_a_run_is_in_the_box_cgroup(sandbox: Sandbox, box: Box, settings: Settings) -> None:
    limits = settings.run_defaults
    before = _descendants(os.getpid())
    async with _running(box, _SLEEP_200, limits):
        ours = _run_descendants(before)
        cgroup = sandbox.driver.open_existing(box.slot.cgroup_name)
        assert cgroup is not None
        members = set(cgroup.pids())
        dirs = _cgroup_dirs(sandbox, box)
        # launcher/bwrap, the box's init, bash and sleep at least
        assert len(ours) >= 4, ours
        assert ours <= members, (ours, members)
        assert members == set(_live_pids_with_uid(box.slot.uid))
        for d in dirs:
            assert ours <= {int(p) for p in (d / "cgroup.procs").read_text().split()}, d
        suffix = f"/{settings.cgroup_name}/{box.slot.cgroup_name}"
        for pid in ours:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            memberships = {
                ctrl: path for _, ctrls, path in (line.split(":", 2) for line in lines) for ctrl in ctrls.split(",")
            }
            if sandbox.driver.version == 1:
                for controller in ("memory", "pids", "cpuacct"):
                    assert memberships[controller] == suffix, (pid, lines)
            else:
                assert memberships[""].endswith(suffix), (pid, lines)

        if sandbox.driver.version == 1:
            memory = next(d for d in dirs if (d / "memory.limit_in_bytes").exists())
            limit = int((memory / "memory.limit_in_bytes").read_text())
            assert limit == limits.memory_limit_bytes
            memsw = memory / "memory.memsw.limit_in_bytes"
            assert memsw.exists(), "swap accounting is off on this host: swap cannot be ruled out"
            assert int(memsw.read_text()) == limit  # memory+swap == memory: no swap at all
            pids_dir = next(d for d in dirs if (d / "pids.max").exists())
            assert int((pids_dir / "pids.max").read_text()) == limits.max_processes
        else:
            (unified,) = dirs
            assert int((unified / "memory.max").read_text()) == limits.memory_limit_bytes
            assert (unified / "memory.swap.max").read_text().strip() == "0"


_DAEMON = """
( setsid sleep 100 < /dev/null > /dev/null 2>&1 & echo $! > /tmp/daemon.pid )
read -r daemon < /tmp/daemon.pid
until read -r comm < /proc/$daemon/comm && [ "$comm" = sleep ]; do :; done
"""


@pytest.mark.jail_only("a gVisor daemon is no host process; tests/sandbox/test_gvisor.py checks the whole sandbox ends")
async def test_nothing_survives_the_run(sandbox: Sandbox, box: Box, settings: Settings) -> None:
    async with _running(box, _DAEMON, settings.run_defaults) as task:
        dirs = _cgroup_dirs(sandbox, box)
        owned = _live_pids_with_uid(box.slot.uid)
        daemons = [pid for pid in owned if _cmdline(pid) == ["sleep", "100"]]
        assert len(daemons) == 1, {pid: _cmdline(pid) for pid in owned}
        (daemon,) = daemons
        # Detached: a session of its own, and not a child of the script.
        fields = owned[daemon]
        assert int(fields["PPid"]) not in {p for p in owned if _cmdline(p)[:1] == [BASH]}
        assert os.getsid(daemon) == daemon
    result = task.result()
    assert result.status is Status.OK, result
    assert sandbox.driver.open_existing(box.slot.cgroup_name) is None
    assert dirs
    assert not [d for d in dirs if d.exists()]
    assert _live_pids_with_uid(box.slot.uid) == {}
    fields_after = _status_fields(daemon)
    assert fields_after is None or fields_after["State"].startswith("Z") or fields_after["Uid"] != fields["Uid"]


# --------------------------------------------------------------- rlimits


async def test_rlimits_inside_the_box(box: Box, settings: Settings) -> None:
    script = "for o in f c n s; do echo $(ulimit -S$o) $(ulimit -H$o); done"
    result = await run_in(box, [BASH, "-c", script], settings.run_defaults)
    assert result.status is Status.OK, result
    fsize = str(settings.run_defaults.max_file_size_bytes // 1024)
    nofile = str(settings.open_files)
    stack = str(settings.stack_bytes // 1024)
    assert result.stdout.decode().splitlines() == [f"{fsize} {fsize}", "0 0", f"{nofile} {nofile}", f"{stack} {stack}"]


# ---------------------------------------------------------- env and fds


async def test_environment_is_clean(box: Box, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDLOT_SECRET_CANARY", "x")
    result = await run_in(box, ["/usr/bin/env"], settings.run_defaults)
    assert result.status is Status.OK, result
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert "SANDLOT_SECRET_CANARY" not in env
    assert {"PATH", "HOME", "LANG", "TMPDIR"} <= set(env) <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}
    assert env["PATH"] == BASE_PATH
    assert env["HOME"] == "/box"
    assert env["TMPDIR"] == "/tmp"


_ENV_AND_FDS = """
import json, os
fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        os.readlink(f"/proc/self/fd/{name}")  # the listing's own fd is closed by now
    except FileNotFoundError:
        continue
    fds.append(int(name))
print(json.dumps({"env": sorted(os.environ), "fds": sorted(fds)}))
"""


async def test_no_host_environment_or_fds_leak_in(
    engine: Engine, box: Box, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDLOT_SECRET_CANARY", "x")
    read_end, write_end = os.pipe()
    file_fd = os.open("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", os.O_RDONLY)
    try:
        for fd in (read_end, write_end, file_fd):
            os.set_inheritable(fd, True)
        run = await run_job(engine, box, "python", _ENV_AND_FDS)
    finally:
        for fd in (read_end, write_end, file_fd):
            os.close(fd)
    assert run.result.status is Status.OK, run.result
    seen = json.loads(run.stdout)
    assert seen["fds"] == [0, 1, 2]
    assert "SANDLOT_SECRET_CANARY" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}


# ---------------------------------------------------- host-side link safety

_PLANT = """
import errno, os, sys
canary, canary_dir = sys.argv[1], sys.argv[2]
os.symlink("/etc/shadow", "out.txt")
os.mkfifo("pipe")
os.symlink(canary, "main.py")
os.symlink("/", "d")
os.symlink(canary_dir, "e")
os.mkdir("sub")
os.symlink("/etc", "sub/link")
with open("real.txt", "w") as f:
    f.write("hello")
for target in ("/etc/passwd", "/usr/bin/su", "/usr/bin/python3"):
    try:
        os.link(target, "hard-" + os.path.basename(target))
        print(target, "linked")
    except OSError as exc:
        print(target, errno.errorcode.get(exc.errno, str(exc.errno)))
"""


async def test_host_file_ops_never_follow_what_the_box_planted(box: Box, settings: Settings, tmp_path: Path) -> None:
    canary = tmp_path / "passwd-sandlot-canary"
    canary.write_bytes(b"canary\n")
    canary.chmod(0o644)
    canary_before = canary.stat()
    shadow_before = Path("/etc/shadow").read_bytes()
    stray = f"sandlot-canary-{uuid.uuid4().hex}"
    assert not Path("/", stray).exists()

    result = await _python(box, settings, _PLANT, str(canary), str(tmp_path))
    for line in result.stdout.decode().splitlines():
        target, outcome = line.split()
        assert outcome in ("EXDEV", "EPERM"), (target, outcome)

    assert box.read_file("real.txt", 1024) == b"hello"  # so the refusals below mean something
    for planted in ("out.txt", "pipe", "d/etc/shadow", "sub/link/shadow", "e/passwd-sandlot-canary", "main.py"):
        with pytest.raises(RejectedError):
            box.read_file(planted, 1 << 20)

    box.write_file("main.py", b"x")
    replaced = box.workdir / "main.py"
    assert stat.S_ISREG(os.lstat(replaced).st_mode)
    assert replaced.read_bytes() == b"x"
    assert canary.read_bytes() == b"canary\n"

    with pytest.raises(RejectedError):
        box.write_file(f"d/{stray}", b"x")
    with pytest.raises(RejectedError):
        box.write_file(f"e/{stray}", b"x")
    assert not Path("/", stray).exists()
    assert not (tmp_path / stray).exists()

    assert [f.path for f in box.list_files()] == ["main.py", "real.txt"]

    box.close()
    assert canary.read_bytes() == b"canary\n"
    after = canary.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime_ns) == (
        canary_before.st_mode,
        canary_before.st_uid,
        canary_before.st_mtime_ns,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [canary.name]
    assert Path("/etc/shadow").read_bytes() == shadow_before
    assert not Path("/", stray).exists()
