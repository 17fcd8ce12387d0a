"""``sandlot run``'s warm path: a running ``sandlot serve`` on this host runs the job (cli_warm.py).

A real ``sandlot serve`` child, with its own state dir, run dir (where its
``serve.sock`` is), cgroup and box uids, apart from every other test layout. The
warm path is proven taken by the server's own count of finished executions
(``sandlot_executions_total``), never by timing; the local path (``--local``)
gives the reference bytes and exit codes. Tests that need no live server (a
fake one on the socket, a killed one) come first in this file: the module's
server is started at its first use and owns the run dir from then on.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandlot import cli_warm
from sandlot.config import load_settings
from tests.nodes import SANDLOT, Node, free_ports, serve_args
from tests.nodes import sweep as sweep_boxes

pytestmark = pytest.mark.root

WARM_ENV = {
    "SANDLOT_STATE_DIR": "/var/lib/sandlot-warm-test",
    "SANDLOT_RUN_DIR": "/run/sandlot-warm-test",
    "SANDLOT_CGROUP_NAME": "sandlot-warm-test",
    "SANDLOT_BOX_UID_BASE": "930000000",  # apart from every other test layout's uids
}
SETTINGS = load_settings(environ=WARM_ENV)
SOCKET = SETTINGS.run_dir / cli_warm.SOCKET_NAME
STOP_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0

HELLO = "print('hello')\n"
NOT_UTF8 = (
    "import sys\nsys.stdout.buffer.write(b'\\xff\\xfeout\\n')\nsys.stderr.buffer.write(b'\\xc3(err\\n')\nsys.exit(3)\n"
)
ECHO_STDIN = "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n"
KILLED = "import os, signal\nprint('before', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
BAD_C = "int main(void) { return undeclared; }\n"
SPIN = "while True:\n    pass\n"
ARGV = "import sys\nprint(sys.argv[1:])\n"
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    return env | WARM_ENV | extra


def _sandlot(*args: str | Path, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run the CLI as a judge does, with stdin from a file (a pipe keeps the local path: see below)."""
    with tempfile.TemporaryFile() as given:
        given.write(stdin)
        given.seek(0)
        proc = subprocess.run(
            [str(SANDLOT), *(str(a) for a in args)],
            stdin=given,
            capture_output=True,
            env=env or _env(),
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    return proc.returncode, proc.stdout, proc.stderr


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def _server(log_dir: Path, **settings: str) -> Iterator[Node]:
    """A ready ``sandlot serve`` with the warm layout; stopped and reaped on the way out."""
    http_port, grpc_port = free_ports(2)
    log = log_dir / f"serve-{http_port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(SANDLOT), *serve_args(http_port, grpc_port, 2)],
            env=_env(**settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    node = Node(0, proc, log, STOP_TIMEOUT_S, http_port)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def _executions(node: Node) -> dict[tuple[str, str], float]:
    """The server's count of finished executions, by (language, status)."""
    text = httpx.get(node.url + "/metrics", timeout=10).text
    found = re.findall(r'^sandlot_executions_total\{language="([^"]*)",status="([^"]*)"\} (\S+)$', text, re.M)
    return {(language, status): float(value) for language, status, value in found}


def _metric(node: Node, name: str) -> float:
    text = httpx.get(node.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def _wait_for(condition: Any, what: str) -> None:
    """Poll a server-side condition until it holds (a state change, not a sleep window)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {RUN_TIMEOUT_S:g} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module", autouse=True)
def _clean_host() -> Iterator[None]:
    sweep_boxes(SETTINGS)
    SOCKET.unlink(missing_ok=True)
    try:
        yield
    finally:
        sweep_boxes(SETTINGS)


# ------------------------------------------------ no live server: a fake one, a killed one


@contextlib.contextmanager
def _fake_server(answer: bytes | None) -> Iterator[list[bytes]]:
    """A stand-in on serve.sock: reads one whole request, then sends ``answer`` (None: hangs up)."""
    SETTINGS.run_dir.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(SOCKET))
    listener.listen(1)
    requests: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += connection.recv(65536)
            requests.append(body)
            if answer is not None:
                connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        thread.join(RUN_TIMEOUT_S)
        listener.close()
        SOCKET.unlink(missing_ok=True)


def test_a_refusal_before_the_run_falls_back_to_the_local_path_with_stdin_intact(tmp_path: Path) -> None:
    echo = _write(tmp_path, "echo.py", ECHO_STDIN)
    refusal = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    with _fake_server(refusal) as requests:
        code, out, err = _sandlot("run", echo, stdin=b"\xff\x00given once\n")
    assert (code, out) == (0, b"\xff\x00given once\n"), err
    assert len(requests) == 1 and json.loads(requests[0])["stdin_encoding"] == "base64"


def test_an_answer_that_breaks_off_is_an_error_not_a_second_run(tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    with _fake_server(None) as requests:
        code, out, err = _sandlot("run", hello)
    assert (code, out) == (2, b"")  # the server may have run it: never again here
    assert b"the run may have happened" in err
    with _fake_server(None) as requests_json:
        code, out, _ = _sandlot("run", "--json", hello)
    assert code == 2 and json.loads(out)["status"] == "internal_error"  # one JSON object, as ever
    assert len(requests) == len(requests_json) == 1


def test_a_socket_of_another_user_is_not_used(tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    SETTINGS.run_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(SOCKET))
        try:
            listener.listen(1)
            os.chown(SOCKET, 65534, 65534)  # nobody's: it could read the program and make up its result
            assert _sandlot("run", hello)[:2] == (0, b"hello\n")  # the local path
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # never connected to
        finally:
            SOCKET.unlink()


def test_a_killed_servers_socket_is_stale_the_next_server_replaces_it_and_keys_mean_local(tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    echo = _write(tmp_path, "echo.py", ECHO_STDIN)
    with _server(tmp_path) as killed:
        killed.proc.kill()
        killed.proc.wait()
    assert SOCKET.is_socket()  # left behind, nobody listening
    assert _sandlot("run", hello)[:2] == (0, b"hello\n")  # the local path
    sweep_boxes(SETTINGS)

    with _server(tmp_path) as node:  # replaces the stale socket
        mode = SOCKET.stat()
        assert (stat.S_IMODE(mode.st_mode), mode.st_uid) == (0o600, 0)
        assert _sandlot("run", hello)[:2] == (0, b"hello\n")
        assert _executions(node) == {("python", "ok"): 1.0}
    assert not SOCKET.exists()  # removed on the way out

    # With API keys, the keyless socket request is refused (401): run locally, once.
    with _server(tmp_path, SANDLOT_API_KEYS="warm-key:tenant") as keyed:
        code, out, err = _sandlot("run", echo, stdin=b"once\n")
        assert (code, out) == (0, b"once\n"), err
        assert _executions(keyed) == {}


# ------------------------------------------------------------------ a live server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with _server(tmp_path_factory.mktemp("warm")) as node:
        yield node


def _split(extra: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(options, then -- and the program's args) of a case's extra command-line words."""
    at = extra.index("--") if "--" in extra else len(extra)
    return list(extra[:at]), list(extra[at:])


def _comparable(out: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out)
    for measured in ("wall_time", "cpu_time", "memory_peak"):
        assert result.pop(measured) is not None
    return result


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(
    ("name", "source", "stdin", "extra", "expected"),
    [
        ("hello.py", HELLO, b"", (), ("python", "ok", 0)),
        ("bytes.py", NOT_UTF8, b"", (), ("python", "runtime_error", 3)),
        ("echo.py", ECHO_STDIN, b"\xfe\x00 in \xff\n", (), ("python", "ok", 0)),
        ("killed.py", KILLED, b"", (), ("python", "signaled", 128 + signal.SIGKILL)),
        ("bad.c", BAD_C, b"", (), ("c", "compile_error", 1)),
        ("spin.py", SPIN, b"", ("--time-limit=0.5",), ("python", "timeout", 128 + signal.SIGKILL)),
        ("argv", ARGV, b"", ("-l", "python", "--", "a b", "-c"), ("python", "ok", 0)),
    ],
    ids=["success", "exit-3-not-utf8", "stdin-bytes", "signal", "compile-error", "timeout-flag", "language-args"],
)
def test_the_warm_path_prints_and_exits_as_the_local_path(
    server: Node,
    tmp_path: Path,
    name: str,
    source: str,
    stdin: bytes,
    extra: tuple[str, ...],
    expected: tuple[str, str, int],
    as_json: bool,
) -> None:
    program = _write(tmp_path, name, source)
    options, args = _split(extra)
    flags = ["--json", *options] if as_json else list(options)
    language, status, code = expected
    before = _executions(server)
    warm = _sandlot("run", *flags, program, *args, stdin=stdin)
    after = _executions(server)
    local = _sandlot("run", "--local", *flags, program, *args, stdin=stdin)
    assert _executions(server) == after  # --local: not the server's
    counted = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    assert counted == {(language, status): 1.0}  # the warm path ran it, once
    assert warm[0] == local[0] == code, (warm, local)
    if as_json:
        assert _comparable(warm[1]) == _comparable(local[1])
        assert warm[2] == local[2]
    else:
        assert warm[1:] == local[1:]
    if name == "bytes.py" and not as_json:
        assert warm[1:] == (b"\xff\xfeout\n", b"\xc3(err\n")


def test_a_terminal_on_stdin_keeps_the_local_path(server: Node, tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    before = _executions(server)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [str(SANDLOT), "run", str(hello)],
            stdin=terminal,
            capture_output=True,
            env=_env(),
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert (proc.returncode, proc.stdout) == (0, b"hello\n"), proc.stderr
    assert _executions(server) == before


def test_a_pipe_on_stdin_keeps_the_local_path_so_a_conversation_stays_live(server: Node, tmp_path: Path) -> None:
    """An interactor talks with the program over pipes: each answer waits for the program's last line.
    Read whole before the run (the warm path), stdin would never end and both sides would wait forever."""
    talker = _write(tmp_path, "talk.py", "print('ready', flush=True)\nprint('got', input(), flush=True)\n")
    before = _executions(server)
    with subprocess.Popen(
        [str(SANDLOT), "run", str(talker)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_env(),
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == b"ready\n"  # asked before it is given any input
            proc.stdin.write(b"answer\n")
            proc.stdin.close()
            assert proc.stdout.read() == b"got answer\n"
            assert proc.wait(RUN_TIMEOUT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _executions(server) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_cancels_the_run_on_the_server_and_exits_128_plus_n(
    server: Node, tmp_path: Path, signum: signal.Signals
) -> None:
    sleeper = _write(tmp_path, "sleeper.py", SLEEPER)
    before = _executions(server).get(("python", "signaled"), 0.0)
    with subprocess.Popen(
        [str(SANDLOT), "run", str(sleeper)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        try:
            _wait_for(lambda: _metric(server, "engine_active_workers_count") == 1.0, "the run started on the server")
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 128 + signum, err
    # The closed connection cancelled the run: it ends now, not after its 600 s.
    _wait_for(lambda: _executions(server).get(("python", "signaled"), 0.0) == before + 1, "the run was cancelled")
    assert _metric(server, "engine_active_workers_count") == 0.0


def test_the_warm_path_imports_no_http_client_asyncio_or_click(server: Node, tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    before = _executions(server).get(("python", "ok"), 0.0)
    run = "from sandlot.cli_warm import entrypoint; entrypoint()"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", run, "run", str(hello)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, b"hello\n"), proc.stderr
    assert _executions(server).get(("python", "ok"), 0.0) == before + 1
    lines = proc.stderr.decode().splitlines()
    modules = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "sandlot.cli_warm" in modules
    heavy = {"httpx", "asyncio", "click", "sandlot.cli", "sandlot.config", "typing", "threading"}
    assert modules & heavy == set()


def test_a_request_the_server_rejects_is_worded_by_the_local_path(server: Node, tmp_path: Path) -> None:
    hello = _write(tmp_path, "hello.py", HELLO)
    before, refused = _executions(server), _refusals(server)
    code, out, err = _sandlot("run", "--memory-limit", "999999", hello)  # over the maximum: 400
    assert (code, out) == (2, b"")
    assert err.startswith(b"sandlot: --memory-limit")  # the flag's name, not the request's limits.memory_limit
    assert _executions(server) == before
    assert _refusals(server) == refused + 1  # the server was asked, and said 400


def _refusals(node: Node) -> float:
    text = httpx.get(node.url + "/metrics", timeout=10).text
    found = re.findall(r'^sandlot_requests_total\{[^}]*code="400"[^}]*\} (\S+)$', text, re.M)
    return sum(float(value) for value in found)


def test_stdin_over_the_warm_cap_runs_locally_with_every_byte(server: Node, tmp_path: Path) -> None:
    counter = _write(tmp_path, "count.py", "import sys\nprint(len(sys.stdin.buffer.read()))\n")
    before = _executions(server)
    size = 3 * 1024 * 1024 + 7  # past cli_warm.STDIN_CAP_BYTES: read in part, then given back whole
    code, out, err = _sandlot("run", counter, stdin=b"x" * size)
    assert (code, out) == (0, f"{size}\n".encode()), err
    assert _executions(server) == before
