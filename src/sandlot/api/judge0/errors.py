"""Judge0's error shapes, for the Judge0 routes only (the rest of the app keeps its own).

    422  {"source_code": ["can't be blank"], "cpu_time_limit": ["must be ..."]}   a submission's fields
    4xx/5xx  {"error": "queue is full"}                                           everything else

``Judge0Route`` is the router's route class: it wraps the whole request
handler, dependencies included, so an auth failure or a full queue is answered
in Judge0's shape with our status code (a full queue is 503, as in Judge0).
Anything unmapped goes on to the app's handler: a 500 without detail.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from sandlot.api.common.auth import AuthError, retry_after_header
from sandlot.api.http.errors import BROKER_RETRY_AFTER_S, ApiError
from sandlot.api.judge0.render import InvalidFields
from sandlot.api.judge0.submission import Judge0Invalid
from sandlot.broker import QueueFull
from sandlot.errors import RejectedError, Unavailable
from sandlot.pool import PoolFull


class Judge0Error(Exception):
    """An answer in Judge0's shape, raised anywhere in a route."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def judge0_error(status: int, message: str) -> Judge0Error:
    return Judge0Error(status, {"error": message})


class Judge0Route(APIRoute):
    """Renders this router's errors (dependencies' included) as Judge0 does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def judge0_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = as_judge0_error(exc)
                if error is None:
                    raise
                return JSONResponse(error.body, status_code=error.status, headers=error.headers)

        return judge0_handler


def as_judge0_error(exc: Exception) -> Judge0Error | None:
    """The one mapping from an exception to a Judge0 answer; None: not ours to answer."""
    if isinstance(exc, Judge0Error):
        return exc
    if isinstance(exc, Judge0Invalid):
        return Judge0Error(422, exc.errors)
    if isinstance(exc, (InvalidFields, RejectedError)):
        return judge0_error(400, str(exc))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body"))
        return judge0_error(400, f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request")
    retry: float | None = None
    if isinstance(exc, (QueueFull, PoolFull)):
        status, message, retry = 503, "queue is full", exc.retry_after_s
    elif isinstance(exc, Unavailable):
        status, message, retry = 503, str(exc) or "the broker is unavailable", BROKER_RETRY_AFTER_S
    elif isinstance(exc, AuthError):
        status, message, retry = exc.status, str(exc), exc.retry_after_s
    elif isinstance(exc, ApiError):
        status, message, retry = exc.status, exc.message, exc.retry_after_s
    else:
        return None
    headers = {"Retry-After": retry_after_header(retry)} if retry is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Judge0Error(status, {"error": message}, headers)
