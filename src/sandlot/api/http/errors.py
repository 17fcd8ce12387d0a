"""Every error the HTTP door answers, in one shape and one mapping table.

    {"error": {"code": "rejected", "message": "limits.time_limit: ...", "field": "limits.time_limit"}}

``as_api_error`` renders ``classify``'s verdict (api/common/errors.py; the
class-by-class table is in sandlot/errors.py) once, for JSON routes, the text
door and the WebSocket alike. The code is the failure's own ("rejected",
"pool_full", "too_many_executions", ...); the status is the kind's:

    rejected 400 · not_found 404 · conflict 409 · unauthorized 401 · forbidden 403
    rate_limited 429 · busy 429 · unavailable 503 · internal 500 (with no detail; logged by the server)

Retry-After goes with every failure that says how long to wait.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandlot.api.common.auth import retry_after_header
from sandlot.api.common.errors import ANSWERED, INTERNAL_MESSAGE, Kind, classify

_HTTP_CODES = {
    400: "rejected",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success, raised anywhere in a route and rendered by one handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = retry_after_header(self.retry_after_s)
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers


STATUS = {
    Kind.REJECTED: 400,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.UNAUTHORIZED: 401,
    Kind.FORBIDDEN: 403,
    Kind.RATE_LIMITED: 429,
    Kind.BUSY: 429,
    Kind.UNAVAILABLE: 503,
    Kind.INTERNAL: 500,
}


def as_api_error(exc: BaseException) -> ApiError:
    """What the client is told of an exception."""
    if isinstance(exc, ApiError):
        return exc
    failure = classify(exc)
    if failure.kind is Kind.INTERNAL:  # ours: the detail is for the server's log, not the client
        return ApiError(500, failure.code, INTERNAL_MESSAGE)
    return ApiError(
        STATUS[failure.kind], failure.code, failure.message, field=failure.field, retry_after_s=failure.retry_after_s
    )


# The exceptions with an answer of their own (the rest are 500s, logged).
MAPPED_ERRORS: tuple[type[Exception], ...] = (ApiError, *ANSWERED)


def error_response(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def install_handlers(app: FastAPI) -> None:
    """Render every error as the JSON error shape; no traceback ever reaches a client."""
    for exc_class in MAPPED_ERRORS:
        app.add_exception_handler(exc_class, _handle_mapped)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, _handle_unexpected)


async def _handle_mapped(request: Request, exc: Exception) -> Response:
    return error_response(as_api_error(exc))


async def _handle_validation(request: Request, exc: Exception) -> Response:
    # FastAPI validates path, query and header parameters; bodies are parsed by parse_execution.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("path", "query", "header", "body")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid request"))
    return error_response(ApiError(400, "rejected", message, field=field))


async def _handle_http(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "internal error"
    error = ApiError(status, _HTTP_CODES.get(status, "error"), str(detail))
    response = error_response(error)
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(500, "internal_error", "internal error"))
