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

from sandlot.api.common.auth import retry_after_header
from sandlot.api.common.errors import Kind, classify
from sandlot.api.http.errors import ApiError
from sandlot.api.judge0.submission import Judge0Invalid

# Judge0's status for each kind: any bad request is a 400 (its 422 is Judge0Invalid's), a full queue a 503.
STATUS = {
    Kind.REJECTED: 400,
    Kind.NOT_FOUND: 400,
    Kind.CONFLICT: 400,
    Kind.UNAUTHORIZED: 401,
    Kind.FORBIDDEN: 403,
    Kind.RATE_LIMITED: 429,
    Kind.BUSY: 503,
    Kind.UNAVAILABLE: 503,
}
QUEUE_FULL = "queue is full"  # Judge0's own words, whichever of our queues is full


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
    if isinstance(exc, Judge0Invalid):  # before classify's REJECTED: it is a RejectedError with every field's list
        return Judge0Error(422, exc.errors)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body"))
        return judge0_error(400, f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request")
    if isinstance(exc, ApiError):
        status, message, retry = exc.status, exc.message, exc.retry_after_s
    else:
        failure = classify(exc)
        if failure.kind not in STATUS:  # ours: the app's handler answers a 500 without detail
            return None
        status, retry = STATUS[failure.kind], failure.retry_after_s
        message = QUEUE_FULL if failure.kind is Kind.BUSY else failure.message
    headers = {"Retry-After": retry_after_header(retry)} if retry is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Judge0Error(status, {"error": message}, headers)
