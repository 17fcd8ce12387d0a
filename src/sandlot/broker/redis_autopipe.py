"""One Redis connection that pipelines by itself: the API node's submit path.

Theory of operation
-------------------
redis-py takes a pooled connection per call, encodes and parses in Python, and
costs a round trip per call (a pipeline per request at best). At thousands of
submits per second that is most of an API node's CPU. ``AutoPipeline`` keeps
one connection: the commands of an ``execute`` are encoded (by hiredis) onto a
buffer and get one future; the buffer is written once per event-loop turn
(``call_soon``), so everything the requests of one turn asked for goes out in a
single write, and the replies, parsed by hiredis, resolve the futures in order.
Redis answers a connection's commands in the order they came, so the n-th reply
belongs to the n-th command.

The connection is opened on first use (``redis://``, ``rediss://`` and
``unix://`` URLs, with AUTH and SELECT as redis-py reads them from the URL) and
again after it is lost. A lost connection, or ``reply_timeout_s`` with commands
outstanding and no reply at all (one timer per connection watches), fails every
command still waiting with redis-py's ``ConnectionError``/``TimeoutError`` (the
broker maps both to 503), drops the connection and calls ``on_lost``: the
connection is always open, so it is the first to see Redis go away.
An error reply is returned in its place as a ``ResponseError`` (``NoScriptError``
for NOSCRIPT), not raised, like redis-py's ``execute(raise_on_error=False)``.
A caller cancelled while waiting does not un-send its command; its reply is
read and dropped.

Only commands that answer at once belong here: a blocking read would hold up
every command queued behind it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int | float
Command = Sequence[Arg]
_WATCH_INTERVAL_S = 0.5  # how often a connection with commands outstanding checks that replies still come


def _reply(raw: Any) -> Any:
    """A NOSCRIPT error reply as redis-py's NoScriptError (the reader makes every error a ResponseError)."""
    if raw.__class__ is ResponseError and str(raw).startswith("NOSCRIPT"):
        return NoScriptError(str(raw))
    return raw


class _Batch:
    """The commands of one ``execute``: one future for all their replies."""

    __slots__ = ("count", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.count = count


class _Protocol(asyncio.Protocol):
    """The connection's byte side: writes batched per loop turn, replies handed out in order."""

    def __init__(self, reply_timeout_s: float, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self._reader = hiredis.Reader(replyError=ResponseError)  # error replies, nested ones too
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._reply_timeout_s = reply_timeout_s
        self._replies = 0  # replies read so far: progress, for the watch
        self._replies_at_watch = 0
        self._stalled_s = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._watch = asyncio.get_running_loop().call_later(_WATCH_INTERVAL_S, self._check_progress)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (raw := self._reader.gets()) is not False:
            self._replies += 1
            if not self._waiting:
                self._fail(RedisConnectionError("redis sent a reply nobody asked for"))
                return
            batch = self._waiting[0]
            batch.replies.append(_reply(raw))
            if len(batch.replies) == batch.count:
                self._waiting.popleft()
                if not batch.future.done():  # a cancelled caller's replies are dropped
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:  # not closed by us: redis went away
            self._on_lost()
        self._fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed by the server'}"))

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        if self.lost is not None:
            raise _fresh(self.lost)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        for command in commands:
            self._out.append(hiredis.pack_command(tuple(command)))  # type: ignore[arg-type]  # stub: 1-tuples
        self._waiting.append(_Batch(future, len(commands)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def close(self, reason: Exception) -> None:
        self._fail(reason)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and self.lost is None:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _check_progress(self) -> None:
        """Fail the connection when commands have waited ``reply_timeout_s`` with no reply coming at all.

        One timer per connection rather than a timeout per call, which cost more than the call itself.
        """
        if self._waiting and self._replies == self._replies_at_watch:
            self._stalled_s += _WATCH_INTERVAL_S
            if self._stalled_s >= self._reply_timeout_s:
                self._on_lost()
                self._fail(RedisTimeoutError(f"redis did not answer within {self._reply_timeout_s:g}s"))
                return
        else:
            self._stalled_s = 0.0
        self._replies_at_watch = self._replies
        self._watch = asyncio.get_running_loop().call_later(_WATCH_INTERVAL_S, self._check_progress)

    def _fail(self, reason: Exception) -> None:
        if self.lost is None:
            self.lost = reason
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._out.clear()
        while self._waiting:
            batch = self._waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(_fresh(reason))
        if self._transport is not None:
            self._transport.close()


class AutoPipeline:
    """Commands sent in the same loop turn share one write; see the module's docstring."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        reply_timeout_s: float,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._on_lost = on_lost
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, *commands: Command) -> list[Any]:
        """The replies of ``commands``, in order (error replies as exceptions in their place)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connected()
        return await protocol.send(commands)

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("the connection was closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        if self._connecting is None:  # one connection attempt, however many callers wait for it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        connection_class = options.get("connection_class")

        def protocol() -> _Protocol:
            return _Protocol(self._reply_timeout_s, self._on_lost)

        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if connection_class is UnixDomainSocketConnection:
                    _, made = await loop.create_unix_connection(protocol, options["path"])
                else:
                    tls = _tls_context(options) if connection_class is SSLConnection else None
                    host = options.get("host", "localhost")
                    port = int(options.get("port", 6379))
                    _, made = await loop.create_connection(protocol, host, port, ssl=tls)
                await self._handshake(made)
        except TimeoutError:
            raise RedisTimeoutError(f"no connection to redis within {self._connect_timeout_s:g}s") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        return made

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT as the URL asks; a refusal closes the connection and is raised."""
        commands: list[Command] = []
        password = self._options.get("password")
        if password is not None:
            username = self._options.get("username")
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        db = int(self._options.get("db", 0) or 0)
        if db:
            commands.append(("SELECT", db))
        if not commands:
            return
        for reply in await protocol.send(commands):
            if isinstance(reply, Exception):
                protocol.close(RedisConnectionError(str(reply)))
                raise RedisConnectionError(f"redis refused the connection: {reply}")


def _fresh(reason: Exception) -> Exception:
    """A new exception like ``reason`` for each caller: one instance raised in many places collects all
    their tracebacks."""
    return type(reason)(*reason.args)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """TLS as redis-py reads it from a rediss:// URL: ``ssl_ca_certs``, and ``ssl_cert_reqs=none`` to not verify."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
