"""What a new user sees first: a fresh state dir, a first Go run, ``sandlot serve`` coming up, a bad state dir.

Each test runs the installed console script as a real process on a state dir
of its own (fresh: no helper, no Go cache yet), with its own run dir, cgroup
name and box uids, so the first-use work really happens here and nothing of
another test's state is shared. Waiting is on the process's own output lines
(a blocking read), never on a clock.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandlot.cli_output import FirstUseNotice
from sandlot.config import Settings, load_settings
from sandlot.sandbox.hostfs import mounts_below
from tests.cli.test_cli_stdin import _read_until
from tests.nodes import SANDLOT, free_ports, serve_args
from tests.nodes import sweep as sweep_boxes

FRESH_ENV = {
    "SANDLOT_STATE_DIR": "/var/lib/sandlot-startup-test",
    "SANDLOT_RUN_DIR": "/run/sandlot-startup-test",
    "SANDLOT_CGROUP_NAME": "sandlot-startup-test",
    "SANDLOT_BOX_UID_BASE": "950000000",  # apart from every other test layout's uids
}
FRESH_SETTINGS: Settings = load_settings(environ=FRESH_ENV)
_TIMEOUT_S = 240  # a first Go cache warm-up on a loaded 2-core machine, with a wide margin
GO_HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello from go")\n}\n'
WARMING = "preparing the Go build cache (first use on this host only; usually about 20 s)"


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    return {**env, **FRESH_ENV, **overrides}


def _wipe() -> None:
    if FRESH_SETTINGS.state_dir.exists():
        sweep_boxes(FRESH_SETTINGS)  # sandlot's own release of what a failed run left: cgroups, mounts
    assert mounts_below(FRESH_SETTINGS.state_dir) == []
    shutil.rmtree(FRESH_SETTINGS.state_dir, ignore_errors=True)


@pytest.fixture
def fresh_state() -> Iterator[Path]:
    """A state dir that does not exist yet, as on a machine where sandlot never ran."""
    _wipe()
    yield FRESH_SETTINGS.state_dir
    _wipe()


@pytest.mark.root
@pytest.mark.timeout(_TIMEOUT_S)
def test_the_first_go_run_says_what_takes_long(fresh_state: Path, tmp_path: Path) -> None:
    prog = tmp_path / "hello.go"
    prog.write_text(GO_HELLO)
    command = [str(SANDLOT), "run", str(prog)]
    first = subprocess.run(command, capture_output=True, env=_env(), timeout=_TIMEOUT_S, check=False)
    assert (first.returncode, first.stdout) == (0, b"hello from go\n"), first.stderr
    assert first.stderr.decode() == f"sandlot: {WARMING}...\n"
    again = subprocess.run(command, capture_output=True, env=_env(), timeout=_TIMEOUT_S, check=False)
    assert (again.returncode, again.stdout, again.stderr) == (0, b"hello from go\n", b"")  # warm: silent


def test_the_first_use_notice_counts_the_seconds_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8") as terminal:
            notice = FirstUseNotice(terminal, tick_s=0.01)
            notice("warming a cache")
            seen = _read_until(master, b"... 0 s")  # the ticker's first count, as it arrives
            notice.done()
            seen += _read_until(master, b"\n")
    finally:
        os.close(master)
    assert seen.startswith(b"sandlot: warming a cache...\rsandlot: warming a cache... 0 s"), seen
    assert re.search(rb"\rsandlot: warming a cache\.\.\. done in \d+ s\r?\n$", seen), seen


def test_the_first_use_notice_is_one_plain_line_elsewhere() -> None:
    log = io.StringIO()
    notice = FirstUseNotice(log, tick_s=0.01)
    notice("warming a cache")
    notice.done()
    assert log.getvalue() == "sandlot: warming a cache...\n"


@pytest.mark.timeout(_TIMEOUT_S)
def test_serve_on_a_fresh_state_dir_says_what_it_does_and_where_it_listens(fresh_state: Path) -> None:
    http_port, grpc_port = free_ports(2)
    command = [str(SANDLOT), *serve_args(http_port, grpc_port, pool_size=1)]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_env()) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        try:
            for raw in proc.stderr:  # blocks until the server says it is ready (or exits)
                lines.append(raw.decode().rstrip("\n"))
                if "sandlot ready with" in lines[-1]:
                    break
            base = f"http://127.0.0.1:{http_port}"
            with httpx.Client(timeout=30) as client:
                ready = client.get(f"{base}/readyz").status_code
                playground = client.get(f"{base}/").status_code
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=_TIMEOUT_S)
    text = "\n".join(lines)
    assert lines and "sandlot ready with 1 box (" in lines[-1], text
    assert f"{base}/readyz answers 200" in lines[-1]
    assert (ready, playground) == (200, 200)
    messages = [line.split(" ", 3)[-1] for line in lines]  # without the log's date, time and logger name
    assert f"{WARMING}..." in messages, text
    assert messages.index(f"{WARMING}...") < messages.index(f"sandlot playground  {base}/")
    assert f"sandlot API docs    {base}/docs" in messages, text
    assert f"sandlot gRPC        127.0.0.1:{grpc_port}" in messages, text


@pytest.fixture
def blocked_parent() -> Iterator[Path]:
    """A ``mktemp -d``: mode 0700 (as a home directory is), in a directory everyone may pass through."""
    home = Path(tempfile.mkdtemp(prefix="sandlot-home-", dir="/var/tmp"))
    assert home.stat().st_mode & 0o777 == 0o700
    yield home
    if (home / "state").exists():  # a server that was not refused made boxes there: release them first
        home.chmod(0o755)
        sweep_boxes(load_settings(environ={**FRESH_ENV, "SANDLOT_STATE_DIR": str(home / "state")}))
    shutil.rmtree(home)


@pytest.mark.root
@pytest.mark.parametrize(
    "args",
    [("serve", "--http-port", "0", "--grpc-port", "0"), ("worker", "--redis", "redis://127.0.0.1:1"), ("run",)],
    ids=["serve", "worker", "run"],
)
def test_a_state_dir_box_users_cannot_reach_is_refused_at_start(
    blocked_parent: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    home = blocked_parent
    prog = tmp_path / "ok.py"
    prog.write_text("print('never runs')\n")
    state = home / "state"
    command = [str(SANDLOT), *args, *([str(prog)] if args == ("run",) else [])]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(SANDLOT_STATE_DIR=str(state))
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it started instead of refusing: let it drain its boxes
            stdout, stderr = proc.communicate()
    lines = stderr.decode().splitlines()
    assert (proc.returncode, len(lines), stdout) == (2, 1, b""), stderr
    assert f"{home} is mode 0700" in lines[0]
    assert f"chmod o+x {home}" in lines[0]
    assert not state.exists()  # refused before anything was made there
