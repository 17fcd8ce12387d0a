"""What the sync and async clients share, with no I/O: request bodies, answers parsed, errors mapped.

Both clients build the same requests here and read the same answers here, so they differ only in
``await``. Everything from the server is checked before it becomes a typed value: an answer that
does not parse is ``Unavailable`` (the server is not one we understand), never a KeyError.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, cast
from urllib.parse import quote

import httpx

from sandlot_client._errors import Busy, Conflict, NotFound, Rejected, SandlotError, Unauthorized, Unavailable
from sandlot_client._types import FileInfo, Limits, Output, Result, SessionInfo, Status, StreamName, TaskState

API = "/api/v1"
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0  # submit, get, cancel, files: the server answers these at once
STREAM_IDLE_TIMEOUT_S = 60.0  # the event stream carries a keep-alive every 15 s; 60 s of silence is a dead server

Content = str | bytes
FilesArg = Mapping[str, Content] | Sequence[tuple[str, Content]] | None
LimitsArg = Limits | Mapping[str, float | int] | None
OutputCallback = Callable[[str], object]  # the async client also awaits what it returns, if awaitable


# ----------------------------------------------------------------- requests


def base_url(url: str) -> str:
    """The server URL, checked: http(s)://HOST[:PORT][/prefix]."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise Rejected(f"server URL {url!r}: {exc}", field="url") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Rejected(f"server URL {url!r}: must be http://HOST[:PORT] or https://...", field="url")
    return url.rstrip("/")


def headers(api_key: str | None, user_agent: str) -> dict[str, str]:
    found = {"User-Agent": user_agent, "Accept": "application/json"}
    if api_key:
        found["Authorization"] = f"Bearer {api_key}"
    return found


def _encoded(content: Content) -> tuple[str, str]:
    """(content, encoding) for a JSON body: text as it is, bytes as base64 (any bytes survive)."""
    if isinstance(content, str):
        return content, "utf8"
    if isinstance(content, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(content)).decode(), "base64"
    raise Rejected(f"expected str or bytes, not {type(content).__name__}")


def _file(name: str, content: Content) -> dict[str, str]:
    if not isinstance(name, str):
        raise Rejected(f"files: a file name must be a str, not {type(name).__name__}", field="files")
    text, encoding = _encoded(content)
    return {"name": name, "content": text, "encoding": encoding}


def execution_body(
    language: str | None,
    code: Content | None,
    *,
    stdin: Content | None = None,
    files: FilesArg = None,
    args: Sequence[str] = (),
    limits: LimitsArg = None,
    environment: str | None = None,
    isolation: str | None = None,
    session_id: str | None = None,
) -> dict[str, Any]:
    """The JSON of ``POST /api/v1/execute`` (and ``/run``).

    ``code`` is the program; ``files`` go next to it (with no ``code``, the file named main, else the
    first, is the program). The server takes code or files, so with both the code travels as the
    file ``main`` (what the server names ``code`` itself).
    """
    body: dict[str, Any] = {}
    if language is not None:
        body["language"] = language
    extra = list(files.items()) if isinstance(files, Mapping) else list(files or ())
    if code is not None and not extra and isinstance(code, str):
        body["code"] = code
    elif code is not None or extra:
        listed = [("main", code)] if code is not None else []
        body["files"] = [_file(name, content) for name, content in [*listed, *extra]]
    if stdin is not None:
        body["stdin"], body["stdin_encoding"] = _encoded(stdin)
    if args:
        if isinstance(args, str):
            raise Rejected("args: a list of strings, not one string", field="args")
        body["args"] = list(args)
    if limits is not None:
        chosen = asdict(limits) if isinstance(limits, Limits) else dict(limits)
        body["limits"] = {k: v for k, v in chosen.items() if v is not None}
    for key, value in (("environment", environment), ("isolation", isolation), ("session_id", session_id)):
        if value is not None:
            body[key] = value
    return body


def language(name: str | None) -> str:
    """A session's run needs a language: the run's, else the session's."""
    if not name:
        raise Rejected("language: this session has none; pass language=", field="language")
    return name


def task_path(task_id: str) -> str:
    return f"{API}/tasks/{quote(task_id, safe='')}"


def session_path(session_id: str) -> str:
    return f"{API}/sessions/{quote(session_id, safe='')}"


def file_path(session_id: str, path: str) -> str:
    """The URL path of a session file. Dot segments are escaped: a URL would resolve ``a/../b`` to ``b``
    before the server saw it, where the server must see (and refuse) what the caller wrote."""
    segments = [quote(part, safe="") for part in path.lstrip("/").split("/")]
    escaped = [part.replace(".", "%2E") if part in (".", "..") else part for part in segments]
    return f"{session_path(session_id)}/files/{'/'.join(escaped)}"


def file_content(data: Content) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def events_request_headers(last_event_id: str | None) -> dict[str, str]:
    found = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        found["Last-Event-ID"] = last_event_id
    return found


# ------------------------------------------------------------------ answers


def check(response: httpx.Response) -> None:
    """Raise the server's error (``{"error": {"code", "message", "field"}}``) as its typed class."""
    status = response.status_code
    if status < 400:
        return
    code, message, field = "", response.reason_phrase or f"HTTP {status}", None
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        field = error.get("field") if isinstance(error.get("field"), str) else None
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()
        if text and len(text) < 500 and "<" not in text:  # a proxy's one-line answer, not an HTML page
            message = text
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if status in (401, 403):
        raise Unauthorized(f"{code or status}: {message}", code=code, http_status=status)
    if status == 404:
        raise NotFound(message, code=code, http_status=status)
    if status == 409:
        raise Conflict(message, code=code, http_status=status)
    if status in (429, 503):
        suffix = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        raise Busy(f"{message}{suffix}", retry_after=retry_after, code=code, http_status=status)
    if 400 <= status < 500 or status == 507:  # 507: the session's workdir is full, the caller's doing
        raise Rejected(message, field=field, code=code, http_status=status)
    raise Unavailable(f"the server answered {status}: {message}", code=code, http_status=status)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(exc: httpx.HTTPError, url: str, timeout_s: float) -> Unavailable:
    """A failure with no answer, in words: 'cannot reach URL: connection refused'."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Unavailable(f"cannot reach {url}: no answer within {CONNECT_TIMEOUT_S:g} s")
    if isinstance(exc, httpx.ConnectError):
        return Unavailable(f"cannot reach {url}: {_reason(exc)}")
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"{url} did not answer within {timeout_s:g} s")
    return Unavailable(f"request to {url} failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The root cause in words: 'connection refused' rather than '[Errno 111] Connection refused'."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def decode(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Unavailable("the server answered something that is not JSON") from exc
    if not isinstance(value, dict):
        raise Unavailable("the server answered JSON that is not an object")
    return cast(Mapping[str, Any], value)


def _unexpected(what: str) -> Unavailable:
    return Unavailable(f"unexpected answer from the server: {what}")


def string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _unexpected(f"{key} is not a string")
    return value


def result(data: Mapping[str, Any], task_id: str | None = None) -> Result:
    """A Result from the server's result JSON (other keys, such as stages, are ignored)."""

    def optional_int(key: str) -> int | None:
        value = data.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise _unexpected(f"{key} is {value!r}")

    value = data.get("value")
    if value is not None and not isinstance(value, str):
        raise _unexpected(f"value is {value!r}")
    found_id = data.get("task_id")
    try:
        return Result(
            status=Status(str(data.get("status"))),
            exit_code=optional_int("exit_code"),
            signal=optional_int("signal"),
            stdout=str(data.get("stdout", "")),
            stderr=str(data.get("stderr", "")),
            compile_output=str(data.get("compile_output", "")),
            wall_time=float(data.get("wall_time", 0.0)),
            cpu_time=float(data.get("cpu_time", 0.0)),
            memory_peak=optional_int("memory_peak"),
            truncated=bool(data.get("truncated", False)),
            language=str(data.get("language", "")),
            message=str(data.get("message", "")),
            value=value,
            task_id=found_id if isinstance(found_id, str) else task_id,
        )
    except (ValueError, TypeError) as exc:
        raise _unexpected(f"a result that does not parse ({exc})") from exc


def task_state(data: Mapping[str, Any]) -> TaskState:
    status = data.get("status", "queued")
    if status not in ("queued", "running", "done"):
        raise _unexpected(f"task status {status!r}")
    task_id = string(data, "task_id")
    raw = data.get("result")
    return TaskState(task_id, status, result(raw, task_id) if isinstance(raw, dict) else None)


def output(data: Mapping[str, Any]) -> Output:
    stream = data.get("stream")
    if stream not in ("stdout", "stderr"):
        raise _unexpected(f"output stream {stream!r}")
    return Output(str(data.get("stage", "run")), cast(StreamName, stream), string(data, "data"))


def session_info(data: Mapping[str, Any]) -> SessionInfo:
    try:
        expires = float(data.get("expires_in_s", 0.0))
    except (TypeError, ValueError) as exc:
        raise _unexpected("expires_in_s is not a number") from exc
    language = data.get("language")
    return SessionInfo(
        session_id=string(data, "session_id"),
        expires_in_s=expires,
        isolation=str(data.get("isolation", "")),
        stateful=data.get("stateful") is True,
        language=language if isinstance(language, str) else None,
    )


def session_body(stateful: bool, language: str | None, isolation: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if stateful:
        body["stateful"] = True
        if language is not None:
            body["language"] = language
    if isolation is not None:
        body["isolation"] = isolation
    return body


def cell_body(code: Content, stdin: Content | None, limits: LimitsArg, session_id: str) -> dict[str, Any]:
    """A stateful session's cell: code as text, no language (the session has its own)."""
    text = code if isinstance(code, str) else _text(code, "code")
    return execution_body(None, text, stdin=stdin, limits=limits, session_id=session_id)


def _text(data: bytes, what: str) -> str:
    try:
        return bytes(data).decode()
    except UnicodeDecodeError as exc:
        raise Rejected(f"{what}: a cell is UTF-8 text", field=what) from exc


def not_stateful(info: SessionInfo) -> SandlotError:
    return Rejected(
        f"the server made session {info.session_id} without state: it does not offer stateful sessions",
        field="stateful",
    )


def file_list(data: Mapping[str, Any]) -> list[FileInfo]:
    entries = data.get("files")
    if not isinstance(entries, list):
        raise _unexpected("files is not a list")
    try:
        return [FileInfo(str(entry["path"]), int(entry["size"])) for entry in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise _unexpected(f"a file entry that does not parse ({exc})") from exc
