"""Run the HTTP and gRPC doors in one process, and drain cleanly on SIGTERM.

Drain order: stop accepting new executions (readyz and submits answer 503),
let running executions finish until the deadline (then kill them), close the
listeners (in-flight responses are delivered first), and finally release every
box: cgroups removed, workdirs unmounted.

In embedded mode the HTTP app is also served on a unix socket,
``<run_dir>/serve.sock`` (mode 0600, root's): ``sandlot run`` on this host
hands its job there (the warm path, cli_warm.py) instead of starting a jail of
its own. The socket is the same app with the same authentication: with API keys
configured, the CLI's keyless request is refused (401) and it runs the job
locally. A socket left by a killed server is replaced at start; a live
server's is left alone (its run_dir is shared, which the slot locks allow);
ours is removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from fastapi import FastAPI

from sandlot.api.mcp import server as mcp_server
from sandlot.config import ServerSettings, Settings
from sandlot.service import Service, count_boxes, freeze_start_up_objects, stop_on_signals

log = logging.getLogger("sandlot.server")
SOCKET_NAME = "serve.sock"  # in run_dir; cli_warm.py has its own copy of the name (it imports nothing of ours)
_LISTENER_GRACE_S = 5.0


class _QuietSignalsServer(uvicorn.Server):
    """uvicorn, minus its signal handling (this module owns SIGTERM and SIGINT), plus a started event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.started_event.set()


def _listen(door: str, host: str, port: int) -> socket.socket:
    """Bind a listening socket now, so a busy port fails before any box exists."""
    try:
        sock = socket.create_server((host, port), backlog=1024)
    except OSError as exc:
        raise OSError(exc.errno, f"{door} {host}:{port}: {exc.strerror}") from exc
    # create_server leaves proto 0, so asyncio skips TCP_NODELAY on the accepted sockets; without it
    # a response's second write waits for the client's delayed ACK (40 ms). Accepted sockets inherit it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _listen_local(run_dir: Path) -> tuple[socket.socket, int] | None:
    """Bind ``<run_dir>/serve.sock`` (0600) for this host's ``sandlot run``; None where it cannot be ours.

    Bound 0600 under a temporary name, then renamed over the final name: there is no
    moment when the socket is open to others, and a stale one is replaced in one step.
    """
    path = run_dir / SOCKET_NAME
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        pass  # none, or a killed server's: replaced below
    else:
        log.warning("sandlot: %s belongs to another live server: `sandlot run` keeps using that one", path)
        return None
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = run_dir / f".{SOCKET_NAME}.{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
        mask = os.umask(0o177)  # created 0600: not even the temporary name is open to others
        try:
            sock.bind(str(temporary))
        finally:
            os.umask(mask)
        os.chmod(temporary, 0o600)
        os.rename(temporary, path)
        inode = os.stat(path).st_ino  # whose the file is at shutdown
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        temporary.unlink(missing_ok=True)
        log.warning("sandlot: no local socket %s (%s): `sandlot run` starts its own jails", path, exc.strerror)
        return None
    return sock, inode


def _unlink_local(sock: socket.socket, run_dir: Path, inode: int) -> None:
    """Remove our socket file, unless another server has replaced it meanwhile."""
    path = run_dir / SOCKET_NAME
    with contextlib.suppress(OSError):  # already gone
        if os.stat(path).st_ino == inode:
            path.unlink()
    sock.close()


def _announce(server: ServerSettings, boxes: int) -> None:
    """Once listening: where each door is, one line each, then that /readyz now says yes."""
    host = f"[{server.host}]" if ":" in server.host else server.host
    base = f"http://{host}:{server.http_port}"
    log.warning("sandlot playground  %s/", base)
    log.warning("sandlot API docs    %s/docs", base)
    log.warning("sandlot gRPC        %s:%d", host, server.grpc_port)
    log.warning("sandlot ready with %s (%s/readyz answers 200)", count_boxes(boxes), base)


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (compared with, never bound)


def internal_url(server: ServerSettings) -> str:
    """Where workers reach this node's internal routes (``internal_url``, else derived from the listener)."""
    if server.internal_url:
        return server.internal_url
    host = socket.getfqdn() if server.host in _WILDCARDS else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.http_port}"


async def serve(settings: Settings, server: ServerSettings, *, ready: asyncio.Event | None = None) -> None:
    from sandlot.api.common.auth import Authenticator
    from sandlot.api.grpc.server import create_grpc_server
    from sandlot.api.http.app import create_app

    http_socket = _listen("HTTP", server.host, server.http_port)
    try:
        _listen("gRPC", server.host, server.grpc_port).close()  # grpc binds its own; fail early if it cannot
        service = await Service.start(settings, server)
        try:
            authenticator = Authenticator(server.api_keys)
            try:
                grpc_server = create_grpc_server(
                    service, f"{server.host}:{server.grpc_port}", authenticator=authenticator
                )
            except RuntimeError as exc:  # grpc's way of saying the port is taken
                raise OSError(errno.EADDRINUSE, f"gRPC {server.host}:{server.grpc_port}: {exc}") from exc
            app = create_app(service, authenticator=authenticator)
            http = _QuietSignalsServer(
                uvicorn.Config(
                    app,
                    lifespan="off",
                    log_level="warning",
                    access_log=False,  # per-request logging is the metrics' job
                    proxy_headers=False,  # nothing reads the client address; skips a middleware per request
                    server_header=False,
                    timeout_graceful_shutdown=int(_LISTENER_GRACE_S),
                )
            )
            # Embedded mode only: there a refusal (503, 429) always comes before the job is queued, so the
            # CLI can run it itself; a distributed node's 503 may come after (Redis lost mid-wait, job queued).
            local = None if server.redis_url else _listen_local(settings.run_dir)
            sockets = [http_socket] if local is None else [http_socket, local[0]]
            try:
                with stop_on_signals() as stop:
                    await _run(stop, service, server, grpc_server, http, sockets, ready, app)
            finally:
                if local is not None:
                    _unlink_local(local[0], settings.run_dir, local[1])
        finally:
            await service.stop()
            log.warning("sandlot stopped; boxes released")
    finally:
        http_socket.close()


async def _run(
    stop: asyncio.Event,
    service: Service,
    server: ServerSettings,
    grpc_server: grpc.aio.Server,
    http: _QuietSignalsServer,
    sockets: list[socket.socket],
    ready: asyncio.Event | None,
    app: FastAPI,
) -> None:
    """Serve until ``stop`` (SIGTERM/SIGINT), then drain: refuse new work, finish running work, close the listeners."""
    try:
        # Registered before the listeners start: once this node answers, workers can fetch from it.
        await service.announce_environments(internal_url(server))
        await grpc_server.start()
        http_task = asyncio.create_task(http.serve(sockets=sockets), name="sandlot-http")
        started = asyncio.create_task(http.started_event.wait())
        await asyncio.wait({started, http_task}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if http_task.done():
            await http_task
            return
        _announce(server, service.pool.size)
        freeze_start_up_objects()
        if ready is not None:
            ready.set()
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, http_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        log.warning("sandlot draining (deadline %.0f s)", server.drain_deadline_s)
        service.accepting = False
        if service.worker is not None:
            await service.worker.drain(server.drain_deadline_s)
        await mcp_server.shutdown(app)  # its open streams would otherwise hold the listener
        http.should_exit = True
        await grpc_server.stop(_LISTENER_GRACE_S)
        with contextlib.suppress(asyncio.CancelledError):
            await http_task
    finally:
        await grpc_server.stop(None)
        await mcp_server.shutdown(app)
