"""The MCP door: sandlot's tools over stdio (``sandlot mcp``) and streamable HTTP (``/mcp``).

Theory of operation
-------------------
``build_server`` puts the tools of ``tools`` behind the SDK's low-level
``Server`` (hand-written schemas, our own argument checks, no global state).
Both transports serve the same Server; they differ in who the caller is:

- stdio (``serve_stdio``): one client, the local user, tenant ``local``. The
  process owns an embedded Service, started before serving and stopped (drained,
  boxes released) when stdin reaches EOF or on SIGTERM/SIGINT. stdout is the
  protocol: while serving, the SDK points fd 1 at stderr, so nothing else can
  write to it, and all logging goes to stderr.
- streamable HTTP (``install``): a route at ``/mcp`` on the FastAPI app, over the
  Service that ``sandlot serve`` runs. Every HTTP request is authenticated like
  the other doors (``Authorization: Bearer KEY``: 401 without, 403 with an
  unknown key, when keys are configured; rate limits apply per request); the
  tenant is the key's, else ``public``. The principal travels to the tool
  handler in the ASGI scope of the request that carried the call, and an MCP
  session is bound to the tenant that opened it.

The SDK's HTTP session manager needs a task group that outlives requests, which
a Starlette app normally gets from its lifespan. sandlot runs uvicorn with
``lifespan="off"``, so the endpoint starts the manager itself, in a task of the
serving loop, on the first request to ``/mcp``; ``shutdown(app)`` stops it (its
sessions end, their streams close). Without that call it is cancelled with the
loop's other tasks when the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import stat
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import sandlot
from sandlot.api.common.auth import Authenticator, Principal, bearer_token
from sandlot.api.common.core import Core
from sandlot.api.http.errors import ApiError, as_api_error, error_response
from sandlot.api.mcp.tools import Tools
from sandlot.config import ServerSettings, Settings, server_settings_from
from sandlot.errors import AuthError
from sandlot.service import Service, count_boxes, stop_on_signals

log = logging.getLogger("sandlot.mcp")

MCP_PATH = "/mcp"
STDIO_TENANT = "local"
STDIO_POOL_SIZE = 2  # one person's tool calls (sessions pin no box)
_MAX_LINE_BYTES = 64 * 1024 * 1024  # one JSON-RPC message on stdin (write_file content travels inline)
_PRINCIPAL_SCOPE_KEY = "sandlot.principal"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_INSTRUCTIONS = (
    "sandlot runs untrusted code in hardened sandboxes. Use list_languages to see what run_code accepts; "
    "run_code returns the program's status, output, times and memory. For several runs that share files, "
    "create_session, write_file, pass session_id to run_code, read_file/list_files, then end_session."
)


def build_server(service: Service, authenticator: Authenticator, *, default: Principal | None = None) -> Server[Any]:
    """The MCP Server over the Service's tools; ``default`` is the caller when the transport names none (stdio)."""
    tools = Tools(Core(service, authenticator))

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools.tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        if not tools.knows(params.name):
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        principal = _principal(ctx, default)

        async def progress(sent: float, message: str) -> None:
            # A no-op unless the client asked for progress (a progressToken in the request's _meta).
            await ctx.session.report_progress(sent, None, message)

        return await tools.call(principal, params.name, params.arguments, progress)

    return Server(
        "sandlot",
        version=sandlot.__version__,
        title="sandlot",
        instructions=_INSTRUCTIONS,
        get_tool_input_schema=tools.input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _principal(ctx: ServerRequestContext[Any], default: Principal | None) -> Principal:
    """The caller: the one the HTTP endpoint authenticated for this request, else the transport's own."""
    request = ctx.request
    if isinstance(request, Request):
        principal = request.scope.get(_PRINCIPAL_SCOPE_KEY)
        if isinstance(principal, Principal):
            return principal
    if default is not None:
        return default
    # Only reachable if a transport other than ours delivered the call: refuse rather than guess a tenant.
    raise MCPError(types.INTERNAL_ERROR, "the caller of this request is unknown")


# -------------------------------------------------------------------- stdio


def stdio_server_settings(settings: Settings, *, pool_size: int | None = None) -> ServerSettings:
    """Server settings of ``sandlot mcp``: the configured ones, with a small pool unless one is configured."""
    server = server_settings_from(settings, pool_size=pool_size)
    if server.pool_size == 0:
        server = dataclasses.replace(server, pool_size=STDIO_POOL_SIZE)
    return server


async def serve_stdio(settings: Settings, server: ServerSettings) -> None:
    """Start a Service, serve MCP on stdin/stdout until EOF or SIGTERM/SIGINT, then stop it."""
    with stop_on_signals() as stop:
        service = await Service.start(settings, server)
        try:
            await _serve_stdio_until(service, stop)
        finally:
            await service.stop()
            log.info("sandlot MCP stopped; boxes released")


async def _serve_stdio_until(service: Service, stop: asyncio.Event) -> None:
    mcp_server = build_server(service, Authenticator(()), default=Principal(STDIO_TENANT))
    serving = asyncio.create_task(_serve_stdio_streams(mcp_server), name="sandlot-mcp-stdio")
    stopping = asyncio.create_task(stop.wait())
    log.info("sandlot MCP serving on stdio with %s", count_boxes(service.pool.size))
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not serving.done():
        log.warning("sandlot MCP stopping on a signal")
        serving.cancel()  # calls in flight are cancelled, and with them their tasks
    with contextlib.suppress(asyncio.CancelledError):
        await serving  # surfaces a transport failure


async def _serve_stdio_streams(mcp_server: Server[Any]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        lines = await stack.enter_async_context(_stdin_lines())
        # stdio_server only iterates ``stdin`` line by line; ours is an async iterator of lines, not an AsyncFile.
        read_stream, write_stream = await stack.enter_async_context(stdio_server(stdin=lines))  # type: ignore[arg-type]
        await mcp_server.run(read_stream, write_stream, mcp_server.create_initialization_options())


class _PipeLines:
    """stdin's lines, read on the event loop: unlike the SDK's reader thread, cancellable at any time."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._reader.readline()
        except ValueError:  # a line over _MAX_LINE_BYTES was dropped: the session sees an invalid message instead
            return "{}\n"
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", "replace")


@contextlib.asynccontextmanager
async def _stdin_lines() -> AsyncIterator[_PipeLines | None]:
    """stdin as ``_PipeLines`` when it is a pipe or socket (how MCP clients start servers), else None.

    None lets the SDK read it with a thread, which is fine for a file; on a
    terminal a signal then takes effect at the next line or EOF.
    """
    mode = os.fstat(0).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        yield None
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_LINE_BYTES)
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        yield _PipeLines(reader)
    finally:
        transport.close()


# --------------------------------------------------------------------- HTTP


def install(app: FastAPI, service: Service) -> None:
    """Serve MCP over streamable HTTP at ``/mcp`` on app, with app's Authenticator (see the module docstring)."""
    if isinstance(getattr(app.state, "mcp", None), _HttpEndpoint):
        return  # installed already (by create_app): one endpoint, one session manager
    core = getattr(app.state, "core", None)
    authenticator = getattr(core, "auth", None)
    if not isinstance(authenticator, Authenticator):
        authenticator = Authenticator(service.server.api_keys)
    endpoint = _HttpEndpoint(build_server(service, authenticator), service.server, authenticator)
    app.state.mcp = endpoint
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))


async def shutdown(app: FastAPI) -> None:
    """End every MCP session of app's ``/mcp`` endpoint and stop its session manager (idempotent)."""
    endpoint = getattr(app.state, "mcp", None)
    if isinstance(endpoint, _HttpEndpoint):
        await endpoint.close()


class _HttpEndpoint:
    """The ASGI app at /mcp: authenticate, then hand over to the SDK's session manager, started on first use."""

    def __init__(self, mcp_server: Server[Any], server: ServerSettings, authenticator: Authenticator) -> None:
        self._auth = authenticator
        self._manager = StreamableHTTPSessionManager(
            app=mcp_server,
            security_settings=_transport_security(server.host),
            max_request_body_size=server.max_body_bytes,
            session_idle_timeout=server.session_idle_s,
        )
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = Headers(scope=scope).get("authorization")
        try:
            principal = self._auth.authenticate(bearer_token(authorization))
        except AuthError as exc:
            await error_response(as_api_error(exc))(scope, receive, send)
            return
        if not await self._running():
            await error_response(ApiError(503, "unavailable", "the server is shutting down"))(scope, receive, send)
            return
        scope = {**scope, _PRINCIPAL_SCOPE_KEY: principal}
        if principal.key is not None:
            # The session manager serves a session only to the credential that opened it.
            token = AccessToken(token="", client_id=principal.tenant, scopes=[])  # the key itself is not kept
            scope["user"] = AuthenticatedUser(token)
        await self._manager.handle_request(scope, receive, send)

    async def _running(self) -> bool:
        """Start the session manager if this is the first request; False once it was stopped."""
        if self._stop.is_set():
            return False
        if self._started.is_set():
            return True
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="sandlot-mcp-sessions")
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({started, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._runner.done() and not self._started.is_set():
            await self._runner  # surfaces why it could not start
        return not self._stop.is_set()

    async def _run(self) -> None:
        async with self._manager.run():
            self._started.set()
            await self._stop.wait()

    async def close(self) -> None:
        self._stop.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner


def _transport_security(host: str) -> TransportSecuritySettings | None:
    """On a loopback address, refuse other Host and Origin headers: a web page must not reach us by DNS rebinding."""
    if host not in _LOOPBACK_HOSTS:
        return None  # served to a network; API keys are what guard it
    names = ("127.0.0.1", "localhost", "[::1]")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*names, *(f"{name}:*" for name in names)],
        allowed_origins=[origin for name in names for origin in (f"http://{name}", f"http://{name}:*")],
    )
