"""Input validation: Engine.prepare, relative paths, and the Result/Status contract.

Bad input must always end as a RejectedError naming the offending field,
before any sandbox is touched; nothing here runs a box.
"""

from __future__ import annotations

import pytest

from sandlot.config import LimitRequest, Settings
from sandlot.engine import MAX_ARG_BYTES, MAX_ARGS, MAX_FILES, Engine, PreparedJob
from sandlot.errors import RejectedError
from sandlot.languages import LanguageRegistry
from sandlot.models import Job, Limits, Result, SourceFile, Status
from sandlot.paths import MAX_PATH_BYTES, MAX_PATH_DEPTH, validate_relative_path
from tests.conftest import make_settings

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


def _job(code: bytes = b"print(1)\n", *, language: str = "python", **fields: object) -> Job:
    return Job(language=language, files=(SourceFile("main.py", code),), **fields)  # type: ignore[arg-type]


def _rejected(engine: Engine, job: Job, limits: LimitRequest | None = None) -> RejectedError:
    with pytest.raises(RejectedError) as info:
        engine.prepare(job, limits)
    assert str(info.value), "a rejection must say why"
    return info.value


# ------------------------------------------------------------ Engine.prepare


def test_prepare_accepts_a_valid_job(engine: Engine, settings: Settings) -> None:
    prepared = engine.prepare(_job(args=("a", "b c")))
    assert isinstance(prepared, PreparedJob)
    assert prepared.language.name == "python"
    assert prepared.limits == settings.run_defaults
    assert prepared.compile_limits == settings.compile_defaults


def test_prepare_resolves_aliases_and_limits(engine: Engine) -> None:
    prepared = engine.prepare(_job(language="py"), LimitRequest(time_limit=2, memory_limit=32))
    assert prepared.language.name == "python"
    assert prepared.limits.time_limit_s == 2.0
    assert prepared.limits.memory_limit_bytes == 32 * 1024 * 1024


def test_prepare_exact_limits_win(engine: Engine) -> None:
    exact = Limits(1.0, 2.0, 1 << 20, 3, 1 << 10, 1 << 10)
    assert engine.prepare(_job(limits=exact)).limits == exact


def test_unknown_language(engine: Engine) -> None:
    error = _rejected(engine, _job(language="cobol"))
    assert error.field == "language"
    assert "cobol" in str(error)


def test_no_files(engine: Engine) -> None:
    error = _rejected(engine, Job(language="python", files=()))
    assert error.field == "code"


def test_too_many_files(engine: Engine) -> None:
    files = tuple(SourceFile(f"f{i}.py", b"x = 1\n") for i in range(MAX_FILES + 1))
    error = _rejected(engine, Job(language="python", files=files))
    assert error.field == "files"


@pytest.mark.parametrize("code", [b"", b" ", b"\n\n", b" \t\r\n  \n"])
def test_empty_source(engine: Engine, code: bytes) -> None:
    error = _rejected(engine, _job(code))
    assert error.field == "code"
    assert "empty" in str(error)


@pytest.mark.parametrize("code", [b"print(1)\n# \xff\n", b"\xc3\x28", b"print('\xed\xa0\x80')\n", b"\x80abc"])
def test_non_utf8_source(engine: Engine, code: bytes) -> None:
    error = _rejected(engine, _job(code))
    assert error.field == "code"
    assert "UTF-8" in str(error)


def test_source_too_large(engine: Engine, settings: Settings) -> None:
    code = b"#" * settings.max_source_bytes + b"\n"
    error = _rejected(engine, _job(code))
    assert error.field == "code"
    assert "max_source_bytes" in str(error)


def test_source_size_counts_every_file(languages: LanguageRegistry) -> None:
    small = Engine(make_settings(max_source_bytes=100), languages)
    files = (SourceFile("main.py", b"print(1)\n"), SourceFile("data.txt", b"x" * 95))
    error = _rejected(small, Job(language="python", files=files))
    assert error.field == "code"
    small.prepare(Job(language="python", files=files[:1]))


def test_source_at_the_limit_is_accepted(languages: LanguageRegistry) -> None:
    small = Engine(make_settings(max_source_bytes=100), languages)
    small.prepare(_job(b"#" * 99 + b"\n"))


def test_too_many_args(engine: Engine) -> None:
    error = _rejected(engine, _job(args=tuple("a" for _ in range(MAX_ARGS + 1))))
    assert error.field == "args"
    engine.prepare(_job(args=tuple("a" for _ in range(MAX_ARGS))))


def test_args_too_long(engine: Engine) -> None:
    error = _rejected(engine, _job(args=("x" * (MAX_ARG_BYTES + 1),)))
    assert error.field == "args"


@pytest.mark.parametrize("args", [("a\x00b",), ("ok", "\x00")])
def test_nul_in_args(engine: Engine, args: tuple[str, ...]) -> None:
    error = _rejected(engine, _job(args=args))
    assert error.field == "args"
    assert "NUL" in str(error)


def test_args_not_encodable_as_utf8(engine: Engine) -> None:
    """A lone surrogate (what a non-UTF-8 command-line byte becomes) is bad input, not a crash."""
    error = _rejected(engine, _job(args=("\udcff",)))
    assert error.field == "args"


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        (LimitRequest(time_limit=1000), "time_limit"),
        (LimitRequest(wall_time_limit=121), "wall_time_limit"),
        (LimitRequest(memory_limit=0), "memory_limit"),
        (LimitRequest(memory_limit=1 << 20), "memory_limit"),
        (LimitRequest(max_processes=-1), "max_processes"),
        (LimitRequest(max_file_size=1 << 30), "max_file_size"),
        (LimitRequest(max_output=1 << 30), "max_output"),
    ],
)
def test_limits_out_of_range(engine: Engine, limits: LimitRequest, name: str) -> None:
    error = _rejected(engine, _job(), limits)
    assert error.field == name
    assert name in str(error)


def test_compile_limits_out_of_range(engine: Engine) -> None:
    with pytest.raises(RejectedError) as info:
        engine.prepare(_job(), None, LimitRequest(max_output=5 * 1024))
    assert info.value.field == "max_output"


# ------------------------------------------------------------ validate_relative_path


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "/",
        "..",
        "../x",
        "a/../../b",
        "a/..",
        ".",
        "./",
        "//",
        "a\x00b",
        "x" * (MAX_PATH_BYTES + 1),
        "/".join(["d"] * (MAX_PATH_DEPTH + 1)),
    ],
)
def test_relative_path_rejected(name: str) -> None:
    with pytest.raises(RejectedError) as info:
        validate_relative_path(name, field="files.name")
    assert info.value.field == "files.name"


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b.txt", ("a", "b.txt")),
        ("main.py", ("main.py",)),
        ("./a//b/", ("a", "b")),
        ("..a/b..", ("..a", "b..")),
        ("/".join(["d"] * MAX_PATH_DEPTH), ("d",) * MAX_PATH_DEPTH),
    ],
)
def test_relative_path_accepted(name: str, parts: tuple[str, ...]) -> None:
    assert validate_relative_path(name) == parts


def test_relative_path_default_field() -> None:
    with pytest.raises(RejectedError) as info:
        validate_relative_path("../escape")
    assert info.value.field == "path"


# ------------------------------------------------------------ Result and Status


def test_status_values() -> None:
    assert {s.value for s in Status} == {
        "ok",
        "runtime_error",
        "signaled",
        "timeout",
        "memory_limit",
        "output_limit",
        "compile_error",
        "internal_error",
        "rejected",
    }
    assert len(Status) == 9


def test_result_to_dict_keys_and_replacement() -> None:
    result = Result(
        status=Status.RUNTIME_ERROR,
        exit_code=1,
        stdout=b"ok \xff\xfe",
        stderr=b"\xc3\x28",
        compile_output=b"\x80",
        wall_time=0.1234567891,
        cpu_time=1.0,
        memory_peak=4096,
        language="python",
        message="exited with code 1",
    )
    data = result.to_dict()
    assert set(data) == _CONTRACT_KEYS
    assert data["status"] == "runtime_error"
    assert type(data["status"]) is str
    assert data["stdout"] == "ok \ufffd\ufffd"
    assert data["stderr"] == "\ufffd("
    assert data["compile_output"] == "\ufffd"
    assert data["wall_time"] == 0.123457
    assert data["memory_peak"] == 4096
    assert data["exit_code"] == 1
    assert data["signal"] is None
    assert data["truncated"] is False


def test_result_defaults_serialise() -> None:
    data = Result(status=Status.REJECTED, message="bad").to_dict()
    assert set(data) == _CONTRACT_KEYS
    assert data == {
        "status": "rejected",
        "exit_code": None,
        "signal": None,
        "stdout": "",
        "stderr": "",
        "compile_output": "",
        "wall_time": 0.0,
        "cpu_time": 0.0,
        "memory_peak": 0,
        "truncated": False,
        "language": "",
        "message": "bad",
    }


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (Result(status=Status.OK, exit_code=0), 0),
        (Result(status=Status.RUNTIME_ERROR, exit_code=7), 7),
        (Result(status=Status.SIGNALED, signal=11), 139),
        (Result(status=Status.TIMEOUT, signal=9), 137),
    ],
)
def test_shell_exit_code(result: Result, code: int) -> None:
    assert result.shell_exit_code == code
