"""What the HTTP API's OpenAPI document says each route takes and answers.

The routes build their answers as plain dicts (``api.common.render.exit_body`` and
friends) and parse their bodies themselves (``sandlot.requests``), so these
models are declarations for the document only: routes name them in
``responses=`` and never validate through them (``response_model=None``), which
keeps every answer byte-for-byte what it was. ``tests/test_openapi.py`` checks
live answers of every route against the document, so a declaration that drifts
from the code fails there. ``extra="forbid"`` makes the document say no other
field appears, so a new field must be declared here too.

``finish`` post-processes FastAPI's document: FastAPI adds a 422
``HTTPValidationError`` answer to every route with parameters, but this server
answers bad input with 400 and the one error shape (``errors``), so those
phantom answers and their schemas are removed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandlot.models import Status


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Closed):
    code: str = Field(examples=["rejected"], description="machine-readable: rejected, not_found, queue_full, ...")
    message: str = Field(examples=["limits.time_limit: must be a positive number"])
    field: str | None = Field(examples=["limits.time_limit"], description="the request field at fault, when one is")


class ErrorBody(_Closed):
    """Every error of the JSON API."""

    error: ErrorDetail


class Result(_Closed):
    """How a run (or one stage of it) ended: the status model shared by every door."""

    status: Status
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    compile_output: str
    wall_time: float = Field(description="seconds")
    cpu_time: float = Field(description="seconds")
    memory_peak: int | None = Field(description="bytes")
    truncated: bool
    language: str
    message: str


class StageResult(Result):
    name: str = Field(examples=["compile"])


class FetchedFile(_Closed):
    name: str
    content: str = Field(description="base64")


class TaskResult(Result):
    """The whole result of a task: the Result, each stage's own, and the files asked for (fetch_files)."""

    stages: list[StageResult]
    files: list[FetchedFile]
    value: str | None = Field(
        default=None, description="a stateful session's cell: the repr of its last expression (capped); else null"
    )


class RunAnswer(TaskResult):
    task_id: str


TaskStatus = Literal["queued", "running", "done"]


class Queued(_Closed):
    task_id: str
    status: TaskStatus = Field(description="queued, unless a replayed Idempotency-Key names a task further along")


class TaskStateBody(_Closed):
    task_id: str
    status: TaskStatus
    result: TaskResult | None = Field(None, description="present once the task is done")


class Cancelled(_Closed):
    task_id: str
    cancelled: bool


class Language(_Closed):
    name: str
    display_name: str
    version: str
    aliases: list[str]
    extensions: list[str]
    compiled: bool
    sample: str | None


class Languages(_Closed):
    languages: list[Language]


class EnvironmentListed(_Closed):
    name: str
    digest: str = Field(description="sha256:<hex>: the image's config digest, or the declared spec's hash")
    kind: Literal["image", "built"]
    languages: list[str] = Field(description="the languages whose toolchain this environment contains")


class Environments(_Closed):
    environments: list[EnvironmentListed]


class Health(_Closed):
    status: Literal["ok"]


class Readiness(_Closed):
    status: Literal["ready", "not_ready", "no_worker"]
    message: str | None = Field(default=None, description="with no_worker: which level has no live worker")


class SessionCreated(_Closed):
    session_id: str
    expires_in_s: float
    isolation: str
    stateful: bool | None = Field(default=None, description="a stateful session: true (absent otherwise)")
    language: str | None = Field(default=None, description="a stateful session's interpreter")


class SessionStateModel(_Closed):
    """In distributed mode busy, bytes_used ... files_limit are null while the worker holding it is gone or silent."""

    session_id: str
    isolation: str
    environment: str = Field(description='"" for the host\'s')
    created_at: float = Field(description="Unix time")
    expires_at: float = Field(description="Unix time: idle or absolute expiry, whichever is first")
    busy: bool | None = Field(description="a run of the session is under way or waiting; null: see below")
    bytes_used: int | None
    files_used: int | None = Field(description="files, directories and links, the workdir itself included")
    disk_limit_bytes: int | None = Field(description="null in distributed mode before a worker holds the session")
    files_limit: int | None
    stateful: bool = Field(description="a stateful session: its files are its interpreter's box's workdir")
    language: str = Field(description='a stateful session\'s interpreter; "" for a file session')


class FileEntry(_Closed):
    path: str
    size: int = Field(description="bytes")


class FileList(_Closed):
    files: list[FileEntry]
    truncated: bool = Field(description="the listing stopped at the server's entry cap")


# ------------------------------------------------------------- requests

_LIMITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "time_limit": {"type": "number", "description": "CPU seconds"},
        "wall_time_limit": {"type": "number", "description": "seconds"},
        "memory_limit": {"type": "integer", "description": "MiB"},
        "max_processes": {"type": "integer"},
        "max_file_size": {"type": "integer", "description": "KiB"},
        "max_output": {"type": "integer", "description": "KiB of stdout and stderr together"},
    },
}
EXECUTION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "code, or files (the first is the main one); everything else is optional.",
    "properties": {
        "language": {"type": "string", "examples": ["python"]},
        "code": {"type": "string", "examples": ["print('hello')"]},
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "content": {"type": "string"},
                    "encoding": {"enum": ["utf8", "base64"]},
                },
                "required": ["name", "content"],
            },
        },
        "stdin": {"type": "string"},
        "stdin_encoding": {"enum": ["utf8", "base64"], "description": "base64: stdin is any bytes (default utf8)"},
        "args": {"type": "array", "items": {"type": "string"}},
        "limits": _LIMITS_SCHEMA,
        "compile_limits": _LIMITS_SCHEMA,
        "session_id": {"type": "string"},
        "isolation": {"enum": ["jail", "gvisor"]},
        "commands": {"type": "array", "items": {"type": "string"}},
        "fetch_files": {"type": "array", "items": {"type": "string"}},
        "environment": {"type": "string", "description": "run in this environment (GET /api/v1/environments)"},
    },
}
# POST /api/v1/run also takes output_encoding, and a language taken from the main file's extension.
RUN_REQUEST_SCHEMA: dict[str, Any] = {
    **EXECUTION_REQUEST_SCHEMA,
    "description": "As POST /api/v1/execute; with files and no language, the language of the main file's "
    "extension (the file named main, else the first).",
    "properties": {
        **EXECUTION_REQUEST_SCHEMA["properties"],
        "output_encoding": {
            "enum": ["utf8", "base64"],
            "description": "base64: stdout, stderr and compile_output of the answer (and of its stages) are "
            "base64 of the exact bytes; utf8 (the default): text, undecodable bytes as U+FFFD",
        },
    },
}
TEXT = "text/plain"


EXECUTION_EXAMPLE = {"language": "python", "code": "print(input()[::-1])", "stdin": "olleh"}


def json_body(schema: dict[str, Any], *, required: bool = True, example: Any = None) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (the routes read and check it themselves)."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:  # else Swagger UI makes one up from every field, code and files together
        media["example"] = example
    return {"requestBody": {"required": required, "content": {"application/json": media}}}


# -------------------------------------------------------------- answers

_WHY = {
    400: "Bad input (any kind, type errors included); `field` names it",
    401: "An API key is required (only when the server has keys)",
    403: "Unknown API key, the key may not do this, or a cross-origin browser request",
    404: "No such task, session, file (or another tenant's) or environment",
    409: "The task has already finished, or the box replaced the file while it was being written",
    413: "The request body is over the server's limit",
    429: "Over the key's quota, or the queue or pool is full; see Retry-After",
    503: "The server is shutting down, or the broker or the isolation level is unavailable; see Retry-After",
    507: "The session's workdir is full",
}
AUTH = (401, 403, 429)  # every route that takes a key may answer these
SUBMIT = (400, *AUTH, 404, 413, 503)  # a route that queues an execution (404: an unknown environment)


def answers(
    ok: int, model: type[BaseModel] | None, *errors: int, media: str = "application/json", what: str = "OK"
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: its success answer, then each error status in the error shape."""
    declared: dict[int | str, dict[str, Any]] = {ok: _answer(model, media, what)}
    for status in sorted(set(errors)):
        declared[status] = {"model": ErrorBody, "description": _WHY[status]}
    return declared


def text_answers(
    ok: int, *, text: tuple[int, ...], json: tuple[int, ...], what: str
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the text door: its own errors are one line of text; those raised before
    the route runs (the key, the body cap) are in the JSON error shape; a status may be either."""
    declared: dict[int | str, dict[str, Any]] = {ok: _answer(None, TEXT, what)}
    for status in sorted({*text, *json}):
        content: dict[str, Any] = {}
        if status in json:
            content["application/json"] = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
        if status in text:
            content[TEXT] = {"schema": {"type": "string"}}
        declared[status] = {"description": _WHY.get(status, "The sandbox failed (internal_error)"), "content": content}
    return declared


def _answer(model: type[BaseModel] | None, media: str, what: str) -> dict[str, Any]:
    if model is not None and media == "application/json":
        return {"model": model, "description": what}
    return {"description": what, "content": {media: {"schema": {"type": "string"}}}}


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's phantom 422 answers and their schemas (see the module's docstring)."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
