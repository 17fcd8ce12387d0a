"""Rendering tasks as Judge0 submissions: status ids, language ids, fields, base64.

Status mapping (our ``Status`` -> Judge0 CE status id):

    queued 1 In Queue · running 2 Processing
    ok 3 Accepted, or 4 Wrong Answer when expected_output differs from stdout
       after Judge0's normalisation (each line right-stripped, then the whole)
    timeout 5 · compile_error 6 · runtime_error 11 (NZEC)
    signaled: SIGSEGV 7 · SIGXFSZ 8 · SIGFPE 9 · SIGABRT 10 · any other 12
    memory_limit 12 and output_limit 12 (Judge0 has no status of their own; the
       message says which) · internal_error 13 · rejected (only if the worker
       refuses what the door accepted) 13
    cancelled (signaled, message "cancelled ...") 12 Runtime Error (Other): Judge0
       cannot cancel a running submission, so it has no status for one; 12 is its
       catch-all for a run ended by something other than its own exit (not 13
       Internal Error: nothing failed), and ``message`` says "cancelled"

Like isolate, a run whose CPU time exceeded ``cpu_time_limit`` is a Time Limit
Exceeded even when ``cpu_extra_time`` let it finish. One deliberate departure:
an empty stdout compared with ``expected_output: ""`` is Accepted (Judge0 keeps
an empty stdout as null and calls that a Wrong Answer).

Text fields are null when empty, as in Judge0. With ``base64_encoded=true``
stdout, stderr, compile_output, source_code, stdin, expected_output and message
are base64 (``additional_files`` always is); without it, text that is not UTF-8
cannot be shown and the route answers Judge0's "use base64_encoded=true" error.
"""

from __future__ import annotations

import base64
import datetime
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandlot.api.judge0.submission import Submission
from sandlot.broker import TaskState
from sandlot.errors import RejectedError
from sandlot.languages import Language, LanguageRegistry
from sandlot.models import Result, Status

JUDGE0_VERSION = "1.13.1"  # the Judge0 CE API this door speaks (the judge0 client keys its language ids on it)

STATUSES: dict[int, str] = {
    1: "In Queue",
    2: "Processing",
    3: "Accepted",
    4: "Wrong Answer",
    5: "Time Limit Exceeded",
    6: "Compilation Error",
    7: "Runtime Error (SIGSEGV)",
    8: "Runtime Error (SIGXFSZ)",
    9: "Runtime Error (SIGFPE)",
    10: "Runtime Error (SIGABRT)",
    11: "Runtime Error (NZEC)",
    12: "Runtime Error (Other)",
    13: "Internal Error",
    14: "Exec Format Error",
}
_RUBY_WHITESPACE = b" \t\n\v\f\r\x00"  # what Ruby's rstrip removes
_SIGNAL_STATUS: dict[int, int] = {signal.SIGSEGV: 7, signal.SIGXFSZ: 8, signal.SIGFPE: 9, signal.SIGABRT: 10}

# Judge0 CE's ids for the languages we offer, and how it names them (with our probed versions).
LANGUAGE_IDS: dict[int, tuple[str, str]] = {
    46: ("bash", "Bash ({})"),
    50: ("c", "C (GCC {})"),
    54: ("cpp", "C++ (GCC {})"),
    60: ("go", "Go ({})"),
    62: ("java", "Java (OpenJDK {})"),
    63: ("javascript", "JavaScript (Node.js {})"),
    71: ("python", "Python ({})"),
}

DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
# The limits and options a submission asked for, echoed back as given (``fields=*`` lists them in this order).
_LIMIT_FIELDS = (
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
)
_OPTION_FIELDS = ("compiler_options", "command_line_arguments", "redirect_stderr_to_stdout", "callback_url")
ALL_FIELDS = (
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    *_LIMIT_FIELDS,
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    *_OPTION_FIELDS,
    "additional_files",
    "enable_network",
    "status",
    "language",
)
_REQUEST_DECIMALS = ("cpu_time_limit", "cpu_extra_time", "wall_time_limit")  # shown as "2.0", as Ruby does
_REQUEST_VALUES = tuple(
    name for name in (*_LIMIT_FIELDS, *_OPTION_FIELDS, "enable_network") if name not in _REQUEST_DECIMALS
)


class NotUtf8(Exception):
    """A requested text field cannot be shown without base64."""


class InvalidFields(RejectedError):
    """``?fields=`` names fields Judge0 does not have (a 400)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"invalid fields: [{', '.join(names)}]", field="fields")


@dataclass(frozen=True)
class Judge0Language:
    id: int
    name: str  # Judge0's display name, e.g. "Python (3.11.2)"
    language: Language  # ours
    environment: str = ""  # where it runs ([judge0.languages]); "": the host


def offered_languages(registry: LanguageRegistry, versions: Mapping[str, str]) -> dict[int, Judge0Language]:
    """The Judge0 ids of the languages this server offers, in id order."""
    offered = {lang.name: lang for lang in registry.offered()}
    table: dict[int, Judge0Language] = {}
    for language_id, (name, label) in sorted(LANGUAGE_IDS.items()):
        if name in offered:
            table[language_id] = Judge0Language(language_id, label.format(versions.get(name, "unknown")), offered[name])
    return table


def parse_fields(raw: str | None) -> tuple[str, ...]:
    """``?fields=a,b`` (``*`` for all; none for the defaults); InvalidFields names the unknown ones."""
    if raw is None or not raw.strip():
        return DEFAULT_FIELDS
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if "*" in names:
        return ALL_FIELDS
    invalid = [name for name in names if name not in ALL_FIELDS]
    if invalid:
        raise InvalidFields(invalid)
    return tuple(dict.fromkeys(names))


def judge0_status(result: Result, submission: Submission | None, stdout: bytes) -> int:
    """The Judge0 status id of a finished task (see the module docstring)."""
    status = result.status
    if status is Status.COMPILE_ERROR:
        return 6
    if status in (Status.INTERNAL_ERROR, Status.REJECTED):
        return 13
    if result.cancelled:  # before the CPU check: what a cancelled run had used is no verdict
        return 12
    if status is Status.TIMEOUT or (submission is not None and result.cpu_time > submission.cpu_time_limit):
        return 5
    if status is Status.SIGNALED:
        return _SIGNAL_STATUS.get(result.signal or 0, 12)
    if status is Status.RUNTIME_ERROR:
        return 11
    if status is not Status.OK:
        return 12
    expected = submission.expected_output if submission is not None else None
    if expected is not None and _normalise(expected) != _normalise(stdout):
        return 4
    return 3


def render_submission(
    token: str,
    state: TaskState,
    submission: Submission | None,
    merged_output: bytes | None,
    *,
    fields: tuple[str, ...],
    base64_encoded: bool,
    languages: Mapping[int, Judge0Language],
) -> dict[str, Any]:
    """The submission object with the requested fields; NotUtf8 if one cannot be shown as text."""
    values = _outcome(state, submission, merged_output)
    values["token"] = token
    values["created_at"] = _timestamp(submission.created if submission else state.created)
    language_id = submission.language_id if submission else _language_id(state, languages)
    values["language_id"] = language_id
    known = languages.get(language_id) if language_id is not None else None
    values["language"] = {"id": language_id, "name": known.name} if known else None
    for key in ("source_code", "stdin", "expected_output"):
        values[key] = getattr(submission, key) if submission else None
    for key in _REQUEST_DECIMALS:
        values[key] = str(float(getattr(submission, key))) if submission else None
    for key in _REQUEST_VALUES:
        values[key] = getattr(submission, key) if submission else None
    archive = submission.additional_files if submission else None
    values["additional_files"] = base64.b64encode(archive).decode() if archive else None
    body: dict[str, Any] = {}
    for name in fields:
        value = values[name]
        if name in ("stdout", "stderr", "compile_output", "source_code", "stdin", "expected_output"):
            value = _text(value, base64_encoded)
        elif name == "message" and value is not None and base64_encoded:
            value = base64.b64encode(value.encode()).decode()
        body[name] = value
    return body


def _outcome(state: TaskState, submission: Submission | None, merged_output: bytes | None) -> dict[str, Any]:
    """The execution's half of a submission: status, outputs, measurements."""
    values: dict[str, Any] = dict.fromkeys(
        ("stdout", "stderr", "compile_output", "time", "wall_time", "memory", "exit_code", "exit_signal", "message")
    )
    values["finished_at"] = None
    if state.exit is None:
        status_id = 1 if state.status == "queued" else 2
    else:
        result = state.exit.result
        redirect = submission is not None and submission.redirect_stderr_to_stdout
        stdout = merged_output if redirect and merged_output is not None else result.stdout
        stderr = b"" if redirect else result.stderr
        status_id = judge0_status(result, submission, stdout)
        values["finished_at"] = _timestamp(state.exit.time)
        values["compile_output"] = result.compile_output or None
        if status_id == 6:  # Judge0 keeps only the compiler's words; a compile timeout is said there too
            values["compile_output"] = result.compile_output or result.message.encode() or None
        elif status_id == 13:
            values["message"] = result.message or None
        else:
            values.update(
                stdout=stdout or None,
                stderr=stderr or None,
                time=f"{result.cpu_time:.3f}",
                wall_time=f"{result.wall_time:.3f}",
                memory=result.memory_peak // 1024,
                exit_code=result.exit_code if result.exit_code is not None else 0,  # isolate's default
                exit_signal=result.signal,
                message=result.message or None,
            )
            if status_id == 5 and result.status is not Status.TIMEOUT:
                values["message"] = "Time limit exceeded"
    values["status_id"] = status_id
    values["status"] = {"id": status_id, "description": STATUSES[status_id]}
    return values


def _language_id(state: TaskState, languages: Mapping[int, Judge0Language]) -> int | None:
    """For a task submitted through another door: its language, if it has a Judge0 id."""
    name = state.exit.result.language if state.exit else ""
    return next((i for i, lang in languages.items() if lang.language.name == name), None)


def _normalise(output: bytes) -> bytes:
    """Judge0's comparison: every line right-stripped, then trailing blank lines and spaces dropped."""
    return b"\n".join(line.rstrip(_RUBY_WHITESPACE) for line in output.split(b"\n")).rstrip(_RUBY_WHITESPACE)


def _text(value: bytes | None, base64_encoded: bool) -> str | None:
    if value is None:
        return None
    if base64_encoded:
        return base64.b64encode(value).decode()
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8 from exc


def _timestamp(epoch: float) -> str:
    """Rails' JSON time: ISO 8601 in UTC with milliseconds and a Z."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
