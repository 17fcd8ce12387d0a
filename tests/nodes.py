"""Real processes for the tests that need them: a ``redis-server``, and sandlot servers, API and worker nodes.

A ``Node`` is one ``sandlot serve`` or ``sandlot worker`` child (its log a
file), waited for until ready and stopped by its PID with a drain.
``RedisServer`` runs one redis-server on a free loopback port (with or without
an append-only file), started and stopped by its PID. A ``NodeLayout`` gives
each node number of a test file its own state and run directories, cgroup name
and box uid range, so no two pools ever share a slot and each node's leftovers
can be told apart; it also sweeps and lists those leftovers. A ``Cluster``
starts ``sandlot serve --redis --no-worker`` and ``sandlot worker --redis``
nodes of one layout against one Redis, and stops every process it ever started.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sandlot.config import Settings, load_settings
from sandlot.sandbox import Sandbox
from sandlot.sandbox.hostfs import mounts_below
from tests.root import require_root

SANDLOT = Path(sys.executable).with_name("sandlot")  # the console script of this venv
STARTUP_TIMEOUT_S = 90.0  # the first start on a fresh machine also builds the helper and the Go cache, under load
READY_POLL_S = 0.1
REDIS_TIMEOUT_S = 10.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
GRACE_S = 15.0  # a node's listeners' grace after its drain, before SIGKILL


# Ports for servers the tests start in other processes. A port merely found free (bind 0, close)
# could be taken before the child binds it: by the kernel for anyone's bind(0) or outgoing
# connection, or by another test run on this machine. So they come from below the kernel's
# ephemeral range (it never hands those out by itself), each reserved with an flock held until
# this process ends: no two test processes are given the same port, however many run at once.
_PORT_RANGE = range(20_000, 30_000)
_PORT_LOCK_DIR = Path("/run/sandlot-test-ports")
_port_locks: list[int] = []  # the flocked files' fds: the reservations last as long as this process


@contextlib.contextmanager
def loopback_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[http.server.ThreadingHTTPServer]:
    """An HTTP server on 127.0.0.1 (a port of its own) answering with ``handler`` in a thread; shut down,
    closed and its thread joined after. Its URL: ``http://127.0.0.1:{server.server_address[1]}``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10.0)


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports, free now and reserved for this process (see _PORT_RANGE)."""
    require_root("its server's port is reserved in the suite's lock directory under /run")
    _PORT_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    start = random.randrange(len(_PORT_RANGE))  # spread: concurrent callers rarely meet
    ports: list[int] = []
    for i in range(len(_PORT_RANGE)):
        port = _PORT_RANGE[(start + i) % len(_PORT_RANGE)]
        fd = os.open(_PORT_LOCK_DIR / str(port), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # another test process has it
        if not _bindable(port):  # something outside the tests listens there
            os.close(fd)
            continue
        _port_locks.append(fd)
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free ports left in {_PORT_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serve_args(http_port: int, grpc_port: int, pool_size: int) -> list[str]:
    """``sandlot serve``'s arguments for a test server: jail boxes only (test_gvisor.py covers gVisor's)."""
    ports = ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    return ["serve", *ports, "--pool-size", str(pool_size), "--gvisor-pool-size", "0"]


def worker_args(redis_url: str, pool_size: int, gvisor_pool_size: int = 0) -> list[str]:
    """``sandlot worker``'s arguments for a test worker."""
    pools = ["--pool-size", str(pool_size), "--gvisor-pool-size", str(gvisor_pool_size)]
    return ["worker", "--redis", redis_url, *pools]


def processes_of(uids: range) -> dict[int, str]:
    """Live processes with any uid in ``uids``: pid -> name. Zombies are dead, only unreaped."""
    found: dict[int, str] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # exited meanwhile
            continue
        if any(int(uid) in uids for uid in fields["Uid"].split()) and not fields["State"].strip().startswith("Z"):
            found[int(status.parent.name)] = fields["Name"].strip()
    return found


def sweep(settings: Settings) -> None:
    """Clean what an earlier failure left (sandlot's own sweep: cgroup kill, unmount), then the empty group."""
    require_root()
    sandbox = Sandbox(settings)
    sandbox.sweep_stale()
    sandbox.driver.remove_group()


class RedisServer:
    """A redis-server on a loopback port, its files in ``workdir``; started and stopped by PID.

    ``append_only``: an append-only file fsynced at every write, so a restart on the
    same port and directory keeps everything; otherwise no persistence at all.
    """

    def __init__(self, workdir: Path, *, append_only: bool, extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.append_only = append_only
        self.extra_args = tuple(extra_args)  # e.g. --requirepass, --unixsocket
        (self.port,) = free_ports(1)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if self.append_only else ("--appendonly", "no")
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence),
                *("--dir", str(self.workdir), "--logfile", "", "--daemonize", "no"),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks on the server's own log, no polling; ends at its exit
            if "Ready to accept connections" in line:
                return
        raise RuntimeError(f"redis-server exited with {self.proc.wait(REDIS_TIMEOUT_S)}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(REDIS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None


@contextlib.contextmanager
def running_redis(workdir: Path, *, append_only: bool, extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started RedisServer in workdir (made if missing), stopped on the way out."""
    workdir.mkdir(exist_ok=True)
    server = RedisServer(workdir, append_only=append_only, extra_args=extra_args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class NodeLayout:
    """Where node n of one test file keeps its boxes: ``/var/lib/sandlot-<name>-<n>``, its own uids, and so on."""

    name: str  # "dist", "fault": one per test file, apart from every other file's
    uid_base: int
    nodes: range  # the node numbers a test may use
    max_boxes: int
    drain_deadline_s: float
    settings: Mapping[str, object]  # SANDLOT_* settings of every node (claim_idle_ms, ...)
    uids_per_node: int = 1000

    def env(self, n: int, **settings: object) -> dict[str, str]:
        """This process's environment minus any SANDLOT_*, plus node n's own locations and the given settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
        own = {
            "SANDLOT_STATE_DIR": f"/var/lib/sandlot-{self.name}-{n}",
            "SANDLOT_RUN_DIR": f"/run/sandlot-{self.name}-{n}",
            "SANDLOT_CGROUP_NAME": f"sandlot-{self.name}-{n}",
            "SANDLOT_BOX_UID_BASE": str(self.uid_base + n * self.uids_per_node),
            "SANDLOT_MAX_BOXES": str(self.max_boxes),
            "SANDLOT_DRAIN_DEADLINE_S": str(self.drain_deadline_s),
        }
        given = {**self.settings, **settings}
        return env | own | {"SANDLOT_" + name.upper(): str(value) for name, value in given.items()}

    def node_settings(self, n: int) -> Settings:
        return load_settings(environ=self.env(n))

    def uids(self, n: int) -> range:
        first = self.uid_base + n * self.uids_per_node
        return range(first, first + self.max_boxes)

    def sweep(self) -> None:
        """Release every node's stale boxes (a killed node could not) and remove their cgroup groups."""
        for n in self.nodes:
            sweep(self.node_settings(n))

    @contextlib.contextmanager
    def swept(self) -> Iterator[None]:
        """Sweep before (what an earlier failure left) and after (what this test left)."""
        self.sweep()
        try:
            yield
        finally:
            self.sweep()

    def leftovers(self) -> list[Path]:
        """Box cgroups (v1 controllers or v2) and workdir mounts of every node."""
        found: list[Path] = []
        for n in self.nodes:
            settings = self.node_settings(n)
            group = settings.cgroup_name
            found += [*CGROUP_ROOT.glob(f"{group}/box-*"), *CGROUP_ROOT.glob(f"*/{group}/box-*")]
            found += mounts_below(settings.state_dir / "boxes")
        return found


@dataclass
class Node:
    """One ``sandlot serve`` or ``sandlot worker`` child; its output goes to a file (no pipe to drain)."""

    n: int
    proc: subprocess.Popen[bytes]
    log: Path
    stop_timeout_s: float  # SIGTERM to SIGKILL: its drain deadline and its listeners' grace, with a margin
    http_port: int = 0  # 0: a worker, no listener
    uids: range = range(0)  # its boxes' uids
    grpc_port: int = 0  # 0: a worker, no listener

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        """An API node until /readyz says it accepts work (200, or 503 ``no_worker``: up, but no live worker
        yet), a worker until it logs that it runs (its presence is said by then); fails if it exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.http_port:
                    with contextlib.suppress(httpx.TransportError):
                        ready = client.get(self.url + "/readyz")
                        if ready.status_code == 200 or ready.json().get("status") == "no_worker":
                            return
                elif "sandlot worker running" in self.output():
                    return
                with contextlib.suppress(subprocess.TimeoutExpired):  # waiting on the process, not sleeping
                    code = self.proc.wait(READY_POLL_S)
                    pytest.fail(f"node {self.n} exited with {code} before it was ready:\n{self.output()}")
        pytest.fail(f"node {self.n} was not ready within {STARTUP_TIMEOUT_S:g} s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM (a drain), SIGKILL if it overruns; always reaped. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.wait()

    def box_processes(self) -> dict[int, str]:
        """Live processes running as one of this node's box uids: pid -> name."""
        return processes_of(self.uids)


class Cluster:
    """The nodes of one test on one Redis; every process ever started is stopped in ``close``, whatever happened."""

    def __init__(self, redis: RedisServer, log_dir: Path, layout: NodeLayout) -> None:
        self.redis = redis
        self.log_dir = log_dir
        self.layout = layout
        self.nodes: list[Node] = []

    @classmethod
    @contextlib.contextmanager
    def running(cls, redis: RedisServer, log_dir: Path, layout: NodeLayout) -> Iterator[Cluster]:
        """A cluster whose nodes are all stopped on the way out."""
        cluster = cls(redis, log_dir, layout)
        try:
            yield cluster
        finally:
            cluster.close()

    def api(self, n: int, **settings: object) -> Node:
        http_port, grpc_port = free_ports(2)
        command = serve_args(http_port, grpc_port, 1)
        node = self._launch(n, [*command, "--redis", self.redis.url, "--no-worker"], http_port, settings)
        node.grpc_port = grpc_port
        return node

    def worker(self, n: int, pool_size: int = 1, gvisor_pool_size: int = 0, **settings: object) -> Node:
        return self._launch(n, worker_args(self.redis.url, pool_size, gvisor_pool_size), 0, settings)

    def _launch(self, n: int, args: list[str], http_port: int, settings: Mapping[str, object]) -> Node:
        log = self.log_dir / f"node-{n}-{len(self.nodes)}.log"  # a fresh log per start: readiness reads it
        with log.open("wb") as out:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(
                [str(SANDLOT), *args],
                env=self.layout.env(n, **settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        node = Node(n, proc, log, self.layout.drain_deadline_s + GRACE_S, http_port, self.layout.uids(n))
        self.nodes.append(node)
        return node

    def start(self, *nodes: Node) -> None:
        for node in nodes:  # they start together; each wait is bounded
            node.wait_ready()

    def close(self) -> None:
        """SIGTERM every node still running first (their drains overlap), then wait for each."""
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
