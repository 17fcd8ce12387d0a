"""The ``sandlot`` console script, run as a real subprocess against test state.

Other tools depend on the CLI contract exactly: exit codes (the program's own,
128+N for signal N, 1 for a compile error, 2 for anything that is not the
program's doing), live streaming, one-line error messages and the ``--json``
shape. Every test here runs the installed console script, so real sandboxes run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CGROUP, TEST_RUN_DIR, TEST_STATE_DIR, TEST_UID_BASE

_SANDLOT = Path(sys.executable).with_name("sandlot")
_TIMEOUT_S = 120
_CONTRACT_KEYS = {
    "status",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "compile_output",
    "wall_time",
    "cpu_time",
    "memory_peak",
    "truncated",
    "language",
    "message",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env.update(
        SANDLOT_STATE_DIR=str(TEST_STATE_DIR),
        SANDLOT_RUN_DIR=str(TEST_RUN_DIR),
        SANDLOT_CGROUP_NAME=TEST_CGROUP,
        SANDLOT_BOX_UID_BASE=str(TEST_UID_BASE),
    )
    return env


def _sandlot(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the console script to completion, capturing both streams as bytes."""
    return subprocess.run(
        [str(_SANDLOT), *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        env=_env(),
        timeout=_TIMEOUT_S,
        check=False,
    )


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The single JSON object on stdout (and nothing else there)."""
    text = proc.stdout.decode("utf-8")
    assert text.count("\n") == 1 and text.endswith("\n"), f"stdout={text!r} stderr={proc.stderr!r}"
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _assert_one_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


# ------------------------------------------------------------ exit codes and streams


@pytest.mark.root
def test_exit_code_passthrough(tmp_path: Path) -> None:
    prog = _write(tmp_path, "exit7.py", "import sys\nsys.exit(7)\n")
    proc = _sandlot("run", prog)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr == b""


@pytest.mark.root
def test_success_exits_zero(tmp_path: Path) -> None:
    prog = _write(tmp_path, "ok.py", "print('fine')\n")
    proc = _sandlot("run", prog)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"fine\n"


@pytest.mark.root
def test_run_starts_its_jail_before_its_command_as_the_pool_does(tmp_path: Path) -> None:
    """The jail is pre-launched while sandlot loads the rest (start-up): its init waits on the command channel.

    The program sees the box's init as pid 1; a jail started with its command would name it after ``--``.
    """
    prog = _write(tmp_path, "init.py", "print(open('/proc/1/cmdline', 'rb').read().split(b'\\0'))\n")
    proc = _sandlot("run", prog, "--time-limit", "3")
    assert proc.returncode == 0, proc.stderr
    init_argv = proc.stdout.decode()
    assert "b'--command-fd'" in init_argv
    assert "b'--'" not in init_argv


@pytest.mark.root
def test_signal_exit_code(tmp_path: Path) -> None:
    prog = _write(tmp_path, "segv.sh", "kill -SEGV $$\n")
    proc = _sandlot("run", prog)
    assert proc.returncode == 128 + 11, proc.stderr


@pytest.mark.root
def test_signal_json(tmp_path: Path) -> None:
    prog = _write(tmp_path, "segv.sh", "kill -SEGV $$\n")
    proc = _sandlot("run", prog, "--json")
    data = _json(proc)
    assert proc.returncode == 139
    assert data["status"] == "signaled"
    assert data["signal"] == 11
    assert data["exit_code"] is None


@pytest.mark.root
def test_stdout_and_stderr_are_separate(tmp_path: Path) -> None:
    prog = _write(
        tmp_path,
        "streams.py",
        "import sys\nprint('to-out')\nprint('to-err', file=sys.stderr)\nprint('more-out')\n",
    )
    proc = _sandlot("run", prog)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"to-out\nmore-out\n"
    assert proc.stderr == b"to-err\n"


_ECHO = "import sys\nprint(repr(sys.stdin.read()))\nprint(sys.argv[1:])\n"


@pytest.mark.root
def test_stdin_from_file(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    data = _write(tmp_path, "input.txt", "line one\nline two\n")
    proc = _sandlot("run", prog, "--stdin", data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"'line one\\nline two\\n'\n[]\n"


@pytest.mark.root
def test_stdin_from_dash(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = _sandlot("run", prog, "--stdin", "-", stdin=b"piped in\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"'piped in\\n'\n[]\n"


@pytest.mark.root
def test_args_after_double_dash(tmp_path: Path) -> None:
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = _sandlot("run", prog, "--", "a", "b c", "--json", "-l", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"''\n['a', 'b c', '--json', '-l', 'x']\n"


@pytest.mark.root
def test_language_flag_overrides_extension(tmp_path: Path) -> None:
    # Valid bash, a syntax error as Python: only -l decides how it runs.
    prog = _write(tmp_path, "script.py", "echo from-bash\n")
    proc = _sandlot("run", prog, "-l", "bash")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"from-bash\n"
    data = _json(_sandlot("run", prog, "--json", "--language", "bash"))
    assert data["language"] == "bash"


@pytest.mark.root
def test_language_flag_for_unknown_extension(tmp_path: Path) -> None:
    prog = _write(tmp_path, "prog.txt", "print('as python')\n")
    proc = _sandlot("run", prog, "-l", "py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"as python\n"


@pytest.mark.root
def test_live_streaming(tmp_path: Path) -> None:
    # The program prints, then waits for a line the test sends only once it has seen the first: no timing.
    prog = _write(tmp_path, "gated.py", "print('first', flush=True)\ninput()\nprint('second')\n")
    with subprocess.Popen(
        [str(_SANDLOT), "run", str(prog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        env=_env(),
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        still_running = proc.poll() is None
        rest, err = proc.communicate(b"go\n", timeout=_TIMEOUT_S)
    assert first == b"first\n", err
    assert still_running, "the first line arrived only after the program ended"
    assert rest == b"second\n"
    assert proc.returncode == 0, err


# ------------------------------------------------------------ --json


@pytest.mark.root
def test_json_keys_and_types(tmp_path: Path) -> None:
    prog = _write(tmp_path, "mixed.py", "import sys\nprint('o')\nprint('e', file=sys.stderr)\nsys.exit(3)\n")
    proc = _sandlot("run", prog, "--json")
    assert proc.returncode == 3
    data = _json(proc)
    assert set(data) == _CONTRACT_KEYS
    assert data["status"] == "runtime_error"
    assert data["exit_code"] == 3
    assert data["signal"] is None
    assert data["stdout"] == "o\n"
    assert data["stderr"] == "e\n"
    assert data["compile_output"] == ""
    assert type(data["wall_time"]) is float
    assert type(data["cpu_time"]) is float
    assert type(data["memory_peak"]) is int
    assert data["memory_peak"] > 0
    assert data["truncated"] is False
    assert data["language"] == "python"
    assert isinstance(data["message"], str)


@pytest.mark.root
def test_json_ok_run(tmp_path: Path) -> None:
    prog = _write(tmp_path, "ok.py", "print('fine')\n")
    proc = _sandlot("run", prog, "--json")
    assert proc.returncode == 0, proc.stderr
    data = _json(proc)
    assert set(data) == _CONTRACT_KEYS
    assert data["status"] == "ok"
    assert data["exit_code"] == 0
    assert data["stdout"] == "fine\n"


@pytest.mark.root
def test_json_non_utf8_output(tmp_path: Path) -> None:
    prog = _write(tmp_path, "bytes.py", "import sys\nsys.stdout.buffer.write(b'\\xff\\xfeok')\n")
    proc = _sandlot("run", prog, "--json")
    assert proc.returncode == 0, proc.stderr
    data = _json(proc)
    assert data["status"] == "ok"
    assert data["stdout"] == "\ufffd\ufffdok"


# ------------------------------------------------------------ compile errors


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("prog.c", "int main(void) { return y; }\n", "prog.c:1:25: error:"),
        (
            "prog.go",
            'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(x)\n}\n',
            "prog.go:6:14: undefined: x",
        ),
    ],
)
@pytest.mark.root
def test_compile_error(tmp_path: Path, name: str, code: str, expected: str) -> None:
    prog = _write(tmp_path, name, code)
    proc = _sandlot("run", prog)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert expected in err
    assert "main.c" not in err
    assert "main.go" not in err
    assert "/box/" not in err


@pytest.mark.root
def test_compile_error_json(tmp_path: Path) -> None:
    prog = _write(tmp_path, "prog.c", "int main(void) { return y; }\n")
    proc = _sandlot("run", prog, "--json")
    assert proc.returncode == 1
    data = _json(proc)
    assert set(data) == _CONTRACT_KEYS
    assert data["status"] == "compile_error"
    assert "prog.c:1:25: error:" in data["compile_output"]
    assert data["language"] == "c"


@pytest.mark.root
def test_compiled_program_runs(tmp_path: Path) -> None:
    prog = _write(tmp_path, "ok.c", '#include <stdio.h>\nint main(void) { puts("compiled"); return 4; }\n')
    proc = _sandlot("run", prog)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == b"compiled\n"


# ------------------------------------------------------------ limits


@pytest.mark.root
def test_cpu_timeout(tmp_path: Path) -> None:
    prog = _write(tmp_path, "spin.py", "while True:\n    pass\n")
    proc = _sandlot("run", prog, "--time-limit", "1")
    assert proc.returncode == 137
    assert "timeout" in _assert_one_line(proc.stderr)


@pytest.mark.root
def test_wall_timeout_json(tmp_path: Path) -> None:
    prog = _write(tmp_path, "sleep.py", "import time\ntime.sleep(30)\n")
    proc = _sandlot("run", prog, "--wall-time-limit", "1", "--json")
    assert proc.returncode == 137
    data = _json(proc)
    assert data["status"] == "timeout"
    assert "wall" in data["message"]


@pytest.mark.root
def test_output_limit(tmp_path: Path) -> None:
    prog = _write(tmp_path, "flood.py", "while True:\n    print('x' * 1000)\n")
    proc = _sandlot("run", prog, "--max-output", "4")
    assert proc.returncode == 137
    assert 0 < len(proc.stdout) <= 4 * 1024
    line = _assert_one_line(proc.stderr)
    assert "output_limit" in line
    assert "(4 KB = 4096 bytes)" in line  # the unit --max-output was given in, not only bytes


@pytest.mark.root
def test_output_limit_json(tmp_path: Path) -> None:
    prog = _write(tmp_path, "flood.py", "while True:\n    print('x' * 1000)\n")
    proc = _sandlot("run", prog, "--max-output", "4", "--json")
    assert proc.returncode == 137
    data = _json(proc)
    assert data["status"] == "output_limit"
    assert data["truncated"] is True
    assert len(data["stdout"]) <= 4 * 1024


@pytest.mark.root
def test_memory_limit_json(tmp_path: Path) -> None:
    prog = _write(tmp_path, "hog.py", "x = bytearray(200 * 1024 * 1024)\nprint(len(x))\n")
    proc = _sandlot("run", prog, "--memory-limit", "50", "--json")
    assert proc.returncode == 137
    data = _json(proc)
    assert data["status"] == "memory_limit"


# ------------------------------------------------------------ bad input


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str | Path], str]]:
    """Each case: the arguments after ``run`` and a word the message must contain."""
    ok = _write(tmp_path, "ok.py", "print(1)\n")
    return {
        "missing file": ([tmp_path / "nope.py"], "nope.py"),
        "directory": ([tmp_path], "directory"),
        "empty file": ([_write(tmp_path, "empty.py", b"")], "empty"),
        "whitespace file": ([_write(tmp_path, "blank.py", b"  \n\t\n")], "empty"),
        "non-utf8 source": ([_write(tmp_path, "bad.py", b"print(1)\n# \xff\xfe\n")], "UTF-8"),
        "oversized source": ([_write(tmp_path, "big.py", b"#" * (1024 * 1024 + 1))], "large"),
        "unknown language": ([ok, "-l", "cobol"], "cobol"),
        "unknown extension": ([_write(tmp_path, "prog.xyz", "print(1)\n")], "extension"),
        "time limit over maximum": ([ok, "--time-limit", "1000"], "--time-limit"),
        "memory limit zero": ([ok, "--memory-limit", "0"], "--memory-limit"),
        "memory limit over maximum": ([ok, "--memory-limit", "100000"], "--memory-limit"),
        "max output over maximum": ([ok, "--max-output", "1000000"], "--max-output"),
        "non-numeric time limit": ([ok, "--time-limit", "soon"], "time-limit"),
        "missing stdin file": ([ok, "--stdin", tmp_path / "no-input.txt"], "stdin"),
        "unknown option": ([ok, "--frobnicate"], "frobnicate"),
    }


_BAD_CASES = [
    "missing file",
    "directory",
    "empty file",
    "whitespace file",
    "non-utf8 source",
    "oversized source",
    "unknown language",
    "unknown extension",
    "time limit over maximum",
    "memory limit zero",
    "memory limit over maximum",
    "max output over maximum",
    "non-numeric time limit",
    "missing stdin file",
    "unknown option",
]
# An unknown option is a usage error of the command line itself, not of an input.
_BAD_JSON_CASES = [case for case in _BAD_CASES if case != "unknown option"]


@pytest.mark.parametrize("case", _BAD_CASES)
def test_bad_input_plain(tmp_path: Path, case: str) -> None:
    args, word = _bad_inputs(tmp_path)[case]
    proc = _sandlot("run", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    line = _assert_one_line(proc.stderr)
    assert line.startswith("sandlot: ")
    assert word in line


@pytest.mark.parametrize("case", _BAD_JSON_CASES)
def test_bad_input_json(tmp_path: Path, case: str) -> None:
    args, word = _bad_inputs(tmp_path)[case]
    proc = _sandlot("run", *args, "--json")
    assert proc.returncode == 2, proc.stderr
    _assert_one_line(proc.stderr)
    data = _json(proc)
    assert set(data) == _CONTRACT_KEYS
    assert data["status"] == "rejected"
    assert word in data["message"]


def test_limit_message_names_maximum(tmp_path: Path) -> None:
    ok = _write(tmp_path, "ok.py", "print(1)\n")
    proc = _sandlot("run", ok, "--time-limit", "1000")
    line = _assert_one_line(proc.stderr)
    assert "--time-limit 1000 exceeds the maximum of 60 s" in line
    assert "time_limit" not in line


def test_non_utf8_argument_is_rejected(tmp_path: Path) -> None:
    """An argument that is not valid UTF-8 is bad input: exit 2 and one line, never a traceback."""
    prog = _write(tmp_path, "echo.py", _ECHO)
    proc = subprocess.run(
        [os.fsencode(_SANDLOT), b"run", os.fsencode(prog), b"--", b"\xff"],
        capture_output=True,
        env=_env(),
        timeout=_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    _assert_one_line(proc.stderr)


@pytest.mark.root
def test_non_utf8_file_name_compiled(tmp_path: Path) -> None:
    """A compile error in a file whose name is not UTF-8 must still be a compile error, not a crash."""
    prog = tmp_path / os.fsdecode(b"pr\xffg.c")
    prog.write_bytes(b"int main(void) { return y; }\n")
    proc = _sandlot("run", prog)
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert proc.returncode == 1, err
    assert "error:" in err


# ------------------------------------------------------------ other commands


def test_languages_json() -> None:
    proc = _sandlot("languages", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_name = {row["name"]: row for row in rows}
    assert {"python", "go", "java"} <= set(by_name)
    assert by_name["python"]["version"].startswith("3.")
    assert by_name["go"]["version"].startswith("1.")
    assert by_name["java"]["version"] not in ("", "unknown")
    assert by_name["go"]["compiled"] is True
    assert by_name["python"]["compiled"] is False
    assert ".py" in by_name["python"]["extensions"]


def test_languages_plain() -> None:
    proc = _sandlot("languages")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    names = [line.split()[0] for line in lines]
    assert len(names) == len(set(names))
    assert {"python", "go", "java"} <= set(names)
    rows = json.loads(_sandlot("languages", "--json").stdout)
    assert len(lines) == len(rows)
    python = next(line for line in lines if line.split()[0] == "python")
    assert python.split()[1].startswith("3.")


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["run", "--help"], ["languages", "--help"]])
def test_help(args: list[str]) -> None:
    proc = _sandlot(*args)
    assert proc.returncode == 0, proc.stderr
    assert b"Usage:" in proc.stdout


def test_help_lists_run_options() -> None:
    text = _sandlot("run", "--help").stdout.decode()
    for option in (
        "--language",
        "--stdin",
        "--no-stdin",
        "--time-limit",
        "--wall-time-limit",
        "--memory-limit",
        "--max-processes",
        "--max-file-size",
        "--max-output",
        "--json",
    ):
        assert option in text


def test_configuration_error_is_one_line(tmp_path: Path) -> None:
    ok = _write(tmp_path, "ok.py", "print(1)\n")
    proc = _sandlot("--config", tmp_path / "missing.toml", "run", ok)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert "missing.toml" in _assert_one_line(proc.stderr)


def test_a_config_file_typo_or_bad_value_stops_the_command_in_one_line(tmp_path: Path) -> None:
    ok = _write(tmp_path, "ok.py", "print(1)\n")
    typo = _write(tmp_path, "typo.toml", "max_boxs = 3\n")
    proc = _sandlot("--config", typo, "run", ok)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert "unknown setting max_boxs" in _assert_one_line(proc.stderr)
    assert "did you mean max_boxes?" in proc.stderr.decode()
    bad = _write(tmp_path, "bad.toml", '[server]\nhttp_port = "eighty"\n')
    proc = _sandlot("serve", "--config", bad)
    assert (proc.returncode, proc.stdout) == (2, b"")
    line = _assert_one_line(proc.stderr)
    assert "[server].http_port" in line and "'eighty'" in line and "whole number" in line


@pytest.mark.root
def test_a_reader_that_leaves_early_is_sigpipe_not_a_traceback(tmp_path: Path) -> None:
    prog = tmp_path / "many.py"
    prog.write_text("for i in range(200000):\n    print(i)\n")
    proc = subprocess.Popen(
        [str(_SANDLOT), "run", str(prog)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"0\n"
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=_TIMEOUT_S) == 128 + 13  # SIGPIPE, as a shell reports it
    assert err == b""  # no traceback, and no task of the run left pending behind


@pytest.mark.parametrize(
    ("args", "needs"),
    [(("serve", "--no-worker"), "--no-worker needs --redis"), (("worker",), "worker needs --redis")],
)
def test_distributed_commands_without_redis_are_usage_errors(args: tuple[str, ...], needs: str) -> None:
    proc = _sandlot(*args)
    lines = proc.stderr.decode().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert lines[0].startswith("sandlot: " + needs), lines[0]
