"""The auto-pipelined Redis connection of the submit path, against a real redis-server.

The batching and the reply order are also checked on the protocol alone, with a
transport that records its writes: what goes out in one write is exactly what
the test must see, and loopback TCP may merge or split writes as it likes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sandlot.broker.redis_autopipe import AutoPipeline, _Protocol
from tests.nodes import RedisServer, free_ports, running_redis

TIMEOUT_S = 10.0  # bounds every wait here; nothing is timed


def _pipe(url: str, *, reply_timeout_s: float = TIMEOUT_S, lost: list[str] | None = None) -> AutoPipeline:
    def on_lost() -> None:
        if lost is not None:
            lost.append("lost")

    return AutoPipeline(url, connect_timeout_s=TIMEOUT_S, reply_timeout_s=reply_timeout_s, on_lost=on_lost)


# ------------------------------------------------------------ against redis


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(fresh_redis: RedisServer) -> None:
    pipe = _pipe(fresh_redis.url)
    try:

        async def one(i: int) -> list[object]:
            return await pipe.execute(("SET", f"k{i}", f"v{i}"), ("GET", f"k{i}"), ("INCR", "counter"))

        replies = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(500))), TIMEOUT_S)
        assert [reply[:2] for reply in replies] == [[b"OK", f"v{i}".encode()] for i in range(500)]
        assert sorted(int(reply[2]) for reply in replies) == list(range(1, 501))  # each INCR once
        with redis.Redis.from_url(fresh_redis.url) as check:
            clients = check.client_list()
        assert len(clients) == 2  # the pipe's one connection, and this check's
    finally:
        await pipe.close()


async def test_error_replies_are_returned_in_their_place(fresh_redis: RedisServer) -> None:
    pipe = _pipe(fresh_redis.url)
    try:
        replies = await pipe.execute(
            ("SET", "text", "abc"),
            ("INCR", "text"),
            ("EVALSHA", "0" * 40, 0),
            ("GET", "text"),
        )
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError) and not isinstance(replies[1], NoScriptError)
        assert isinstance(replies[2], NoScriptError)
        assert replies[3] == b"abc"
        nested = await pipe.execute(("EVAL", "return {1, redis.error_reply('ERR inner')}", 0))
        assert nested[0][0] == 1 and isinstance(nested[0][1], ResponseError)
    finally:
        await pipe.close()


async def test_auth_and_database_come_from_the_url(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", append_only=False, extra_args=("--requirepass", "s3cret")) as server:
        base = f"127.0.0.1:{server.port}"
        for url in (f"redis://:s3cret@{base}/3", f"redis://default:s3cret@{base}/3"):
            pipe = _pipe(url)
            try:
                assert await pipe.execute(("SET", "where", url)) == [b"OK"]
            finally:
                await pipe.close()
            with redis.Redis(host="127.0.0.1", port=server.port, password="s3cret", db=3) as check:
                assert check.get("where") == url.encode()
        wrong = _pipe(f"redis://:wrong@{base}/0")
        with pytest.raises(RedisConnectionError, match="refused the connection"):
            await wrong.execute(("PING",))
        await wrong.close()


async def test_unix_socket_urls(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    extra = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    with running_redis(tmp_path / "redis", append_only=False, extra_args=extra) as server:
        pipe = _pipe(f"unix://{socket_path}?db=2")
        try:
            assert await pipe.execute(("SET", "over", "unix")) == [b"OK"]
        finally:
            await pipe.close()
        with redis.Redis(host="127.0.0.1", port=server.port, db=2) as check:
            assert check.get("over") == b"unix"


async def test_a_lost_redis_fails_fast_says_so_and_is_reconnected(fresh_redis: RedisServer) -> None:
    lost: list[str] = []
    pipe = _pipe(fresh_redis.url, lost=lost)
    try:
        assert await pipe.execute(("PING",)) == [b"PONG"]
        fresh_redis.stop()
        for _ in range(int(TIMEOUT_S / 0.05)):  # the connection sees the close without being used
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost == ["lost"]
        with pytest.raises(RedisConnectionError):
            await pipe.execute(("PING",))
        fresh_redis.start()  # same port
        assert await pipe.execute(("PING",)) == [b"PONG"]
    finally:
        await pipe.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    (port,) = free_ports(1)
    pipe = _pipe(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await pipe.execute(("PING",))
    await pipe.close()


async def test_a_silent_peer_times_out_and_fails_what_waits() -> None:
    """A server that takes the bytes and never answers: every waiting command fails, on_lost is told."""
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.append(chunk)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lost: list[str] = []
    pipe = _pipe(f"redis://127.0.0.1:{port}/0", reply_timeout_s=1.0, lost=lost)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(pipe.execute(("PING",)), pipe.execute(("GET", "x")), return_exceptions=True), TIMEOUT_S
        )
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        assert lost == ["lost"]
        assert b"".join(received) == b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n"
    finally:
        await pipe.close()
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------ the protocol alone


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


async def test_one_loop_turn_is_one_write_and_replies_resolve_in_order() -> None:
    protocol = _Protocol(TIMEOUT_S, lambda: None)
    transport = _RecordingTransport()
    protocol.connection_made(transport)
    try:
        futures = [protocol.send([("GET", f"k{i}"), ("PING",)]) for i in range(100)]
        assert transport.writes == []  # nothing until the loop turns
        await asyncio.sleep(0)
        assert len(transport.writes) == 1
        assert transport.writes[0] == b"".join(
            b"*2\r\n$3\r\nGET\r\n$%d\r\nk%d\r\n*1\r\n$4\r\nPING\r\n" % (len(f"k{i}"), i) for i in range(100)
        )
        replies = b"".join(b"$%d\r\nv%d\r\n+PONG\r\n" % (len(f"v{i}"), i) for i in range(100))
        for at in range(0, len(replies), 7):  # replies arrive in odd pieces
            protocol.data_received(replies[at : at + 7])
        assert [await future for future in futures] == [[f"v{i}".encode(), b"PONG"] for i in range(100)]
    finally:
        protocol.close(RedisConnectionError("test over"))


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others() -> None:
    protocol = _Protocol(TIMEOUT_S, lambda: None)
    protocol.connection_made(_RecordingTransport())
    try:
        first = protocol.send([("GET", "a")])
        second = protocol.send([("GET", "b")])
        first.cancel()
        protocol.data_received(b"$1\r\nA\r\n$1\r\nB\r\n")
        assert await second == [b"B"]
    finally:
        protocol.close(RedisConnectionError("test over"))


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    protocol = _Protocol(TIMEOUT_S, lambda: None)
    transport = _RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"+OK\r\n")
    assert transport.closed
    with pytest.raises(RedisConnectionError, match="nobody asked for"):
        protocol.send([("PING",)])
