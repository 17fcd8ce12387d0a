"""``GET /api/v1/environments``: the environments a run may name, with the languages each offers; and the
distributed mode's ``GET /internal/environments/{digest}``, from which workers fetch what they lack."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from sandlot.api.common.asgi import CoreDep
from sandlot.api.http import schemas as http_schemas
from sandlot.api.http.door import CallerDep
from sandlot.api.http.schemas import AUTH, answers
from sandlot.environments.transfer import INTERNAL_PATH, pack
from sandlot.errors import EnvironmentNotFound

router = APIRouter(tags=["service"])


@router.get(
    "/api/v1/environments",
    response_model=None,
    responses=answers(200, http_schemas.Environments, *AUTH),
    summary="The environments runs may name (`environment`), with their languages",
)
async def environments(caller: CallerDep) -> dict[str, Any]:
    return {"environments": await caller.service.list_environments(caller.principal.may_use)}


@router.get(INTERNAL_PATH + "{digest}", include_in_schema=False)
async def internal_environment(digest: str, request: Request, core: CoreDep) -> StreamingResponse:
    """A stored environment's root as its canonical tar, for the workers of this deployment (distributed mode).

    Not a tenant's route: the bearer token is the one this node registered in Redis, which only nodes read.
    A wrong token and an unknown digest get the same 404: nothing to learn from trying.
    """
    shared = core.service.shared
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    found = None
    if shared is not None and scheme.lower() == "bearer" and token:
        found = await asyncio.to_thread(shared.serves, digest, token)
    if found is None or shared is None:
        raise EnvironmentNotFound(digest)
    # A sync iterator: Starlette reads it in its threadpool, off the event loop.
    return StreamingResponse(pack(shared.store.rootfs_of(found)), media_type="application/x-tar")
