"""The asynchronous client: ``AsyncSandlot`` and its ``AsyncTask``, ``AsyncSession``, ``AsyncSessionFiles``.

The synchronous client (``_sync``) with ``await``: the same requests and checks (``_wire``). The
output callbacks may be plain functions or coroutine functions (what they return is awaited when
it is awaitable). ``client.session()`` is both awaitable (``s = await client.session()``) and an
async context manager (``async with client.session() as s:``), which closes it at exit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any

import httpx

from sandlot_client import _sse, _wire
from sandlot_client._errors import NotFound
from sandlot_client._types import FileInfo, Output, Result, SessionInfo, TaskState
from sandlot_client._version import USER_AGENT
from sandlot_client._wire import Content, FilesArg, LimitsArg, OutputCallback


class AsyncSandlot:
    """One sandlot server (and an optional API key); an async context manager closing its connections."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        timeout_s: float = _wire.REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = _wire.base_url(url)
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_wire.headers(api_key, USER_AGENT),
            timeout=httpx.Timeout(timeout_s, connect=_wire.CONNECT_TIMEOUT_S),
            trust_env=False,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncSandlot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(
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
        """Run ``code`` and wait for its Result, streaming output to the callbacks (see ``Sandlot.run``)."""
        task = await self.submit(
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
        return await task.result(on_stdout=on_stdout, on_stderr=on_stderr)

    async def submit(
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
    ) -> AsyncTask:
        """Queue a run; its task at once."""
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
        return await self._queue(body)

    async def _queue(self, body: dict[str, Any]) -> AsyncTask:
        answer = _wire.decode((await self._request("POST", f"{_wire.API}/execute", json=body)).text)
        return AsyncTask(self, _wire.string(answer, "task_id"))

    def task(self, task_id: str) -> AsyncTask:
        return AsyncTask(self, task_id)

    def session(
        self, *, stateful: bool = False, language: str | None = "python", isolation: str | None = None
    ) -> _SessionOpener:
        """A session, created when awaited or entered (see the module's docstring)."""
        return _SessionOpener(self, stateful, language, isolation)

    async def _open_session(self, stateful: bool, language: str | None, isolation: str | None) -> AsyncSession:
        body = _wire.session_body(stateful, language, isolation)
        answer = await self._request("POST", f"{_wire.API}/sessions", json=body)
        info = _wire.session_info(_wire.decode(answer.text))
        session = AsyncSession(self, info, language)
        if stateful and not info.stateful:
            await session.aclose()
            raise _wire.not_stateful(info)
        return session

    async def _request(
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
            response = await self._http.request(method, path, json=json, content=content, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _wire.transport_error(exc, self.url, timeout_s or self._timeout_s) from exc
        _wire.check(response)
        return response

    async def _events(self, task_id: str, last_event_id: str | None) -> AsyncGenerator[_sse.SseEvent, None]:
        request = self._http.build_request(
            "GET",
            f"{_wire.task_path(task_id)}/events",
            headers=_wire.events_request_headers(last_event_id),
            timeout=httpx.Timeout(_wire.STREAM_IDLE_TIMEOUT_S, connect=_wire.CONNECT_TIMEOUT_S),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _wire.transport_error(exc, self.url, _wire.STREAM_IDLE_TIMEOUT_S) from exc
        try:
            if response.is_error:
                await response.aread()
                _wire.check(response)
            parser = _sse.SseParser()
            try:
                async for line in response.aiter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
            except httpx.TimeoutException as exc:
                raise _sse.StreamBroken(f"{self.url} sent nothing for {_wire.STREAM_IDLE_TIMEOUT_S:g} s") from exc
            except httpx.HTTPError as exc:
                raise _sse.StreamBroken(f"the event stream from {self.url} broke: {exc}") from exc
        finally:
            await response.aclose()


async def _call(callback: Callable[[Any], object] | None, value: object) -> None:
    if callback is not None:
        returned = callback(value)
        if inspect.isawaitable(returned):
            await returned


class AsyncTask:
    """A queued or finished run on the server."""

    def __init__(self, client: AsyncSandlot, task_id: str) -> None:
        self._client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncTask({self.id!r})"

    async def state(self) -> TaskState:
        answer = await self._client._request("GET", _wire.task_path(self.id))
        return _wire.task_state(_wire.decode(answer.text))

    async def result(
        self, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> Result:
        async def hand_on(piece: Output) -> None:
            await _call(_sse.output_callback(piece, on_stdout, on_stderr), piece.text)

        return await self.follow(hand_on)

    async def follow(self, on_output: Callable[[Output], object] | None = None) -> Result:
        follow = _sse.Follow(self.id)
        while True:
            failure: _sse.StreamBroken | None = None
            events = self._client._events(self.id, follow.last_id)
            try:
                async for event in events:
                    found = follow.event(event)
                    if isinstance(found, Result):
                        return found
                    if found is not None:
                        await _call(on_output, found)
            except _sse.StreamBroken as exc:
                failure = exc
            finally:
                await events.aclose()  # closes the response now, not at GC
            follow.broke(failure)

    async def cancel(self, *, timeout_s: float | None = None) -> None:
        await self._client._request("DELETE", _wire.task_path(self.id), timeout_s=timeout_s)


class _SessionOpener:
    """What ``AsyncSandlot.session()`` returns: await it, or enter it with ``async with``."""

    def __init__(self, client: AsyncSandlot, stateful: bool, language: str | None, isolation: str | None) -> None:
        self._client = client
        self._how = (stateful, language, isolation)
        self._session: AsyncSession | None = None

    def _open(self) -> Coroutine[Any, Any, AsyncSession]:
        return self._client._open_session(*self._how)

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.aclose()


class AsyncSession:
    """A session (see ``Session``)."""

    def __init__(self, client: AsyncSandlot, info: SessionInfo, language: str | None) -> None:
        self._client = client
        self.info = info
        self.id = info.session_id
        self.language = info.language or language
        self.files = AsyncSessionFiles(client, info.session_id)
        self.closed = False

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(
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
        if not self.info.stateful:
            return await self._client.run(
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
        task = await self._client._queue(_wire.cell_body(code, stdin, limits, self.id))
        return await task.result(on_stdout=on_stdout, on_stderr=on_stderr)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(NotFound):  # expired, or ended elsewhere: it is gone either way
            await self._client._request("DELETE", _wire.session_path(self.id))


class AsyncSessionFiles:
    """The files of a session's workdir."""

    def __init__(self, client: AsyncSandlot, session_id: str) -> None:
        self._client = client
        self._session_id = session_id

    async def write(self, path: str, data: Content) -> FileInfo:
        content = _wire.file_content(data)
        await self._client._request("PUT", _wire.file_path(self._session_id, path), content=content)
        return FileInfo(path, len(content))

    async def read(self, path: str) -> bytes:
        return (await self._client._request("GET", _wire.file_path(self._session_id, path))).content

    async def list(self) -> list[FileInfo]:
        answer = await self._client._request("GET", f"{_wire.session_path(self._session_id)}/files")
        return _wire.file_list(_wire.decode(answer.text))
