"""What the HTTP routes share beyond ``api.common``: the caller as a dependency, and the bodies only HTTP has.

Routes get the ``Core`` (``api.common.asgi.CoreDep``) and the caller's
``Principal`` (``PrincipalDep``) as FastAPI dependencies; both are ``async`` so
that quota state is only ever touched on the event loop, never from the threadpool.
Submitting and following a task is ``Core``'s (``api.common.core``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandlot.api.common.asgi import CoreDep
from sandlot.api.common.auth import Principal
from sandlot.errors import RejectedError

MAX_IDEMPOTENCY_KEY_CHARS = 255

_bearer = HTTPBearer(auto_error=False, description="An API key (only when the server has keys configured).")


async def get_principal(
    core: CoreDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return core.auth.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def decode_code(body: bytes) -> str:
    """A raw body that is the program's source: it must be UTF-8 text."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedError(f"code: the body is not valid UTF-8 (byte {exc.start})", field="code") from exc


def idempotency_key(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise RejectedError(
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters", field="Idempotency-Key"
        )
    return value
