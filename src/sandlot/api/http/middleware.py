"""Pure ASGI middleware: the body cap, the per-response counter, the cross-origin guard.

Both are plain ASGI wrappers rather than ``BaseHTTPMiddleware`` so that they
see the raw message flow: the body cap refuses a request before any of its
body is buffered, and neither breaks streaming responses or WebSockets.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST
from sandlot.api.http.errors import ApiError
from sandlot.metrics import Metrics

_WS_ABNORMAL_CLOSE = 1006
# As FastAPI's JSONResponse writes it: compact, UTF-8. Made once: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes`` with 413, declared or chunked."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_too_large(send, self.max_body_bytes)  # before reading a single byte of it
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large(self.max_body_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except ApiError as exc:
            # Routes render ApiError themselves; this catches a chunked overflow noticed outside a route.
            if exc.status != 413 or started:
                raise
            await _send_too_large(send, self.max_body_bytes)


class CountResponses:
    """Count every response in ``sandlot_requests_total`` by door and status code."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        code: int | None = None
        client_code: int | None = None  # a WebSocket close code the client sent

        async def watching_receive() -> Message:
            nonlocal client_code
            message = await receive()
            if message["type"] == "websocket.disconnect":
                client_code = int(message.get("code", _WS_ABNORMAL_CLOSE))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal code
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                code = int(message["status"])
            elif message["type"] == "websocket.close" and code is None:
                code = int(message.get("code", 1000))
            await send(message)

        try:
            await self.app(scope, watching_receive, watching_send)
        except BaseException:
            code = code or 500
            raise
        finally:
            if code is None:
                code = client_code or (CLIENT_CLOSED_REQUEST if scope["type"] == "http" else _WS_ABNORMAL_CLOSE)
            self.metrics.requests.labels(door=door_of(scope), code=str(code)).inc()


def door_of(scope: Scope) -> str:
    """The door label of a request: each compatible API, the playground, SSE, WebSocket, or the JSON API."""
    if scope["type"] == "websocket":
        return "ws"
    path = str(scope.get("path", ""))
    if path == "/run":
        return "run_text"
    if path.startswith("/api/v1/tasks/") and path.endswith("/events"):
        return "sse"
    if path.startswith("/api/v2/"):
        return "piston"
    if path.startswith("/judge0/") or path == "/judge0":
        return "judge0"
    if path.startswith("/mcp"):
        return "mcp"
    if path == "/" or path.startswith("/static/"):
        return "playground"
    return "http"


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length itself
    return None


def too_large(max_body_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is over {max_body_bytes} bytes", field="body")


async def _send_too_large(send: Send, max_body_bytes: int) -> None:
    error = too_large(max_body_bytes)
    await send_json(send, error.status, error.body(), error.headers())


async def send_json(send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A JSON answer straight on the ASGI channel, as FastAPI's JSONResponse writes it."""
    await send_json_bytes(send, status, _ENCODER.encode(content).encode(), headers)


async def send_json_bytes(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """An answer whose body is JSON already, with its length and any extra headers."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class SameOriginOnly:
    """Refuse state-changing requests a browser sends on behalf of another site's page.

    A page on any site can make the visitor's browser POST to ``http://127.0.0.1:8080``
    (a "simple" request: ``text/plain``, ``mode: 'no-cors'``); the browser never lets
    the page read the answer, but the code would run. Browsers say where a request
    comes from: ``Origin`` on every cross-origin POST and WebSocket handshake, and
    ``Sec-Fetch-Site``. A request is refused (403, or the WebSocket closed with
    1008 before it is accepted) when its ``Origin`` is neither this server's own
    (the ``Host`` it was sent to, as the playground's are) nor listed in
    ``allowed_origins``, or, without an ``Origin``, when ``Sec-Fetch-Site`` says
    ``cross-site`` or ``same-site`` (another port of the same host is same-site).
    curl, the Python clients and other programs send neither header, so they pass.
    Reads (GET, HEAD, OPTIONS) pass: without CORS headers no page can read them.
    """

    _READS = frozenset({"GET", "HEAD", "OPTIONS"})
    _SAFE_SITES = frozenset({b"same-origin", b"none"})

    def __init__(self, allowed_origins: str, *, metrics: Metrics) -> None:
        self.metrics = metrics
        origins = {o.strip().rstrip("/").lower() for o in allowed_origins.split(",") if o.strip()}
        self.allow_any = "*" in origins
        self.allowed = frozenset(o.encode() for o in origins)

    def refuses(self, scope: Scope) -> bool:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            return False
        if scope["type"] == "http" and scope.get("method") in self._READS:
            return False
        origin = host = site = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.lower()
            elif name == b"host":
                host = value.lower()
            elif name == b"sec-fetch-site":
                site = value.lower()
        if origin is not None:
            if origin in self.allowed:
                return False
            # Same origin: the page was served by this server under the name the browser used for it.
            # Compared without the scheme, which a TLS-terminating proxy in front changes.
            return host is None or origin.partition(b"://")[2] != host
        return site is not None and site not in self._SAFE_SITES

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.requests.labels(door=door_of(scope), code="403").inc()
        if scope["type"] == "websocket":
            await receive()  # websocket.connect: the handshake is answered 403 by the server
            await send({"type": "websocket.close", "code": 1008, "reason": "cross-origin request refused"})
            return
        message = (
            "cross-origin request refused: this server only accepts state-changing requests from its own pages "
            "and from programs (set allowed_origins to accept another site's)"
        )
        await send_json(send, 403, ApiError(403, "forbidden", message, field="Origin").body())
