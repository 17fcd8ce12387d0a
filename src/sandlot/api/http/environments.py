"""``GET /api/v1/environments``: the environments a run may name, with the languages each offers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from sandlot.api.http import schemas as http_schemas
from sandlot.api.http.door import CallerDep
from sandlot.api.http.schemas import AUTH, answers

router = APIRouter(tags=["service"])


@router.get(
    "/api/v1/environments",
    response_model=None,
    responses=answers(200, http_schemas.Environments, *AUTH),
    summary="The environments runs may name (`environment`), with their languages",
)
async def environments(caller: CallerDep) -> dict[str, Any]:
    # Off the loop: it reads each environment's metadata and probes its toolchains on disk.
    return {"environments": await asyncio.to_thread(caller.service.environments, caller.principal.may_use)}
