"""Sessions: a workdir kept for a tenant, whose files survive between runs (any free box runs them).

Runs name the session with ``session_id``; these routes create and end
sessions and move files in and out of the workdir. The file operations are
``Sessions.files`` (on the workdir's fd), which never follow what a program
planted (links, fifos) and refuse paths leaving the workdir: a RejectedError
here is a 400, a missing file a 404, a file the running program recreated while
we wrote it a 409. A listing stops at ``MAX_LIST_ENTRIES`` and says ``truncated``.
They do not wait for a running execution of the session; a program sees a file appear or change as it would on any disk.
In distributed mode the workdir is on a worker, not here: any API node forwards the
file operations to it (``sandlot.sessions_remote``); a worker gone is a 503.

``{"stateful": true}`` creates a stateful session instead (``sandlot.stateful``: an
interpreter kept in a pinned box, runs are its cells); DELETE ends either kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sandlot.api.common.parsing import parse_json
from sandlot.api.http.door import Caller, CallerDep
from sandlot.api.http.errors import ApiError
from sandlot.api.http.schemas import (
    AUTH,
    FileEntry,
    FileList,
    SessionCreated,
    SessionStateModel,
    answers,
    json_body,
)
from sandlot.config import LimitRequest
from sandlot.errors import RejectedError
from sandlot.sessions import NO_SPACE_ERRNOS

MAX_DOWNLOAD_BYTES = 16 * 1024 * 1024

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])

_RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string"}}}}}
_SESSION_BODY = json_body(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "isolation": {"enum": ["jail", "gvisor"], "description": "default: the server's"},
            "stateful": {"type": "boolean", "description": "an interpreter that keeps its variables between runs"},
            "language": {"type": "string", "description": "stateful: the interpreter (python)"},
            "environment": {"type": "string", "description": "the session's runs go there; default: the host's"},
            "limits": {"type": "object", "description": "stateful: memory for the session's life, cells' defaults"},
        },
    },
    required=False,
)
# 503: distributed mode, the worker holding the session's workdir is gone (or no worker serves its level).
_FILE_ERRORS = (400, *AUTH, 404, 503)


@router.post(
    "",
    status_code=201,
    openapi_extra=_SESSION_BODY,
    response_model=None,
    responses=answers(201, SessionCreated, 400, *AUTH, 413, 503, what="Created"),
    summary="Create a session (a workdir kept for this tenant)",
)
async def create_session(request: Request, caller: CallerDep) -> JSONResponse:
    """Optional JSON body: {"isolation": "jail" | "gvisor", "environment": NAME}.

    Isolation defaults to the server's, raised to the key's minimum; the session's runs go in
    ``environment`` (an unknown one is 404) unless a run names another.
    """
    body = await request.body()
    data = parse_json(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise RejectedError("the body must be a JSON object", field="body")
    isolation = data.get("isolation") or ""
    if not isinstance(isolation, str):
        raise RejectedError("isolation: must be a string", field="isolation")
    if data.get("stateful") is not None and not isinstance(data["stateful"], bool):
        raise RejectedError("stateful: must be true or false", field="stateful")
    environment = data.get("environment") or ""
    if not isinstance(environment, str):
        raise RejectedError("environment: must be a string", field="environment")
    caller.principal.check_environment(environment)  # another tenant's environment: as unknown, 404
    if data.get("stateful"):
        return await _create_stateful(caller, data, isolation, environment)
    for key in sorted(data.keys() & {"language", "limits"}):
        raise RejectedError(f'{key}: only for a stateful session ("stateful": true)', field=key)
    session = await caller.service.create_session(
        caller.tenant, isolation, min_isolation=caller.principal.min_isolation, environment=environment
    )
    return JSONResponse(
        {
            "session_id": session.id,
            "expires_in_s": session.expires_in_s,
            "isolation": session.isolation,
        },
        status_code=201,
    )


@router.delete(
    "/{session_id}",
    status_code=204,
    response_model=None,
    responses={**answers(204, None, *AUTH, 404, 503), 204: {"description": "Ended"}},
    summary="End a session and free its workdir",
)
async def end_session(session_id: str, caller: CallerDep) -> Response:
    await caller.service.end_session(caller.tenant, session_id)
    return Response(status_code=204)


async def _create_stateful(caller: Caller, data: dict[str, Any], isolation: str, environment: str) -> JSONResponse:
    """A stateful session: an interpreter kept in a pinned box (see sandlot.stateful); ``isolation`` and
    ``environment`` were checked by the route, as for any session."""
    unknown = data.keys() - {"isolation", "stateful", "language", "environment", "limits"}
    if unknown:
        first = min(unknown)
        raise RejectedError(f"{first}: unknown field", field=first)
    language, limits = data.get("language") or "python", data.get("limits")
    if not isinstance(language, str):
        raise RejectedError("language: must be a string", field="language")
    if limits is not None and not isinstance(limits, dict):
        raise RejectedError("limits: must be an object", field="limits")
    session = await caller.service.create_stateful(
        caller.tenant,
        language,
        isolation=isolation,
        min_isolation=caller.principal.min_isolation,
        limits=LimitRequest.from_mapping(limits, where="limits") if limits else None,
        environment=environment,
    )
    body = {
        "session_id": session.id,
        "expires_in_s": session.expires_in_s,
        "isolation": session.isolation,
        "stateful": True,
        "language": session.language,
    }
    return JSONResponse(body, status_code=201)


@router.get(
    "/{session_id}",
    response_model=None,
    responses=answers(200, SessionStateModel, *AUTH, 404, 503),
    summary="A session's state: level, environment, expiry, busy, files and bytes used",
)
async def get_session(session_id: str, caller: CallerDep) -> dict[str, Any]:
    state = await caller.service.describe_session(caller.tenant, session_id)
    fields = dataclasses.asdict(state)
    return {"session_id": fields.pop("id"), **fields}


@router.get(
    "/{session_id}/files",
    response_model=None,
    responses=answers(200, FileList, *_FILE_ERRORS),
    summary="The regular files of the session's workdir",
)
async def list_files(session_id: str, caller: CallerDep) -> dict[str, Any]:
    listing = await caller.service.session_files(caller.tenant, session_id).listing()
    return {"files": [{"path": f.path, "size": f.size} for f in listing.files], "truncated": listing.truncated}


@router.put(
    "/{session_id}/files/{path:path}",
    status_code=201,
    openapi_extra=_RAW_BODY,
    response_model=None,
    responses=answers(201, FileEntry, *_FILE_ERRORS, 409, 413, 507, what="Written"),
    summary="Upload a file",
)
async def put_file(session_id: str, path: str, request: Request, caller: CallerDep) -> Response:
    files = caller.service.session_files(caller.tenant, session_id)
    data = await request.body()
    try:
        await files.write(path, data)
    except RejectedError as exc:  # a link, a fifo, a path leaving the workdir; FileBusy: a 409
        raise exc.for_field("path") from exc
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise ApiError(507, "workspace_full", f"{path}: the session's workdir is full", field="path") from exc
        raise
    return JSONResponse({"path": path, "size": len(data)}, status_code=201)


@router.get(
    "/{session_id}/files/{path:path}",
    response_class=Response,
    responses=answers(200, None, *_FILE_ERRORS, media="application/octet-stream", what="The file's bytes"),
    summary="Download a file",
)
async def get_file(session_id: str, path: str, caller: CallerDep) -> Response:
    files = caller.service.session_files(caller.tenant, session_id)
    try:
        data = await files.read(path, MAX_DOWNLOAD_BYTES)
    except RejectedError as exc:  # a link, fifo or other refusal; FileMissing: a 404
        raise exc.for_field("path") from exc
    return Response(data, media_type="application/octet-stream")
