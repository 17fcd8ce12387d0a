"""``sandlot submit`` and ``sandlot result``: the console script against a live server.

A real server (Service, pool of 2, uvicorn on a loopback port) runs for the
module in a thread with its own event loop; every command is the installed
console script run as a subprocess, so the exit-code contract, the streams,
live streaming and Ctrl-C are seen exactly as a shell sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandlot.api.http.app import create_app
from sandlot.config import ApiKey
from tests.api.http.test_http import live_server, running_service
from tests.cli.test_cli import _CONTRACT_KEYS
from tests.root import require_root

_SANDLOT = Path(sys.executable).with_name("sandlot")
_TIMEOUT_S = 60
_KEY = "key-of-alice"

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
# Prints, then waits in its session's workdir for the file the test puts there with _go: no timing involved.
GATED = "import os, sys, time\nprint('first', flush=True)\nwhile not os.path.exists('go'):\n    time.sleep(0.01)\n"


class _ServerThread:
    """A started Service served over HTTP from a thread with its own event loop."""

    def __init__(self, **server: Any) -> None:
        self._server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="sandlot-test-server")
        self.url = ""

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_service(**self._server) as service, live_server(create_app(service)) as address:
                self.url = f"http://{address}"
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()  # a failed start must not leave the test waiting

    def __enter__(self) -> str:
        require_root()  # before the thread: the skip must be raised in the test's own thread
        self._thread.start()
        self._ready.wait(_TIMEOUT_S)
        assert self.url, "the server did not start"
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_TIMEOUT_S)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with _ServerThread() as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    with _ServerThread(api_keys=(ApiKey(_KEY, "alice"),)) as url:
        yield url


@pytest.fixture
def session(server: str) -> Iterator[str]:
    """A session of the module's server: runs in it share a workdir."""
    session_id = httpx.post(f"{server}/api/v1/sessions", timeout=_TIMEOUT_S).json()["session_id"]
    assert isinstance(session_id, str)
    yield session_id
    httpx.delete(f"{server}/api/v1/sessions/{session_id}", timeout=_TIMEOUT_S)


def _go(server: str, session: str) -> None:
    assert httpx.put(f"{server}/api/v1/sessions/{session}/files/go", content=b"", timeout=_TIMEOUT_S).status_code == 201


@pytest.fixture(name="program")
def program_fixture(tmp_path: Path) -> Callable[..., Path]:
    """program(code, name="prog.py"): the source written to a file, its path."""

    def write(code: str, name: str = "prog.py") -> Path:
        path = tmp_path / name
        path.write_text(code)
        return path

    return write


def _env(server: str, **extra: str) -> dict[str, str]:
    # No PYTHONUNBUFFERED: the command must flush streamed output itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_") and k != "PYTHONUNBUFFERED"}
    return {**env, "SANDLOT_SERVER": server, **extra}


def _sandlot(server: str, *args: str | Path, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(_SANDLOT), *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        env=_env(server, **env),
        timeout=_TIMEOUT_S,
        check=False,
    )


# A suite started in the background (`cmd &` in a script) ignores SIGINT, and an ignored signal stays
# ignored across exec, so sandlot would rightly leave it so (as under nohup). The command runs as from a
# terminal's foreground instead, where Ctrl-C has its default action.
_AS_AT_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


@contextlib.contextmanager
def _popen(server: str, *args: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """The command running with its streams piped; killed if the test ends before it does."""
    with subprocess.Popen(
        [sys.executable, "-c", _AS_AT_A_TERMINAL, str(_SANDLOT), *(str(a) for a in args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # small: read only once stdout has ended
        env=_env(server),
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def _one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sandlot: ")
    return lines[0]


def _json(stdout: bytes) -> dict[str, Any]:
    lines = stdout.decode().splitlines()
    assert len(lines) == 1, lines
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


@pytest.fixture(name="closed_port")
def closed_port_fixture() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test.

    Bound and never listened on, and held: a port merely found free and let go could
    be taken by another process (the other test runs on this machine) before we connect.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def _wait_done(server: str, task_id: str) -> dict[str, Any]:
    """Follow the task's event stream to its exit event, then its state."""
    with httpx.stream("GET", f"{server}/api/v1/tasks/{task_id}/events", timeout=_TIMEOUT_S) as response:
        for line in response.iter_lines():
            if line == "event: exit":
                break
    state = httpx.get(f"{server}/api/v1/tasks/{task_id}", timeout=_TIMEOUT_S).json()
    assert isinstance(state, dict)
    return state


# ------------------------------------------------------------- the contract


def test_exit_code_streams_stdin_and_args(server: str, program: Callable[..., Path]) -> None:
    code = "import sys\nprint('out', sys.argv[1:], input())\nprint('err', file=sys.stderr)\nsys.exit(7)\n"
    proc = _sandlot(server, "submit", program(code), "--stdin", "-", "--", "a", "b c", stdin=b"hello\n")
    assert proc.returncode == 7
    assert proc.stdout == b"out ['a', 'b c'] hello\n"
    assert proc.stderr == b"err\n"


def test_stdin_from_a_file(server: str, program: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from a file\n")
    proc = _sandlot(server, "submit", program("print(input())"), "--stdin", tmp_path / "in.txt")
    assert (proc.returncode, proc.stdout) == (0, b"from a file\n")


def test_piped_stdin_is_sent_by_default(server: str, program: Callable[..., Path]) -> None:
    echo = program("import sys\nprint(repr(sys.stdin.read()))")
    assert _sandlot(server, "submit", echo, stdin=b"5\n").stdout == b"'5\\n'\n"  # echo 5 | sandlot submit
    assert _sandlot(server, "submit", echo, "--no-stdin", stdin=b"5\n").stdout == b"''\n"


def test_stdin_that_is_not_utf8_arrives_intact(server: str, program: Callable[..., Path]) -> None:
    echo = program("import sys\nprint(sys.stdin.buffer.read().hex())")
    raw = bytes(range(256))  # refused as "not UTF-8 text" before the client library sent it as base64
    proc = _sandlot(server, "submit", echo, stdin=raw)
    assert (proc.returncode, proc.stdout) == (0, f"{raw.hex()}\n".encode()), proc.stderr


def test_a_signal_exits_128_plus_n(server: str, program: Callable[..., Path]) -> None:
    proc = _sandlot(server, "submit", program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"))
    assert proc.returncode == 128 + signal.SIGSEGV


def test_output_is_not_held_back_until_the_end(server: str, session: str, program: Callable[..., Path]) -> None:
    """The program only ends once the test has seen its first line: a client holding output back would hang."""
    code = GATED + "print('second', flush=True)\n"
    with _popen(server, "submit", program(code), "--session", session, "--wall-time-limit", "30") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None  # streamed while the program runs, not replayed at its end
        _go(server, session)
        assert proc.stdout.read() == b"second\n"
        assert proc.wait(_TIMEOUT_S) == 0


def test_json_is_one_object_with_the_run_keys_and_task_id(server: str, program: Callable[..., Path]) -> None:
    proc = _sandlot(server, "submit", program("import sys\nprint('hi')\nsys.exit(3)\n"), "--json")
    assert proc.returncode == 3
    result = _json(proc.stdout)
    assert set(result) == _CONTRACT_KEYS | {"task_id"}
    assert (result["status"], result["exit_code"], result["stdout"]) == ("runtime_error", 3, "hi\n")
    assert httpx.get(f"{server}/api/v1/tasks/{result['task_id']}", timeout=_TIMEOUT_S).json()["status"] == "done"


def test_compile_error_exits_1_with_the_compiler_message(server: str, program: Callable[..., Path]) -> None:
    proc = _sandlot(server, "submit", program("int main( { return 0; }\n", "broken.c"))
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"broken.c:1" in proc.stderr and b"error" in proc.stderr


# ------------------------------------------------------ async and result


def test_async_then_result(server: str, session: str, program: Callable[..., Path]) -> None:
    code = GATED + "print('second')\nsys.exit(5)\n"
    submitted = _sandlot(server, "submit", program(code), "--session", session, "--wall-time-limit", "30", "--async")
    assert submitted.returncode == 0
    task_id = submitted.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)

    pending = _sandlot(server, "result", task_id)  # the program waits for the test's go
    assert (pending.returncode, pending.stdout) == (3, b"")
    assert pending.stderr.decode().strip() in ("queued", "running")
    pending_json = _sandlot(server, "result", task_id, "--json")
    assert pending_json.returncode == 3
    assert _json(pending_json.stdout) == {"task_id": task_id, "status": pending_json.stderr.decode().strip()}

    with _popen(server, "result", task_id, "--wait") as waiting:
        assert waiting.stdout is not None
        assert waiting.stdout.readline() == b"first\n"
        _go(server, session)
        assert waiting.stdout.read() == b"second\n"
        assert waiting.wait(_TIMEOUT_S) == 5

    done = _sandlot(server, "result", task_id)
    assert (done.returncode, done.stdout, done.stderr) == (5, b"first\nsecond\n", b"")
    as_json = _sandlot(server, "result", task_id, "--json")
    assert as_json.returncode == 5
    result = _json(as_json.stdout)
    assert set(result) == _CONTRACT_KEYS | {"task_id"}
    assert (result["task_id"], result["stdout"], result["exit_code"]) == (task_id, "first\nsecond\n", 5)


def test_result_of_an_unknown_task(server: str) -> None:
    proc = _sandlot(server, "result", "0" * 32)
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == f"sandlot: task {'0' * 32} not found"


def test_runs_of_a_session_share_files(server: str, session: str, program: Callable[..., Path]) -> None:
    write = program("open('note.txt', 'w').write('kept')\n", "write.py")
    read = program("print(open('note.txt').read())\n", "read.py")
    assert _sandlot(server, "submit", write, "--session", session).returncode == 0
    proc = _sandlot(server, "submit", read, "--session", session)
    assert (proc.returncode, proc.stdout) == (0, b"kept\n")
    alone = _sandlot(server, "submit", read)  # a fresh box has no such file
    assert alone.returncode == 1 and b"FileNotFoundError" in alone.stderr


# -------------------------------------------------- not the program's doing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-l", "cobol"), "sandlot: unknown language 'cobol'; offered: "),
        (("--time-limit", "1000"), "sandlot: limits.time_limit 1000 exceeds the maximum of 60 s"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    server: str, program: Callable[..., Path], args: tuple[str, ...], message: str
) -> None:
    proc = _sandlot(server, "submit", program("print(1)"), *args)
    assert proc.returncode == 2
    assert _one_line(proc.stderr).startswith(message)
    assert proc.stdout == b""
    as_json = _sandlot(server, "submit", program("print(1)"), *args, "--json")
    assert as_json.returncode == 2
    assert _json(as_json.stdout)["status"] == "rejected"


def test_an_unknown_extension_needs_a_language(server: str, program: Callable[..., Path]) -> None:
    proc = _sandlot(server, "submit", program("print(1)", "prog.txt"))
    assert proc.returncode == 2
    assert "use -l LANG" in _one_line(proc.stderr)


def test_server_down(program: Callable[..., Path], closed_port: int) -> None:
    down = f"http://127.0.0.1:{closed_port}"
    proc = _sandlot(down, "submit", program("print(1)"))
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == f"sandlot: cannot reach {down}: connection refused"
    as_json = _sandlot(down, "submit", program("print(1)"), "--json")
    assert as_json.returncode == 2
    assert _json(as_json.stdout)["status"] == "internal_error"
    assert _sandlot(down, "result", "0" * 32).returncode == 2


def test_without_the_client_library_help_works_and_submit_says_what_is_missing(program: Callable[..., Path]) -> None:
    # sandlot installed without clients/python: the import of sandlot_client fails, as it would there.
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sandlot_client':\n"
        "            raise ImportError('No module named sandlot_client')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from sandlot.cli import main\n"
        "main(sys.argv[1:])\n"
    )

    def sandlot(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-c", hide, *(str(a) for a in args)]
        env = _env("http://127.0.0.1:1")
        return subprocess.run(argv, capture_output=True, env=env, timeout=_TIMEOUT_S, check=False)

    helped = sandlot("--help")
    assert helped.returncode == 0 and b"submit" in helped.stdout, helped.stderr
    submitted = sandlot("submit", program("print(1)"))
    assert submitted.returncode == 2
    assert "needs the sandlot-client package" in _one_line(submitted.stderr)
    assert sandlot("result", "0" * 32).returncode == 2


def test_api_keys(keyed_server: str, program: Callable[..., Path]) -> None:
    source = program("print('in')")
    missing = _sandlot(keyed_server, "submit", source)
    assert missing.returncode == 2
    assert _one_line(missing.stderr).startswith("sandlot: unauthorized: ")
    wrong = _sandlot(keyed_server, "submit", source, "--api-key", "not-a-key")
    assert wrong.returncode == 2
    assert _one_line(wrong.stderr).startswith("sandlot: forbidden: ")
    given = _sandlot(keyed_server, "submit", source, "--api-key", _KEY)
    assert (given.returncode, given.stdout) == (0, b"in\n")
    from_env = _sandlot(keyed_server, "submit", source, SANDLOT_API_KEY=_KEY)
    assert (from_env.returncode, from_env.stdout) == (0, b"in\n")


def test_ctrl_c_cancels_the_task(server: str, program: Callable[..., Path]) -> None:
    with _popen(server, "submit", program(SLEEPER), "--wall-time-limit", "60") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"  # it runs in its box now
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=_TIMEOUT_S)
    assert proc.returncode == 130
    line = _one_line(stderr)
    match = re.fullmatch(r"sandlot: interrupted; task ([0-9a-f]{32}) cancelled", line)
    assert match, line
    state = _wait_done(server, match.group(1))
    assert state["status"] == "done"
    result = state["result"]
    assert result["status"] == "signaled"
    assert "cancelled" in result["message"]


def test_submit_isolation_gvisor_runs_in_gvisor_and_an_unknown_level_exits_2(program: Callable[..., Path]) -> None:
    code = program("import os\nprint('uid', os.getuid())\n")
    with _ServerThread(gvisor_pool_size=1) as url:
        jailed = _sandlot(url, "submit", code, "--json")
        gvisor = _sandlot(url, "submit", code, "--isolation", "gvisor", "--json")
        assert (jailed.returncode, gvisor.returncode) == (0, 0), (jailed.stderr, gvisor.stderr)
        assert _json(jailed.stdout)["stdout"] == "uid 1000\n"
        gvisor_out = _json(gvisor.stdout)["stdout"]
        assert gvisor_out.startswith("uid ") and gvisor_out != "uid 1000\n"  # the slot's own uid: gVisor
        unknown = _sandlot(url, "submit", code, "--isolation", "vm")
        assert unknown.returncode == 2, unknown
        assert b"isolation" in unknown.stderr
