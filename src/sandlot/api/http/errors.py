"""Every error the HTTP door answers, in one shape and one mapping table.

    {"error": {"code": "rejected", "message": "limits.time_limit: ...", "field": "limits.time_limit"}}

``as_api_error`` maps the layers' exceptions to statuses once, for JSON routes,
the text door and the WebSocket alike:

    RejectedError           400 rejected (any bad input, type errors included)
    SessionNotFound         404 not_found
    AuthError               401 / 403 / 429 as the authenticator says
    QueueFull, PoolFull     429 queue_full / pool_full, with Retry-After
    Unavailable             503 unavailable, with Retry-After (the broker, or an isolation level)
    anything else           500 internal_error, with no detail (logged by the server)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandlot.api.common.auth import AuthError, retry_after_header
from sandlot.broker import QueueFull
from sandlot.errors import RejectedError, Unavailable
from sandlot.pool import PoolFull, SessionNotFound

BROKER_RETRY_AFTER_S = 5.0

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


def as_api_error(exc: BaseException) -> ApiError:
    """The one mapping from an exception to what the client is told."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionNotFound):  # before RejectedError: it is one
        return ApiError(404, "not_found", str(exc), field=exc.field)
    if isinstance(exc, RejectedError):
        return ApiError(400, "rejected", str(exc), field=exc.field)
    if isinstance(exc, AuthError):
        return ApiError(exc.status, exc.code, str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, QueueFull):
        return ApiError(429, "queue_full", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, PoolFull):
        return ApiError(429, "pool_full", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, Unavailable):
        return ApiError(503, "unavailable", str(exc) or "the broker is unavailable", retry_after_s=BROKER_RETRY_AFTER_S)
    return ApiError(500, "internal_error", "internal error")


# The exceptions with a mapping of their own (the rest are 500s).
MAPPED_ERRORS = (ApiError, RejectedError, AuthError, QueueFull, PoolFull, Unavailable)


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
