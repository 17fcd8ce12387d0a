"""A small synchronous client of a sandlot server's HTTP API (what ``sandlot submit`` and ``result`` use).

Theory of operation
-------------------
``SandlotClient`` queues an execution (``POST /api/v1/execute``), reads a
task's state (``GET /api/v1/tasks/{id}``), cancels it (``DELETE``) and follows
its Server-Sent Events (``GET /api/v1/tasks/{id}/events``), parsed line by line
as they arrive so output is handed on while the program still runs. ``wait``
follows the events to the ``exit`` event and reconnects with ``Last-Event-ID``
when a stream breaks before it.

Everything is rebuilt from the server's JSON into the shared vocabulary
(``Result``, ``Status``); nothing here imports the server. Every failure is a
``ClientError`` with one line of text and a status that keeps the two kinds of
"not the program's doing" apart: ``rejected`` when the server refused the
request (a 4xx: bad input, no key, unknown task), ``internal_error`` when it
could not be reached or failed itself (connection refused, timeouts, 5xx).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx

from sandlot import __version__
from sandlot.config import LimitRequest
from sandlot.errors import RejectedError, SandlotError
from sandlot.languages import LanguageRegistry
from sandlot.models import Result, SourceFile, Status, StreamName

DEFAULT_SERVER = "http://127.0.0.1:8080"
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0  # submit, get, cancel: the server answers these at once
STREAM_IDLE_TIMEOUT_S = 60.0  # the event stream carries a keep-alive every 15 s; 60 s of silence is a dead server
MAX_RECONNECTS = 3  # event streams broken before the result, per wait

_API = "/api/v1"

TaskStatus = Literal["queued", "running", "done"]


class ClientError(SandlotError):
    """The server refused the request (``Status.REJECTED``) or could not serve it (``Status.INTERNAL_ERROR``)."""

    def __init__(self, status: Status, message: str, *, http_status: int | None = None) -> None:
        super().__init__(" ".join(message.splitlines()))  # one line, whatever a server put in its message
        self.status = status
        self.http_status = http_status


class _StreamBroken(ClientError):
    """An event stream ended or failed after it had started: worth reconnecting."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.INTERNAL_ERROR, message)


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: its type, its data lines joined, and the last event id seen so far."""

    event: str
    data: str
    id: str | None = None


@dataclass(frozen=True)
class Output:
    """A piece of a task's output, decoded by the server (``stage`` is ``run``, ``compile`` or a command)."""

    stage: str
    stream: StreamName
    text: str


@dataclass(frozen=True)
class TaskState:
    """A task as ``GET /api/v1/tasks/{id}`` describes it; ``result`` once it is done."""

    task_id: str
    status: TaskStatus
    result: Result | None = None


class SandlotClient:
    """One server, one optional API key; a context manager that closes its connections."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ClientError(Status.REJECTED, f"server URL {base_url!r}: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ClientError(Status.REJECTED, f"server URL {base_url!r}: must be http://HOST[:PORT] or https://...")
        headers = {"User-Agent": f"sandlot/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,  # the server is named explicitly; a proxy from the environment is not wanted
            transport=transport,  # None: real connections (tests pass an httpx.MockTransport)
        )

    def __enter__(self) -> SandlotClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------- requests

    def submit(
        self,
        language: str,
        files: Sequence[SourceFile],
        *,
        stdin: bytes = b"",
        args: Sequence[str] = (),
        limits: LimitRequest | None = None,
        session_id: str | None = None,
        isolation: str | None = None,
        environment: str | None = None,
    ) -> TaskState:
        """Queue an execution (the first file is the program), in ``environment`` if given; its id and status."""
        try:
            stdin_text = stdin.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ClientError(
                Status.REJECTED, f"stdin: not UTF-8 text (byte {exc.start}); the HTTP API carries stdin as text"
            ) from exc
        body: dict[str, Any] = {
            "language": language,
            "files": [
                {"name": f.name, "content": base64.b64encode(f.content).decode(), "encoding": "base64"} for f in files
            ],
            "stdin": stdin_text,
            "args": list(args),
        }
        chosen = {k: v for k, v in asdict(limits).items() if v is not None} if limits else {}
        if chosen:
            body["limits"] = chosen
        if session_id is not None:
            body["session_id"] = session_id
        if isolation is not None:
            body["isolation"] = isolation
        if environment:
            body["environment"] = environment
        answer = self._json(self._request("POST", f"{_API}/execute", json=body))
        return TaskState(_str(answer, "task_id"), _task_status(answer.get("status", "queued")))

    def get(self, task_id: str) -> TaskState:
        """The task's state, with its result when it is done."""
        answer = self._json(self._request("GET", _task_path(task_id)))
        raw = answer.get("result")
        result = _result(raw) if isinstance(raw, dict) else None
        return TaskState(_str(answer, "task_id"), _task_status(answer.get("status")), result)

    def cancel(self, task_id: str, *, timeout_s: float | None = None) -> None:
        """Kill the task's run (a finished task is a ``conflict`` ClientError)."""
        self._request("DELETE", _task_path(task_id), timeout_s=timeout_s)

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """The task's events as they arrive (from the start, or after ``last_event_id``)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        request = self._http.build_request(
            "GET",
            f"{_task_path(task_id)}/events",
            headers=headers,
            timeout=httpx.Timeout(STREAM_IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, STREAM_IDLE_TIMEOUT_S) from exc
        try:
            if response.is_error:
                response.read()
                self._check(response)
            try:
                yield from parse_sse(response.iter_lines())
            except httpx.TimeoutException as exc:
                raise _StreamBroken(f"{self.base_url} sent nothing for {STREAM_IDLE_TIMEOUT_S:g} s") from exc
            except httpx.HTTPError as exc:
                raise _StreamBroken(f"the event stream from {self.base_url} broke: {_reason(exc)}") from exc
        finally:
            response.close()

    def wait(self, task_id: str, on_output: Callable[[Output], None] | None = None) -> Result:
        """Follow the task to its end, handing each piece of output on as it comes; its Result."""
        last_id: str | None = None
        broken = 0
        while True:
            try:
                for event in self.events(task_id, last_event_id=last_id):
                    last_id = event.id if event.id is not None else last_id
                    if event.event == "exit":
                        return _result(_decode(event.data, self.base_url))
                    if event.event == "output" and on_output is not None:
                        on_output(_output(_decode(event.data, self.base_url)))
                failure: ClientError = _StreamBroken(f"the event stream of task {task_id} ended before its result")
            except _StreamBroken as exc:
                failure = exc
            broken += 1
            if broken > MAX_RECONNECTS:
                raise failure

    # -------------------------------------------------------------- helpers

    def _request(self, method: str, path: str, *, json: Any = None, timeout_s: float | None = None) -> httpx.Response:
        timeout = (
            httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
            if timeout_s
            else httpx.USE_CLIENT_DEFAULT
        )
        try:
            response = self._http.request(method, path, json=json, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, timeout_s or REQUEST_TIMEOUT_S) from exc
        self._check(response)
        return response

    def _check(self, response: httpx.Response) -> None:
        """Raise the server's error (``{"error": {"code", "message", "field"}}``) as one line."""
        if not response.is_error:
            return
        status = response.status_code
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "", response.reason_phrase or "error"
        if 400 <= status < 500:
            text = message if code in ("rejected", "not_found") else f"{code or status}: {message}"
        else:
            text = f"{self.base_url} answered {status}: {message}"
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            text += f" (retry after {retry_after} s)"
        kind = Status.REJECTED if 400 <= status < 500 else Status.INTERNAL_ERROR
        raise ClientError(kind, text, http_status=status)

    def _json(self, response: httpx.Response) -> Mapping[str, Any]:
        return _decode(response.text, self.base_url)

    def _transport_error(self, exc: httpx.HTTPError, timeout_s: float) -> ClientError:
        if isinstance(exc, httpx.ConnectTimeout):
            text = f"cannot reach {self.base_url}: no answer within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(exc, httpx.ConnectError):
            text = f"cannot reach {self.base_url}: {_reason(exc)}"
        elif isinstance(exc, httpx.TimeoutException):
            text = f"{self.base_url} did not answer within {timeout_s:g} s"
        else:
            text = f"request to {self.base_url} failed: {_reason(exc)}"
        return ClientError(Status.INTERNAL_ERROR, text)


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from a stream's lines, each yielded as soon as the blank line ending it arrives.

    Follows the HTML standard's parsing: ``field: value`` (one space after the
    colon dropped), ``data`` lines joined with newlines, ``:`` lines are
    comments (keep-alives), an event without data is not dispatched, and the
    last id persists across events. An event cut off by the end of the stream
    is dropped.
    """
    kind = ""
    data: list[str] = []
    last_id: str | None = None
    for line in lines:
        if not line:
            if data:
                yield SseEvent(kind or "message", "\n".join(data), last_id)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


def language_for_file(filename: str) -> str:
    """The language whose declared extensions include the file's (from sandlot's language data).

    Only the declarations are read: whether a toolchain is installed is the
    server's business, not this host's.
    """
    try:
        return LanguageRegistry.load().declared_for_file(filename).name
    except RejectedError as exc:
        raise ClientError(Status.REJECTED, str(exc)) from exc


# ------------------------------------------------------------- server JSON


def _task_path(task_id: str) -> str:
    return f"{_API}/tasks/{quote(task_id, safe='')}"


def _decode(text: str, base_url: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ClientError(Status.INTERNAL_ERROR, f"{base_url} answered something that is not JSON") from exc
    if not isinstance(value, dict):
        raise ClientError(Status.INTERNAL_ERROR, f"{base_url} answered JSON that is not an object")
    return cast(Mapping[str, Any], value)


def _unexpected(what: str) -> ClientError:
    return ClientError(Status.INTERNAL_ERROR, f"unexpected answer from the server: {what}")


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _unexpected(f"{key} is not a string")
    return value


def _task_status(value: Any) -> TaskStatus:
    if value not in ("queued", "running", "done"):
        raise _unexpected(f"task status {value!r}")
    return cast(TaskStatus, value)


def _output(data: Mapping[str, Any]) -> Output:
    stream = data.get("stream")
    if stream not in ("stdout", "stderr"):
        raise _unexpected(f"output stream {stream!r}")
    return Output(str(data.get("stage", "run")), cast(StreamName, stream), _str(data, "data"))


def _result(data: Mapping[str, Any]) -> Result:
    """A Result from the server's result JSON (the keys of ``Result.to_dict``; others are ignored).

    Not the broker's ``_result_from_wire``, though it lists the same fields: that one reads sandlot's own
    base64 wire from Redis and trusts it; this one reads text from a server over HTTP and checks every
    value. And the client imports only the shared vocabulary (models, errors, config's LimitRequest,
    languages), never a server module (broker, api, service): it is what an HTTP-only client
    distribution would ship.
    """

    def optional_int(key: str) -> int | None:
        value = data.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise _unexpected(f"{key} is {value!r}")

    try:
        status = Status(str(data.get("status")))
        return Result(
            status=status,
            exit_code=optional_int("exit_code"),
            signal=optional_int("signal"),
            stdout=str(data.get("stdout", "")).encode(),
            stderr=str(data.get("stderr", "")).encode(),
            compile_output=str(data.get("compile_output", "")).encode(),
            wall_time=float(data.get("wall_time", 0.0)),
            cpu_time=float(data.get("cpu_time", 0.0)),
            memory_peak=int(data.get("memory_peak", 0)),
            truncated=bool(data.get("truncated", False)),
            language=str(data.get("language", "")),
            message=str(data.get("message", "")),
        )
    except (ValueError, TypeError) as exc:
        raise _unexpected(f"a result that does not parse ({exc})") from exc


def _reason(exc: BaseException) -> str:
    """The root cause in words: 'connection refused' rather than '[Errno 111] Connection refused'."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
