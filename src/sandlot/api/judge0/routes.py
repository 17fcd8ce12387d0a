"""The Judge0 door: Judge0 CE's REST API under ``/judge0``, over the same Service as every door.

Theory of operation
-------------------
A Judge0 client submits ``{source_code, language_id, stdin, expected_output,
limits...}``; the door validates it (``submission``: Judge0's units and
its 422 ``{"field": ["message"]}`` errors), turns it into a TaskSpec whose id is
the token (a UUID, as in Judge0) and submits it like any door, quotas and queue
bound included. Reading a submission asks the broker for the task and renders
it as Judge0 does (``render``: status ids, fields, base64). Nothing here
runs a process: the worker runs the task, a callback is a PUT from this process.

Routes (prefix /judge0)::

    POST   /submissions              ?base64_encoded ?wait ?fields -> 201 {"token"} or the submission
    GET    /submissions              ?page ?per_page: the caller's submissions still held (API keys only)
    POST   /submissions/batch        {"submissions": [...]} -> [{"token"} | {"field": [...]}]
    GET    /submissions/batch        ?tokens=a,b ?base64_encoded ?fields -> {"submissions": [...]}
    GET    /submissions/{token}      ?base64_encoded ?fields
    DELETE /submissions/{token}      cancels a queued or running task, answers the submission (base64)
    GET    /languages  /languages/all  /languages/{id}  /statuses
    GET    /config_info  /about  /version  /system_info  /workers

Every route authenticates like the other doors (the app's one Authenticator,
so a key's quotas are one budget); ``Authorization: Bearer KEY`` or Judge0's
own ``X-Auth-Token: KEY``. Tokens are tenant-scoped: another tenant's token is
404. Errors are Judge0's ``{"error": "..."}`` (422: the field map), rendered by
this router's route class so the rest of the app keeps its own shape.

Where this differs from Judge0, knowingly:

- DELETE cancels (Judge0 refuses to delete a queued or running submission and
  deletes a finished one); a finished one is answered and expires with the
  broker's result TTL.
- ``redirect_stderr_to_stdout`` merges the two pipes' chunks in the order they
  were read: writes microseconds apart can come out swapped (an exact ``2>&1``
  needs the sandbox to give both one pipe).
- The Judge0-only half of a submission (``store``) travels with its
  task, so behind several API replicas any of them renders any token whole;
  but ``GET /submissions`` lists what this process took, and a callback is
  sent by the process that took the submission (if it stops before the task
  ends, that callback is not sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST, CoreDep, race_disconnect, read_json
from sandlot.api.common.auth import Principal
from sandlot.api.common.core import Core
from sandlot.api.judge0 import info as judge0_info
from sandlot.api.judge0.errors import Judge0Error, Judge0Route, as_judge0_error, judge0_error
from sandlot.api.judge0.render import JUDGE0_VERSION, STATUSES, NotUtf8, parse_fields
from sandlot.api.judge0.state import Judge0State
from sandlot.api.judge0.submission import Submission
from sandlot.broker import TaskState
from sandlot.service import Service

CANCEL_WAIT_S = 10.0  # DELETE waits this long for the cancelled run's exit before answering
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20  # Judge0's
NOT_UTF8 = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"
NOT_UTF8_MANY = (
    "some attributes for one or more submissions cannot be converted to UTF-8, use base64_encoded=true query parameter"
)


def install(app: FastAPI, service: Service) -> None:
    """Mount the Judge0 routes under /judge0 on an app built by ``create_app(service)``."""
    core = app.state.core
    assert isinstance(core, Core) and core.service is service, "call install(app, service) after create_app(service)"
    app.state.judge0 = Judge0State(core, service.settings.judge0)
    # Out of sandlot's OpenAPI document: Judge0's own documentation describes this API and its error shape.
    app.include_router(router, include_in_schema=False)


# ------------------------------------------------------------ dependencies


_bearer = HTTPBearer(auto_error=False, description="An API key (only when the server has keys configured).")
_auth_token = APIKeyHeader(name="X-Auth-Token", auto_error=False, description="Judge0's header for the same key.")


async def _get_state(conn: HTTPConnection) -> Judge0State:
    state = conn.app.state.judge0
    assert isinstance(state, Judge0State)
    return state


async def _get_principal(
    core: CoreDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    auth_token: Annotated[str | None, Depends(_auth_token)],
) -> Principal:
    return core.auth.authenticate(bearer.credentials if bearer else auth_token)


StateDep = Annotated[Judge0State, Depends(_get_state)]
CallerDep = Annotated[Principal, Depends(_get_principal)]
Base64Param = Annotated[str | None, Query(description="true: text fields are base64, in and out")]
FieldsParam = Annotated[str | None, Query(description="comma-separated, or * for all")]

router = APIRouter(prefix="/judge0", tags=["judge0"], route_class=Judge0Route)

_SUBMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["source_code", "language_id"],
    "properties": {
        "source_code": {"type": "string"},
        "language_id": {"type": "integer", "examples": [71]},
        "stdin": {"type": "string"},
        "expected_output": {"type": "string"},
        "cpu_time_limit": {"type": "number", "description": "seconds"},
        "cpu_extra_time": {"type": "number", "description": "seconds"},
        "wall_time_limit": {"type": "number", "description": "seconds"},
        "memory_limit": {"type": "integer", "description": "KB"},
        "stack_limit": {"type": "integer", "description": "KB (checked, the server's own is used)"},
        "max_processes_and_or_threads": {"type": "integer"},
        "max_file_size": {"type": "integer", "description": "KB"},
        "redirect_stderr_to_stdout": {"type": "boolean"},
        "command_line_arguments": {"type": "string"},
        "compiler_options": {"type": "string", "description": "accepted and ignored"},
        "callback_url": {"type": "string"},
        "additional_files": {"type": "string", "description": "a base64 zip"},
    },
}
_SUBMISSION_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _SUBMISSION_SCHEMA}}}}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"submissions": {"type": "array", "items": _SUBMISSION_SCHEMA}},
                }
            }
        },
    }
}


# ------------------------------------------------------------ submissions


@router.post("/submissions", status_code=201, openapi_extra=_SUBMISSION_BODY, summary="Create a submission")
async def create_submission(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    base64_encoded: Base64Param = None,
    wait: Annotated[str | None, Query(description="true: answer when it has finished")] = None,
    fields: FieldsParam = None,
) -> Response:
    encoded = base64_encoded == "true"
    requested = parse_fields(fields)
    submission = state.parse(await read_json(request), caller.tenant, encoded, caller)
    await state.submit(caller, submission, waits=wait == "true")
    if wait != "true":
        return JSONResponse({"token": submission.token}, status_code=201)
    finished, _ = await race_disconnect(request.receive, state.core.wait_exit(caller.tenant, submission.token))
    if not finished:
        await state.core.cancel(caller.tenant, submission.token)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    found = await state.lookup(caller.tenant, submission.token)
    if found is None:
        raise judge0_error(404, f"submission {submission.token} vanished before it finished")
    try:
        body = await state.render(found[0], found[1], fields=requested, base64_encoded=encoded)
    except NotUtf8:
        body = {"error": NOT_UTF8, "token": submission.token}
    return JSONResponse(body, status_code=201)


@router.get("/submissions", summary="The caller's submissions, newest first (empty without API keys)")
async def list_submissions(
    state: StateDep,
    caller: CallerDep,
    base64_encoded: Base64Param = None,
    fields: FieldsParam = None,
    page: str | None = None,
    per_page: str | None = None,
) -> dict[str, Any]:
    requested = parse_fields(fields)
    page_number = _page_number(page, 1)
    if page_number <= 0:
        raise judge0_error(400, f"invalid page: {page_number}")
    size = _page_number(per_page, DEFAULT_PER_PAGE)
    if size <= 0:
        raise judge0_error(400, f"invalid per_page: {size}")
    size = min(size, MAX_PER_PAGE)
    # Without API keys every caller is the same "public" tenant: listing would show everyone's code and
    # output to anyone (Judge0 refuses its index without an authorization token). Tokens stay readable.
    held = state.store.newest_first(caller.tenant) if caller.key is not None else []
    found = [f for s in held if (f := await state.lookup(s.tenant, s.token))]
    shown = found[(page_number - 1) * size : page_number * size]
    try:
        items = [await state.render(t, s, fields=requested, base64_encoded=base64_encoded == "true") for t, s in shown]
    except NotUtf8 as exc:
        raise judge0_error(400, NOT_UTF8_MANY) from exc
    pages = math.ceil(len(found) / size)
    return {
        "submissions": items,
        "meta": {
            "current_page": page_number,
            "next_page": page_number + 1 if page_number < pages else None,
            "prev_page": page_number - 1 if page_number > 1 else None,
            "total_pages": pages,
            "total_count": len(found),
        },
    }


@router.post("/submissions/batch", openapi_extra=_BATCH_BODY, summary="Create up to 20 submissions")
async def create_batch(
    request: Request, state: StateDep, caller: CallerDep, base64_encoded: Base64Param = None
) -> JSONResponse:
    data = await read_json(request)
    items = data.get("submissions") if isinstance(data, dict) else None
    count = len(items) if isinstance(items, list) else 0
    _check_batch_size(count)
    assert isinstance(items, list)
    if state.service.broker.queue_depth() + count > state.service.server.max_queued:
        raise Judge0Error(503, {"error": "queue is full"}, {"Retry-After": "1"})
    parsed: list[Submission | dict[str, Any]] = []
    for item in items:
        try:
            parsed.append(state.parse(item, caller.tenant, base64_encoded == "true", caller))
        except Exception as exc:
            error = as_judge0_error(exc)
            if error is None:
                raise
            parsed.append(error.body)
    # Submissions of one program (say, one per test) are compiled once for all by the worker.
    programs = Counter(_program_of(p) for p in parsed if isinstance(p, Submission))
    answers: list[dict[str, Any]] = []
    for submission in parsed:
        if not isinstance(submission, Submission):
            answers.append(submission)
            continue
        try:
            await state.submit(caller, submission, compile_once=programs[_program_of(submission)] > 1)
        except Exception as exc:
            error = as_judge0_error(exc)
            if error is None:
                raise
            answers.append(error.body)
        else:
            answers.append({"token": submission.token})
    created = any("token" in answer for answer in answers)
    return JSONResponse(answers, status_code=201 if created else 422)


@router.get("/submissions/batch", summary="Several submissions at once")
async def get_batch(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    tokens: str | None = None,
    base64_encoded: Base64Param = None,
    fields: FieldsParam = None,
) -> dict[str, Any]:
    requested = parse_fields(fields)
    wanted = [t.strip() for t in (request.headers.get("tokens") or tokens or "").strip().split(",") if t.strip()]
    _check_batch_size(len(wanted))
    submissions: list[dict[str, Any] | None] = []
    try:
        for token in wanted:
            found = await state.lookup(caller.tenant, token)
            encoded = base64_encoded == "true"
            submissions.append(await state.render(*found, fields=requested, base64_encoded=encoded) if found else None)
    except NotUtf8 as exc:
        raise judge0_error(400, NOT_UTF8_MANY) from exc
    return {"submissions": submissions}


@router.get("/submissions/{token}", summary="A submission")
async def get_submission(
    token: str, state: StateDep, caller: CallerDep, base64_encoded: Base64Param = None, fields: FieldsParam = None
) -> dict[str, Any]:
    requested = parse_fields(fields)
    task, submission = await _find(state, caller, token)
    try:
        return await state.render(task, submission, fields=requested, base64_encoded=base64_encoded == "true")
    except NotUtf8 as exc:
        raise judge0_error(400, NOT_UTF8) from exc


@router.delete("/submissions/{token}", summary="Cancel a submission; answers it (always base64)")
async def delete_submission(
    token: str, state: StateDep, caller: CallerDep, fields: FieldsParam = None
) -> dict[str, Any]:
    requested = parse_fields(fields)
    task, submission = await _find(state, caller, token)
    if task.status != "done" and await state.service.broker.cancel(caller.tenant, token):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await state.core.wait_exit(caller.tenant, token)
        task, submission = await _find(state, caller, token)
    # Forced base64, as Judge0 does: the answer is always representable.
    return await state.render(task, submission, fields=requested, base64_encoded=True)


# ------------------------------------------------------------ reference


@router.get("/languages", summary="Languages: [{id, name}]")
async def languages(state: StateDep, caller: CallerDep) -> list[dict[str, Any]]:
    return [{"id": i, "name": lang.name} for i, lang in (await state.languages_for(caller)).items()]


@router.get("/languages/all", summary="Languages, archived ones included (there are none)")
async def all_languages(state: StateDep, caller: CallerDep) -> list[dict[str, Any]]:
    offered = await state.languages_for(caller)
    return [{"id": i, "name": lang.name, "is_archived": False} for i, lang in offered.items()]


@router.get("/languages/{language_id}", summary="One language, with its commands")
async def language(language_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    found = (await state.languages_for(caller)).get(int(language_id)) if language_id.isdigit() else None
    if found is None:
        raise judge0_error(404, f"language with id {language_id} doesn't exist")
    ours = found.language
    names = ours.source_name(None, ours.sample.encode())  # the default names, as for code sent without a name
    return {
        "id": found.id,
        "name": found.name,
        "is_archived": False,
        "source_file": names.file,
        "compile_cmd": shlex.join(ours.argv(ours.compile, names)) if ours.compile else None,
        "run_cmd": shlex.join(ours.argv(ours.run, names)),
    }


@router.get("/statuses", summary="The 14 statuses: [{id, description}]")
async def statuses(caller: CallerDep) -> list[dict[str, Any]]:
    return [{"id": i, "description": text} for i, text in STATUSES.items()]


@router.get("/config_info", summary="Defaults, maxima and switches, in Judge0's units")
async def config_info(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    return judge0_info.config_info(state.service, state.limits, state.callbacks)


@router.get("/about", summary="Which Judge0 API this is")
async def about(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    options = state.options
    return {
        "version": JUDGE0_VERSION,
        "homepage": options.homepage,
        "source_code": options.source_code,
        "maintainer": options.maintainer,
    }


@router.get("/version", response_class=PlainTextResponse, summary="The Judge0 API version, as text")
async def version(caller: CallerDep) -> str:
    return JUDGE0_VERSION


@router.get("/system_info", summary="The host's CPU and memory")
async def system_info(caller: CallerDep) -> dict[str, str]:
    return await asyncio.to_thread(judge0_info.system_info)


@router.get("/workers", summary="The queue and its workers")
async def workers(state: StateDep, caller: CallerDep) -> list[dict[str, Any]]:
    return judge0_info.workers(state.service)


# ----------------------------------------------------------------- helpers


async def _find(state: Judge0State, caller: Principal, token: str) -> tuple[TaskState, Submission | None]:
    found = await state.lookup(caller.tenant, token)
    if found is None:  # unknown, expired, or another tenant's: all look the same
        raise judge0_error(404, f"submission {token} not found")
    return found


def _program_of(submission: Submission) -> tuple[object, ...]:
    return (submission.language, submission.source_code, submission.extra_files)


def _check_batch_size(count: int) -> None:
    if count > judge0_info.MAX_SUBMISSION_BATCH_SIZE:
        limit = judge0_info.MAX_SUBMISSION_BATCH_SIZE
        raise judge0_error(400, f"number of submissions in a batch should be less than or equal to {limit}")
    if count == 0:
        raise judge0_error(400, "there should be at least one submission in a batch")


def _page_number(raw: str | None, default: int) -> int:
    """Ruby's to_i, as Judge0 reads it: leading digits, else 0."""
    if raw is None:
        return default
    text = raw.strip()
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    end = next((i for i, c in enumerate(digits) if not c.isdigit()), len(digits))
    return sign * int(digits[:end]) if end else 0
