"""The synchronous client: ``Sandlot``, its ``Task``, ``Session`` and ``SessionFiles``.

A run is ``POST /api/v1/execute`` (queued, 202), then the task's Server-Sent Events
(``GET /api/v1/tasks/{id}/events``) read line by line as they arrive, so ``on_stdout`` and
``on_stderr`` see output while the program still runs; a stream that breaks before the ``exit``
event is resumed with ``Last-Event-ID``. A stateful session's cell is such a run naming the
session and no language (its exit event carries the cell's ``value``). Everything it sends and
reads is built and checked in ``_wire`` and ``_sse``, shared with the async client (``_async``),
which is this module with ``await``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import Any

import httpx

from sandlot_client import _sse, _wire
from sandlot_client._errors import NotFound
from sandlot_client._types import FileInfo, Output, Result, SessionInfo, TaskState
from sandlot_client._version import USER_AGENT
from sandlot_client._wire import Content, FilesArg, LimitsArg, OutputCallback


class Sandlot:
    """One sandlot server (and an optional API key); a context manager that closes its connections."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        timeout_s: float = _wire.REQUEST_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = _wire.base_url(url)
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            headers=_wire.headers(api_key, USER_AGENT),
            timeout=httpx.Timeout(timeout_s, connect=_wire.CONNECT_TIMEOUT_S),
            trust_env=False,  # the server is named explicitly; a proxy from the environment is not wanted
            transport=transport,
        )

    def __enter__(self) -> Sandlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------- runs

    def run(
        self,
        language: str,
        code: Content | None = None,
        *,
        stdin: Content | None = None,
        files: FilesArg = None,
        args: Sequence[str] = (),
        limits: LimitsArg = None,
        environment: str | None = None,
        isolation: str | None = None,
        session_id: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Result:
        """Run ``code`` (with ``files`` beside it) and wait for its Result, streaming output to the callbacks."""
        task = self.submit(
            language,
            code,
            stdin=stdin,
            files=files,
            args=args,
            limits=limits,
            environment=environment,
            isolation=isolation,
            session_id=session_id,
        )
        return task.result(on_stdout=on_stdout, on_stderr=on_stderr)

    def submit(
        self,
        language: str,
        code: Content | None = None,
        *,
        stdin: Content | None = None,
        files: FilesArg = None,
        args: Sequence[str] = (),
        limits: LimitsArg = None,
        environment: str | None = None,
        isolation: str | None = None,
        session_id: str | None = None,
    ) -> Task:
        """Queue a run; its Task at once (``task.result()`` waits for it)."""
        body = _wire.execution_body(
            language,
            code,
            stdin=stdin,
            files=files,
            args=args,
            limits=limits,
            environment=environment,
            isolation=isolation,
            session_id=session_id,
        )
        return self._queue(body)

    def _queue(self, body: dict[str, Any]) -> Task:
        answer = _wire.decode(self._request("POST", f"{_wire.API}/execute", json=body).text)
        return Task(self, _wire.string(answer, "task_id"))

    def task(self, task_id: str) -> Task:
        """A handle on a task submitted earlier (by id)."""
        return Task(self, task_id)

    def session(
        self, *, stateful: bool = False, language: str | None = "python", isolation: str | None = None
    ) -> Session:
        """Create a session (its files persist between runs; ``stateful``: so do its variables); close it
        when done, or use it as a context manager."""
        body = _wire.session_body(stateful, language, isolation)
        answer = self._request("POST", f"{_wire.API}/sessions", json=body)
        info = _wire.session_info(_wire.decode(answer.text))
        session = Session(self, info, language)
        if stateful and not info.stateful:
            session.close()
            raise _wire.not_stateful(info)
        return session

    # ------------------------------------------------------------ plumbing

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        timeout = httpx.Timeout(timeout_s, connect=_wire.CONNECT_TIMEOUT_S) if timeout_s else httpx.USE_CLIENT_DEFAULT
        try:
            response = self._http.request(method, path, json=json, content=content, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _wire.transport_error(exc, self.url, timeout_s or self._timeout_s) from exc
        _wire.check(response)
        return response

    def _events(self, task_id: str, last_event_id: str | None) -> Generator[_sse.SseEvent, None, None]:
        request = self._http.build_request(
            "GET",
            f"{_wire.task_path(task_id)}/events",
            headers=_wire.events_request_headers(last_event_id),
            timeout=httpx.Timeout(_wire.STREAM_IDLE_TIMEOUT_S, connect=_wire.CONNECT_TIMEOUT_S),
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _wire.transport_error(exc, self.url, _wire.STREAM_IDLE_TIMEOUT_S) from exc
        try:
            if response.is_error:
                response.read()
                _wire.check(response)
            parser = _sse.SseParser()
            try:
                for line in response.iter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
            except httpx.TimeoutException as exc:
                raise _sse.StreamBroken(f"{self.url} sent nothing for {_wire.STREAM_IDLE_TIMEOUT_S:g} s") from exc
            except httpx.HTTPError as exc:
                raise _sse.StreamBroken(f"the event stream from {self.url} broke: {exc}") from exc
        finally:
            response.close()


class Task:
    """A queued or finished run on the server."""

    def __init__(self, client: Sandlot, task_id: str) -> None:
        self._client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def state(self) -> TaskState:
        """Its state now (queued, running or done), with its Result when done."""
        return _wire.task_state(_wire.decode(self._client._request("GET", _wire.task_path(self.id)).text))

    def result(self, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> Result:
        """Wait for its Result; the program's stdout goes to ``on_stdout`` as it comes, everything else
        printed (its stderr, a compiler's output) to ``on_stderr``."""

        def hand_on(piece: Output) -> None:
            callback = _sse.output_callback(piece, on_stdout, on_stderr)
            if callback is not None:
                callback(piece.text)

        return self.follow(hand_on)

    def follow(self, on_output: Callable[[Output], object] | None = None) -> Result:
        """Wait for its Result, handing each ``Output`` (stage, stream, text) to ``on_output``."""
        follow = _sse.Follow(self.id)
        while True:
            failure: _sse.StreamBroken | None = None
            try:
                # closing: the response ends as soon as the result is in, not when the generator is collected
                with contextlib.closing(self._client._events(self.id, follow.last_id)) as events:
                    for event in events:
                        found = follow.event(event)
                        if isinstance(found, Result):
                            return found
                        if found is not None and on_output is not None:
                            on_output(found)
            except _sse.StreamBroken as exc:
                failure = exc
            follow.broke(failure)

    def cancel(self, *, timeout_s: float | None = None) -> None:
        """Kill its run (a task already finished: Conflict)."""
        self._client._request("DELETE", _wire.task_path(self.id), timeout_s=timeout_s)


class Session:
    """A session: runs in it share a workdir (``files``); a stateful one also keeps its interpreter."""

    def __init__(self, client: Sandlot, info: SessionInfo, language: str | None) -> None:
        self._client = client
        self.info = info
        self.id = info.session_id
        self.language = info.language or language
        self.files = SessionFiles(client, info.session_id)
        self.closed = False

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def run(
        self,
        code: Content,
        *,
        language: str | None = None,
        stdin: Content | None = None,
        files: FilesArg = None,
        args: Sequence[str] = (),
        limits: LimitsArg = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Result:
        """Run ``code`` in the session (a stateful session: one cell, ``Result.value`` its last expression)."""
        if not self.info.stateful:
            return self._client.run(
                _wire.language(language or self.language),
                code,
                stdin=stdin,
                files=files,
                args=args,
                limits=limits,
                session_id=self.id,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        task = self._client._queue(_wire.cell_body(code, stdin, limits, self.id))
        return task.result(on_stdout=on_stdout, on_stderr=on_stderr)

    def close(self) -> None:
        """End the session and wipe its files (once; a session the server already ended is fine)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(NotFound):  # expired, or ended elsewhere: it is gone either way
            self._client._request("DELETE", _wire.session_path(self.id))


class SessionFiles:
    """The files of a session's workdir (paths relative to it)."""

    def __init__(self, client: Sandlot, session_id: str) -> None:
        self._client = client
        self._session_id = session_id

    def write(self, path: str, data: Content) -> FileInfo:
        """Create or replace a file (str is written as UTF-8)."""
        content = _wire.file_content(data)
        self._client._request("PUT", _wire.file_path(self._session_id, path), content=content)
        return FileInfo(path, len(content))

    def read(self, path: str) -> bytes:
        return self._client._request("GET", _wire.file_path(self._session_id, path)).content

    def list(self) -> list[FileInfo]:
        answer = self._client._request("GET", f"{_wire.session_path(self._session_id)}/files")
        return _wire.file_list(_wire.decode(answer.text))
