"""A Judge0 submission: the request a Judge0 client sends, validated, and the TaskSpec it becomes.

Judge0 speaks its own units (CPU and wall seconds, memory, stack and file size
in KB) and its own error shape: a 422 whose body maps each field to its
messages, ``{"cpu_time_limit": ["must be less than or equal to 60"]}``. Every
field is checked and all mistakes are reported together, as Rails does.

How the Judge0 knobs map onto ours:

- ``cpu_time_limit`` + ``cpu_extra_time`` is our CPU limit (clipped to our
  maximum); like isolate, a run whose CPU time went past ``cpu_time_limit``
  alone is still reported as Time Limit Exceeded (``render``).
- ``wall_time_limit``, ``max_processes_and_or_threads``, ``max_file_size`` map
  one to one; ``memory_limit`` KB becomes whole MiB, rounded up.
- ``stack_limit`` is checked against the server's stack rlimit and otherwise
  ignored; the per-process/thread switches are accepted and ignored (our limits
  always cover the whole box); ``number_of_runs`` is accepted, the program runs
  once; ``compiler_options`` are accepted and ignored: our compile commands are
  data with no place for user flags, and splicing them in would be an injection.
- ``command_line_arguments`` is split like a shell would (``shlex``) into argv;
  nothing is ever given to a shell, so ``;``, ``$`` or backquotes are literal.
- ``additional_files`` (a base64 zip, as in Judge0) is unpacked here, with
  caps on count and size that hold whatever the zip headers claim.
- ``enable_network`` is refused: boxes never have a network.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import math
import shlex
import time
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandlot.broker import TaskSpec
from sandlot.config import KIB, LimitRequest, Settings
from sandlot.engine import MAX_FILES
from sandlot.errors import RejectedError
from sandlot.models import SourceFile
from sandlot.paths import validate_relative_path

MAX_CPU_EXTRA_TIME_S = 5.0  # Judge0's default maximum
DEFAULT_CPU_EXTRA_TIME_S = 1.0  # Judge0's default
MIN_MEMORY_LIMIT_KB = 2048  # Judge0 refuses less
MAX_NUMBER_OF_RUNS = 20
MAX_OPTION_CHARS = 512  # compiler_options, command_line_arguments
MAX_CALLBACK_URL_CHARS = 2048

Errors = dict[str, list[str]]


class Judge0Invalid(RejectedError):
    """A submission Judge0 would answer with 422: every field's messages."""

    def __init__(self, errors: Errors) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Judge0Limits:
    """The server's defaults and maxima in Judge0's units (also what /config_info shows)."""

    cpu_time_limit: float
    max_cpu_time_limit: float
    wall_time_limit: float
    max_wall_time_limit: float
    memory_limit_kb: int
    max_memory_limit_kb: int
    stack_limit_kb: int
    max_processes: int
    max_max_processes: int
    max_file_size_kb: int
    max_max_file_size_kb: int
    max_extract_size_kb: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Judge0Limits:
        defaults, maxima = settings.run_defaults, settings.run_maxima
        return cls(
            cpu_time_limit=min(defaults.time_limit_s, maxima.time_limit_s),
            max_cpu_time_limit=maxima.time_limit_s,
            wall_time_limit=defaults.wall_time_limit_s,
            max_wall_time_limit=maxima.wall_time_limit_s,
            memory_limit_kb=defaults.memory_limit_bytes // KIB,
            max_memory_limit_kb=maxima.memory_limit_bytes // KIB,
            stack_limit_kb=settings.stack_bytes // KIB,
            max_processes=defaults.max_processes,
            max_max_processes=maxima.max_processes,
            max_file_size_kb=defaults.max_file_size_bytes // KIB,
            max_max_file_size_kb=maxima.max_file_size_bytes // KIB,
            max_extract_size_kb=settings.max_source_bytes // KIB,
        )


@dataclass(frozen=True)
class Submission:
    """What a client asked for, with Judge0's defaults filled in (rendered back by ``fields``)."""

    token: str
    tenant: str
    language_id: int
    language: str  # our name for it
    source_code: bytes
    stdin: bytes | None
    expected_output: bytes | None
    cpu_time_limit: float
    cpu_extra_time: float
    wall_time_limit: float
    memory_limit: int  # KB
    stack_limit: int  # KB
    max_processes_and_or_threads: int
    enable_per_process_and_thread_time_limit: bool
    enable_per_process_and_thread_memory_limit: bool
    max_file_size: int  # KB
    number_of_runs: int
    redirect_stderr_to_stdout: bool
    enable_network: bool
    compiler_options: str | None
    command_line_arguments: str | None
    callback_url: str | None
    additional_files: bytes | None  # the zip as sent
    extra_files: tuple[SourceFile, ...] = ()
    args: tuple[str, ...] = ()
    created: float = field(default_factory=time.time)
    environment: str = ""  # the language id's environment ([judge0.languages]); "": the host

    @property
    def size(self) -> int:
        """Roughly the bytes this record holds (for the store's budget)."""
        texts = (self.source_code, self.stdin or b"", self.expected_output or b"", self.additional_files or b"")
        return sum(len(t) for t in texts) + sum(len(f.content) for f in self.extra_files) + 1024

    def to_spec(self, max_cpu_time_s: float) -> TaskSpec:
        limits = LimitRequest(
            time_limit=min(self.cpu_time_limit + self.cpu_extra_time, max_cpu_time_s),
            wall_time_limit=self.wall_time_limit,
            memory_limit=math.ceil(self.memory_limit / KIB),
            max_processes=self.max_processes_and_or_threads,
            max_file_size=self.max_file_size,
        )
        return TaskSpec(
            id=self.token,
            tenant=self.tenant,
            language=self.language,
            files=(SourceFile("main", self.source_code), *self.extra_files),
            stdin=self.stdin or b"",
            args=self.args,
            limits=limits,
            created=self.created,
            environment=self.environment,
        )


def new_token() -> str:
    """Judge0's tokens are UUIDs; ours are also the task ids every other door knows."""
    return str(uuid.uuid4())


def parse_submission(
    data: Any,
    *,
    tenant: str,
    base64_encoded: bool,
    limits: Judge0Limits,
    languages: Mapping[int, str],
    allow_private_callbacks: bool,
    environments: Mapping[int, str] | None = None,
) -> Submission:
    """Validate one submission body; raises Judge0Invalid listing every bad field."""
    if not isinstance(data, dict):
        raise Judge0Invalid({"base": ["the submission must be a JSON object"]})
    p = _Parser(data)
    source = p.text("source_code", base64_encoded)
    if not source or not source.strip():
        p.add("source_code", "can't be blank")
    language_id = p.integer("language_id")
    language = ""
    if language_id is None:
        p.add("language_id", "can't be blank")
    elif language_id not in languages:
        p.add("language_id", f"language with id {language_id} doesn't exist")
    else:
        language = languages[language_id]
    stdin = p.text("stdin", base64_encoded)
    expected = p.text("expected_output", base64_encoded)
    cpu = p.number("cpu_time_limit", limits.cpu_time_limit, maximum=limits.max_cpu_time_limit)
    extra = p.number("cpu_extra_time", DEFAULT_CPU_EXTRA_TIME_S, maximum=MAX_CPU_EXTRA_TIME_S, zero_ok=True)
    wall = p.number("wall_time_limit", limits.wall_time_limit, maximum=limits.max_wall_time_limit)
    memory = p.integer_limit("memory_limit", limits.memory_limit_kb, limits.max_memory_limit_kb, MIN_MEMORY_LIMIT_KB)
    stack = p.integer_limit("stack_limit", limits.stack_limit_kb, limits.stack_limit_kb, 0)
    processes = p.integer_limit("max_processes_and_or_threads", limits.max_processes, limits.max_max_processes, 1)
    file_size = p.integer_limit("max_file_size", limits.max_file_size_kb, limits.max_max_file_size_kb, 1)
    runs = p.integer_limit("number_of_runs", 1, MAX_NUMBER_OF_RUNS, 1)
    per_process_time = p.boolean("enable_per_process_and_thread_time_limit")
    per_process_memory = p.boolean("enable_per_process_and_thread_memory_limit")
    redirect = p.boolean("redirect_stderr_to_stdout")
    network = p.boolean("enable_network")
    if network:
        p.add("enable_network", "enabling network is not allowed")
    compiler_options = p.option("compiler_options")
    arguments = p.option("command_line_arguments")
    args: tuple[str, ...] = ()
    if arguments:
        try:
            args = tuple(shlex.split(arguments))
        except ValueError as exc:
            p.add("command_line_arguments", f"cannot be split into arguments ({exc})")
    callback_url = p.option("callback_url", MAX_CALLBACK_URL_CHARS)
    if callback_url:
        problem = callback_url_problem(callback_url, allow_private=allow_private_callbacks)
        if problem:
            p.add("callback_url", problem)
    archive = p.text("additional_files", True)  # base64 whatever base64_encoded says, as in Judge0
    extra_files: tuple[SourceFile, ...] = ()
    if archive:
        budget = max(0, limits.max_extract_size_kb * KIB - len(source or b""))
        try:
            extra_files = unzip_files(archive, max_files=MAX_FILES - 1, max_bytes=budget)
        except RejectedError as exc:
            p.add("additional_files", str(exc))
    if p.errors:
        raise Judge0Invalid(p.errors)
    assert source is not None and language_id is not None
    return Submission(
        token=new_token(),
        tenant=tenant,
        language_id=language_id,
        language=language,
        source_code=source,
        stdin=stdin,
        expected_output=expected,
        cpu_time_limit=cpu,
        cpu_extra_time=extra,
        wall_time_limit=wall,
        memory_limit=memory,
        stack_limit=stack,
        max_processes_and_or_threads=processes,
        enable_per_process_and_thread_time_limit=per_process_time,
        enable_per_process_and_thread_memory_limit=per_process_memory,
        max_file_size=file_size,
        number_of_runs=runs,
        redirect_stderr_to_stdout=redirect,
        enable_network=False,
        compiler_options=compiler_options,
        command_line_arguments=arguments,
        callback_url=callback_url,
        additional_files=archive,
        extra_files=extra_files,
        args=args,
        environment=(environments or {}).get(language_id, ""),
    )


def callback_url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why a callback URL is refused at submit time, or None (host names are checked again on delivery)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if not allow_private:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if not address.is_global:
            return "must not point to a private, loopback or link-local address"
    return None


def unzip_files(archive: bytes, *, max_files: int, max_bytes: int) -> tuple[SourceFile, ...]:
    """The regular files of a zip, refusing more than max_files or max_bytes, whatever the headers say."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise RejectedError(f"contains more than {max_files} files")
        files: list[SourceFile] = []
        left = max_bytes
        for member in members:
            name = member.filename
            try:
                validate_relative_path(name)
            except RejectedError as exc:
                raise RejectedError(f"contains a file name that leaves the working directory: {name!r}") from exc
            with zf.open(member) as stream:
                content = stream.read(left + 1)  # a lying header cannot make us read more
            if len(content) > left:
                raise RejectedError(f"unpacks to more than {max_bytes // KIB} KB")
            left -= len(content)
            files.append(SourceFile(name, content))
    # RuntimeError: an encrypted member; zlib.error: a corrupt deflate stream.
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, zlib.error, OSError) as exc:
        raise RejectedError(f"is not a usable zip archive ({exc})") from exc
    return tuple(files)


class _Parser:
    """Reads one body field by field, collecting Rails-style messages instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.errors: Errors = {}

    def add(self, key: str, message: str) -> None:
        self.errors.setdefault(key, []).append(message)

    def text(self, key: str, encoded: bool) -> bytes | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.add(key, "must be a string")
            return None
        if not encoded:
            return value.encode()
        try:
            # Lenient like Ruby's decode64: line breaks (encode64 adds them) and blanks are skipped.
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            self.add(key, "is not valid base64")
            return None

    def option(self, key: str, max_chars: int = MAX_OPTION_CHARS) -> str | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.add(key, "must be a string")
            return None
        if len(value) > max_chars:
            self.add(key, f"is too long (maximum is {max_chars} characters)")
        if "\x00" in value:
            self.add(key, "must not contain NUL")
        return value

    def _raw_number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.add(key, "is not a number")
            return None
        try:
            number = float(value)
        except ValueError:
            self.add(key, "is not a number")
            return None
        if not math.isfinite(number):
            self.add(key, "is not a number")
            return None
        return number

    def integer(self, key: str) -> int | None:
        number = self._raw_number(key)
        if number is None:
            return None
        if not number.is_integer():
            self.add(key, "must be an integer")
            return None
        return int(number)

    def number(self, key: str, default: float, *, maximum: float, zero_ok: bool = False) -> float:
        number = self._raw_number(key)
        if number is None:
            return default
        if number < 0 or (number == 0 and not zero_ok):
            self.add(key, f"must be greater than {'or equal to ' if zero_ok else ''}0")
        elif number > maximum:
            self.add(key, f"must be less than or equal to {maximum:g}")
        return number

    def integer_limit(self, key: str, default: int, maximum: int, minimum: int) -> int:
        number = self.integer(key)
        if number is None:
            return default
        if number < minimum:
            self.add(key, f"must be greater than or equal to {minimum}")
        elif number > maximum:
            self.add(key, f"must be less than or equal to {maximum}")
        return number

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return bool(value)
        if value in ("true", "1", 1):
            return True
        if value in ("false", "0", 0, ""):
            return False
        self.add(key, "must be true or false")
        return False
