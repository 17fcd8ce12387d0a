"""``POST /api/v1/execute`` as a raw ASGI route: an API node's ingest path, without FastAPI's per-request work.

Theory of operation
-------------------
Queueing an execution is the request an API node answers most, and the cheapest
one: parse, validate, one Redis round trip, 202. Through FastAPI, solving the
route's dependencies, building a ``Request`` and a ``JSONResponse`` and walking
the router cost several times the work itself (docs/benchmarks.md, ingest), so
``ExecuteRoute`` is a middleware placed just inside the two that count
responses and cap bodies (``http_middleware``): it answers ``POST
/api/v1/execute`` itself and hands every other request to FastAPI.

It is the same door as the rest of the HTTP API, sharing what decides the
answer with it: the caller from ``Authorization`` (``Authenticator``, quotas
included), the body from ``parse_json``/``decode_code`` and
``parse_execution``, validation, the key's execution slot and the queueing
from ``http_common.submit``, and every error from ``as_api_error``. The
FastAPI route of the same path in ``http_tasks`` only declares it, for the
OpenAPI document and for 405 on other methods; this serves it.

A client that leaves before its body has arrived gets no answer (the counter
records 499). Anything unexpected is a logged 500 with no detail, as elsewhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from sandlot.api.http_common import Door, bearer_token, decode_code, idempotency_key, parse_json, submit
from sandlot.api.http_errors import MAPPED_ERRORS, ApiError, as_api_error
from sandlot.requests import parse_execution

log = logging.getLogger(__name__)

PATH = "/api/v1/execute"
DEFAULT_TEXT_LANGUAGE = "python"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class ExecuteRoute:
    """Serves ``POST /api/v1/execute``; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, *, door: Door) -> None:
        self.app = app
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            status, body = 202, await self._queue(scope, receive)
        except _ClientGone:
            return
        except MAPPED_ERRORS as exc:
            error = as_api_error(exc)
            await _send_json(send, error.status, error.body(), error.headers())
            return
        except Exception:
            log.exception("POST %s failed", PATH)
            error = ApiError(500, "internal_error", "internal error")
            await _send_json(send, error.status, error.body(), error.headers())
            return
        await _send_json(send, status, body, None)

    async def _queue(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        authorization = content_type = idempotency = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"idempotency-key" and idempotency is None:
                idempotency = value.decode("latin-1")
        door = self.door
        principal = door.auth.authenticate(bearer_token(authorization))
        language = _query_value(scope["query_string"], "language")
        body = await _read_body(receive)
        # The level when the body names none, settled now rather than by replacing the spec in validate.
        level = door.service.isolation_for("", principal.min_isolation)
        if _is_json(content_type):
            data = parse_json(body)
        else:
            data = {"language": language or DEFAULT_TEXT_LANGUAGE, "code": decode_code(body)}
        spec = parse_execution(data, tenant=principal.tenant, default_language=language, default_isolation=level)
        key = idempotency_key(idempotency)
        spec = await submit(door, principal, spec, idempotency=key)
        status = "queued"  # just accepted; only a replayed Idempotency-Key can name a task further along
        if key is not None and (state := await door.service.broker.get(principal.tenant, spec.id)) is not None:
            status = state.status
        return {"task_id": spec.id, "status": status}


async def _read_body(receive: Receive) -> bytes:
    """The whole body (``BodyLimit``, outside, raises 413 past the cap while it arrives)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _query_value(query_string: bytes, name: str) -> str | None:
    """The last value of a query parameter, as Starlette reads it; None when absent."""
    if not query_string:
        return None
    found = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == name:
            found = value
    return found


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _send_json(send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None) -> None:
    """As FastAPI's JSONResponse writes it: compact, UTF-8, with its length."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    raw = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
