"""What the HTTP routes share beyond ``api.common``: the caller as a dependency, and the bodies only HTTP has.

A route gets its ``Caller`` as a FastAPI dependency (``CallerDep``): the
process's ``Core`` (``api.common.asgi.CoreDep``) and the authenticated
``Principal``. The dependencies are ``async`` so that quota state is only ever
touched on the event loop, never from the threadpool. Submitting and following
a task is ``Core``'s (``api.common.core``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandlot.api.common.asgi import CoreDep
from sandlot.api.common.auth import Principal
from sandlot.api.common.core import Core
from sandlot.errors import RejectedError
from sandlot.service import Service

MAX_IDEMPOTENCY_KEY_CHARS = 255

# ?language= of the routes that take a raw program (POST /run, POST /api/v1/execute).
LanguageQuery = Annotated[
    str | None,
    Query(
        description="the language of a raw body, or of a JSON request that names none (default: detected from "
        "the source: a Go package clause, a shebang, else Python)"
    ),
]

# ?environment= of POST /run (the JSON routes take an "environment" field).
EnvironmentQuery = Annotated[
    str | None,
    Query(description="run in this environment (see GET /api/v1/environments); default: the host's"),
]

_bearer = HTTPBearer(auto_error=False, description="An API key (only when the server has keys configured).")


@dataclass(frozen=True)
class Caller:
    """Who calls a route (``principal``), and the core it calls."""

    core: Core
    principal: Principal

    @property
    def service(self) -> Service:
        return self.core.service

    @property
    def tenant(self) -> str:
        return self.principal.tenant


async def get_caller(
    core: CoreDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    return Caller(core, core.auth.authenticate(credentials.credentials if credentials else None))


CallerDep = Annotated[Caller, Depends(get_caller)]


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
