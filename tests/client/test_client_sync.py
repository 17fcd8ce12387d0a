"""``sandlot_client.Sandlot`` against a real server: every method, and every error it maps."""

from __future__ import annotations

import threading

import pytest

from sandlot_client import (
    Busy,
    Conflict,
    FileInfo,
    Limits,
    NotFound,
    Rejected,
    Sandlot,
    Status,
    Unauthorized,
    Unavailable,
)
from tests.client.conftest import ECHO_BYTES, GATED, KEY, LONG, RAW, SLEEPER

pytestmark = pytest.mark.root


def test_run_a_plain_string(server: str) -> None:
    with Sandlot(server) as client:
        result = client.run("python", "import sys\nprint(input()[::-1], sys.argv[1:])", stdin="olleh", args=["a"])
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, "hello ['a']\n")
    assert result.ok and result.language == "python" and result.task_id
    assert result.value is None  # not a stateful cell


def test_bytes_cross_intact_as_stdin_and_as_files(server: str) -> None:
    with Sandlot(server) as client:
        echoed = client.run("python", ECHO_BYTES, stdin=RAW)
        assert echoed.stdout == RAW.hex()
        read = "print(open('data.bin', 'rb').read().hex(), open('notes.txt').read())"
        both = client.run("python", read, files={"data.bin": RAW, "notes.txt": "text"})
        assert both.stdout == f"{RAW.hex()} text\n"
        from_files = client.run("python", files=[("main.py", b"print('main')"), ("other.py", "")])
        assert from_files.stdout == "main\n"


def test_output_reaches_the_callbacks_while_the_program_runs(server: str) -> None:
    with Sandlot(server) as client, client.session() as session:
        seen: list[tuple[str, str]] = []

        def on_stdout(text: str) -> None:
            seen.append(("out", text))
            session.files.write("go", b"")  # the program ends only once this file exists

        result = session.run(
            GATED + "import sys\nprint('oops', file=sys.stderr)\n",
            limits=LONG,
            on_stdout=on_stdout,
            on_stderr=lambda text: seen.append(("err", text)),
        )
    assert result.status is Status.OK, result
    assert "".join(text for kind, text in seen if kind == "out") == "first\ndone\n"
    assert [text for kind, text in seen if kind == "err"] == ["oops\n"]


def test_compiler_output_goes_to_on_stderr(server: str) -> None:
    errors: list[str] = []
    with Sandlot(server) as client:
        result = client.run("c", "int main(void) { return x; }", on_stderr=errors.append)
    assert result.status is Status.COMPILE_ERROR
    assert "x" in result.compile_output and "".join(errors) == result.compile_output


def test_limits_as_a_dataclass(server: str) -> None:
    with Sandlot(server) as client:
        result = client.run("python", "while True: pass", limits=Limits(time_limit=0.5))
    assert result.status is Status.TIMEOUT


def test_submit_state_result_and_cancel(server: str) -> None:
    with Sandlot(server) as client:
        quick = client.submit("python", "print(2)")
        assert quick.result().stdout == "2\n"
        state = quick.state()
        assert state.status == "done" and state.result is not None and state.result.stdout == "2\n"
        assert client.task(quick.id).result().stdout == "2\n"  # a handle by id, later
        with pytest.raises(Conflict):
            quick.cancel()  # already finished

        sleeper = client.submit("python", SLEEPER, limits=LONG)
        started = threading.Event()
        outcome = []

        def follow() -> None:
            outcome.append(sleeper.result(on_stdout=lambda text: started.set()))

        follower = threading.Thread(target=follow)
        follower.start()
        assert started.wait(60)  # it runs in its box now
        sleeper.cancel()
        follower.join(60)
    assert outcome and outcome[0].status is Status.SIGNALED


def test_session_files_and_close(server: str) -> None:
    with Sandlot(server) as client:
        with client.session() as session:
            assert session.files.write("data.csv", "a,b\n1,2\n") == FileInfo("data.csv", 8)
            session.files.write("sub/raw.bin", RAW)
            assert session.files.read("sub/raw.bin") == RAW
            result = session.run("print(open('data.csv').read().splitlines()[1])")
            assert result.stdout == "1,2\n"
            session.run("open('made.txt', 'w').write('kept')")
            assert session.files.read("made.txt") == b"kept"
            listed = {f.path: f.size for f in session.files.list()}  # the runs' sources are there too
            assert {path: listed.get(path) for path in ("data.csv", "made.txt", "sub/raw.bin")} == {
                "data.csv": 8,
                "made.txt": 4,
                "sub/raw.bin": 256,
            }
            with pytest.raises(NotFound):
                session.files.read("missing.txt")
            with pytest.raises(Rejected) as outside:
                session.files.write("../escape", b"x")
            assert outside.value.field == "path"
        assert session.closed
        with pytest.raises(NotFound):
            session.files.list()  # DELETEd at the end of the with block
        session.close()  # closing twice is fine


def test_a_session_of_another_language(server: str) -> None:
    with Sandlot(server) as client, client.session(language="c") as session:
        assert session.run('#include <stdio.h>\nint main(void) { puts("c"); }').stdout == "c\n"
        assert session.run("print('py')", language="python").stdout == "py\n"


def test_errors_are_typed(server: str, keyed_server: str, closed_port: int) -> None:
    with Sandlot(server) as client:
        with pytest.raises(Rejected) as bad_language:
            client.run("cobol", "x")
        assert bad_language.value.field == "language" and bad_language.value.http_status == 400
        with pytest.raises(Rejected) as bad_limit:
            client.run("python", "x", limits={"time_limit": 1000})
        assert bad_limit.value.field == "limits.time_limit"
        with pytest.raises(NotFound):
            client.task("0" * 32).state()
        with pytest.raises(NotFound):
            client.task("0" * 32).result()
        with pytest.raises(NotFound):
            client.run("python", "x", environment="no-such-environment")
    with Sandlot(keyed_server) as anonymous, pytest.raises(Unauthorized) as missing:
        anonymous.run("python", "print(1)")
    assert missing.value.http_status == 401
    with Sandlot(keyed_server, api_key="wrong") as wrong, pytest.raises(Unauthorized) as refused:
        wrong.run("python", "print(1)")
    assert refused.value.http_status == 403
    with Sandlot(keyed_server, api_key=KEY) as right:
        assert right.run("python", "print(1)").stdout == "1\n"
    down = f"http://127.0.0.1:{closed_port}"
    with Sandlot(down) as nobody, pytest.raises(Unavailable) as unreachable:
        nobody.run("python", "print(1)")
    assert str(unreachable.value) == f"cannot reach {down}: connection refused"
    with pytest.raises(Rejected):
        Sandlot("ftp://example.org")


def test_a_full_server_is_busy_with_retry_after(full_server: str) -> None:
    with Sandlot(full_server) as client:
        holding = client.submit("python", SLEEPER, limits=LONG)
        started = threading.Event()
        follower = threading.Thread(target=lambda: holding.result(on_stdout=lambda text: started.set()))
        follower.start()
        try:
            assert started.wait(60)  # the only box is busy
            queued = client.submit("python", "print(1)")  # the queue's one place
            with pytest.raises(Busy) as busy:
                client.submit("python", "print(1)")
            assert busy.value.http_status == 429 and busy.value.code == "queue_full"
            assert busy.value.retry_after is not None and busy.value.retry_after >= 1
        finally:
            holding.cancel()
            follower.join(60)
        assert queued.result().stdout == "1\n"
