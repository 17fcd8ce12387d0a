"""``sandlot serve`` as a real process: SIGTERM drains, a killed server's boxes are reclaimed, a busy port is refused.

These tests run the console script rather than the app in-process, so signals,
exit codes and what the process leaves on the host (box cgroups, workdir mounts,
jail processes) are what a deployment sees. They use their own state and run
directories, cgroup and uid range (``PROC_*``), apart from the in-process tests'
(conftest) and from a real install. Every server is stopped by its PID in a
``finally`` (SIGTERM, then SIGKILL if the drain overruns), and the host is swept
before and after each test so one failure does not cascade.

``running_server`` and the host inspections are shared with
``test_metrics_prometheus``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandlot.config import Settings, load_settings
from sandlot.sandbox.hostfs import mounts_below
from tests.api.http.test_http import LONG_LIMITS, SLEEPER, parse_sse
from tests.nodes import SANDLOT, STARTUP_TIMEOUT_S, Node, free_ports, processes_of, serve_args
from tests.nodes import sweep as sweep_boxes

PROC_ENV = {
    "SANDLOT_STATE_DIR": "/var/lib/sandlot-proc-test",
    "SANDLOT_RUN_DIR": "/run/sandlot-proc-test",
    "SANDLOT_CGROUP_NAME": "sandlot-proc-test",
    "SANDLOT_BOX_UID_BASE": "920000000",  # apart from conftest's 910000000 and a real install's
}
PROC_SETTINGS: Settings = load_settings(environ=PROC_ENV)
BOX_UIDS = range(PROC_SETTINGS.box_uid_base, PROC_SETTINGS.box_uid_base + PROC_SETTINGS.max_boxes)
CGROUP_ROOT = Path("/sys/fs/cgroup")

LISTENER_GRACE_S = 5.0  # server.py's _LISTENER_GRACE_S: in-flight responses after the drain
STOP_MARGIN_S = 10.0  # on top of the drain deadline and the listener grace, before SIGKILL

SLEEP_3S = "import time\nprint('started', flush=True)\ntime.sleep(3)\nprint('finished', flush=True)\n"
HELLO = "print('hello')\n"
MARKER = "left-by-the-killed-server"


# ------------------------------------------------------------- the process


def serve_command(http_port: int, grpc_port: int, pool_size: int) -> list[str]:
    return [str(SANDLOT), *serve_args(http_port, grpc_port, pool_size)]


def serve_env(**settings: object) -> dict[str, str]:
    """This process's environment without any SANDLOT_* of its own, plus the test locations and settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    return env | PROC_ENV | {"SANDLOT_" + name.upper(): str(value) for name, value in settings.items()}


@contextlib.contextmanager
def running_server(log_dir: Path, *, pool_size: int = 2, drain_deadline_s: float = 5.0) -> Iterator[Node]:
    """A ready ``sandlot serve`` on free loopback ports; stopped (and reaped) on the way out, however it ends."""
    http_port, grpc_port = free_ports(2)
    log = log_dir / f"serve-{http_port}.log"
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(
            serve_command(http_port, grpc_port, pool_size),
            env=serve_env(drain_deadline_s=drain_deadline_s),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    server = Node(0, proc, log, drain_deadline_s + LISTENER_GRACE_S + STOP_MARGIN_S, http_port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------- host inspection


def box_cgroups() -> dict[Path, int]:
    """Every box cgroup directory of the test group, in any v1 controller or in v2, with its inode (never reused)."""
    group = PROC_SETTINGS.cgroup_name
    found: dict[Path, int] = {}
    for path in (*CGROUP_ROOT.glob(f"{group}/box-*"), *CGROUP_ROOT.glob(f"*/{group}/box-*")):
        with contextlib.suppress(FileNotFoundError):
            found[path] = path.stat().st_ino
    return found


def box_mounts() -> list[Path]:
    """Mounts under the boxes directory (workdir tmpfs and the overlays inside them)."""
    return mounts_below(PROC_SETTINGS.state_dir / "boxes")


def box_processes() -> dict[int, str]:
    """Live processes with any uid in the test's box uid range: pid -> name."""
    return processes_of(BOX_UIDS)


def assert_nothing_left() -> None:
    assert box_cgroups() == {}
    assert box_mounts() == []
    assert box_processes() == {}


def sweep() -> None:
    """Clean what an earlier failure left (sandlot's own sweep: cgroup kill, unmount), then the empty group."""
    sweep_boxes(PROC_SETTINGS)


@pytest.fixture(autouse=True)
def _clean_host() -> Iterator[None]:
    sweep()
    try:
        yield
    finally:
        sweep()


# ------------------------------------------------------------------ client


def execution(code: str, limits: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The JSON body of a Python execution request."""
    return {"language": "python", "code": code} | ({"limits": dict(limits)} if limits else {})


def submit(client: httpx.Client, code: str, limits: Mapping[str, float] | None = None) -> str:
    response = client.post("/api/v1/execute", json=execution(code, limits))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert isinstance(task_id, str)
    return task_id


def sse_frames(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """SSE frames as they complete (a blank line ends one)."""
    block: list[str] = []
    for line in lines:
        if line:
            block.append(line)
            continue
        yield from parse_sse("\n".join(block))
        block = []


def read_until_output(frames: Iterator[dict[str, Any]], expected: str) -> None:
    """Consume frames until the run's stdout adds up to expected (a line may come in several chunks)."""
    text = ""
    for frame in frames:
        assert frame["event"] != "exit", frame
        if frame["event"] == "output" and frame["data"]["stream"] == "stdout":
            text += frame["data"]["data"]
            if len(text) >= len(expected):
                break
    assert text == expected


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll an outside process's state (there is no event to wait on), bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.05)


def exited(pidfd: int) -> bool:
    """A pidfd is readable once its process has exited (pid reuse cannot fool it)."""
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


# ------------------------------------------------------------------- tests


def test_sigterm_lets_the_running_execution_finish_then_releases_every_box(tmp_path: Path) -> None:
    drain_deadline_s = 15.0  # far above the 3 s run: finishing, not being killed at the deadline, is the point
    with (
        running_server(tmp_path, drain_deadline_s=drain_deadline_s) as server,
        httpx.Client(base_url=server.url, timeout=10.0) as client,
    ):
        task_id = submit(client, SLEEP_3S)
        # Subscribed before the SIGTERM: the exit event reaches us before the listener closes.
        with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            frames = sse_frames(response.iter_lines())
            read_until_output(frames, "started\n")
            assert "python3" in box_processes().values()

            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_until(lambda: client.get("/readyz").status_code == 503, 3.0, "/readyz answers 503 while draining")
            refused = client.post("/api/v1/execute", json=execution(HELLO))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            rest = list(frames)

        assert rest, "the stream ended without an exit event"
        assert rest[-1]["event"] == "exit"
        result = rest[-1]["data"]
        assert (result["status"], result["stdout"]) == ("ok", "started\nfinished\n"), result
        assert server.proc.wait(drain_deadline_s) == 0, server.output()
        assert time.monotonic() - signalled < drain_deadline_s
    assert "sandlot stopped; boxes released" in server.output()
    assert_nothing_left()


def test_a_restarted_server_reclaims_what_a_killed_one_left(tmp_path: Path) -> None:
    jail_pidfds: list[int] = []
    try:
        with (
            running_server(tmp_path, pool_size=2) as first,
            httpx.Client(base_url=first.url, timeout=10.0) as client,
        ):
            task_id = submit(client, SLEEPER, LONG_LIMITS)
            with client.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
                read_until_output(sse_frames(response.iter_lines()), "started\n")
            jail = box_processes()
            assert "python3" in jail.values(), jail
            for pid in jail:
                with contextlib.suppress(ProcessLookupError):
                    jail_pidfds.append(os.pidfd_open(pid))
            first.proc.kill()
            assert first.proc.wait() == -signal.SIGKILL

        # No drain ran: both boxes' cgroups and workdir mounts are still there.
        old_cgroups = box_cgroups()
        assert {path.name for path in old_cgroups} == {"box-0", "box-1"}
        workdirs = [PROC_SETTINGS.state_dir / "boxes" / n for n in ("0", "1")]
        assert set(workdirs) <= set(box_mounts())
        for workdir in workdirs:  # slot 0 is reused under the same path: a marker tells old from new
            (workdir / MARKER).write_text("this tmpfs belongs to the killed server\n")

        with (
            running_server(tmp_path, pool_size=1) as second,
            httpx.Client(base_url=second.url, timeout=10.0) as client,
        ):
            new_cgroups = box_cgroups()
            assert {path.name for path in new_cgroups} == {"box-0"}  # the new pool's one box, nothing of slot 1
            assert not set(new_cgroups.values()) & set(old_cgroups.values())  # recreated, not inherited
            assert {path.relative_to(PROC_SETTINGS.state_dir / "boxes").parts[0] for path in box_mounts()} == {"0"}
            assert not any((workdir / MARKER).exists() for workdir in workdirs)
            assert all(exited(pidfd) for pidfd in jail_pidfds)
            assert "python3" not in box_processes().values()  # only the new pool's idle jail

            response = client.post("/api/v1/run", json=execution(HELLO))
            assert response.status_code == 200, response.text
            assert (response.json()["status"], response.json()["stdout"]) == ("ok", "hello\n")
            assert second.stop() == 0, second.output()
        assert_nothing_left()
    finally:
        for pidfd in jail_pidfds:
            os.close(pidfd)


@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_busy_port_is_refused_with_exit_2_and_one_line(door: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        (other,) = free_ports(1)
        http_port, grpc_port = (taken, other) if door == "http" else (other, taken)
        done = subprocess.run(
            serve_command(http_port, grpc_port, 2),
            env=serve_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
        )
    lines = done.stderr.splitlines()
    assert (done.returncode, len(lines)) == (2, 1), done.stderr
    assert lines[0].startswith("sandlot: "), lines[0]
    assert "in use" in lines[0], lines[0]
    assert_nothing_left()
