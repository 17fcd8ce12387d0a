"""The Piston door: Piston's v2 API over the shared engine, for clients written against Piston.

    GET  /api/v2/runtimes   [{language, version, aliases, runtime?}]
    POST /api/v2/execute    {language, version, files, stdin?, args?, {compile,run}_{timeout,cpu_time,memory_limit}?}
    GET  /api/v2/packages   []  (nothing to install or remove here)

Each path also answers with a trailing slash (``aiopyston`` asks for ``runtimes/``).
``install(app, service)`` mounts the routes on an app built by ``create_app``.

Theory of operation
-------------------
Like every door this one parses and renders only: the request becomes a
``TaskSpec``, is submitted through the same admission and quota path as the
JSON door, and the answer is rendered from the task's event stream once its
exit event arrives (``render``; a client that hangs up has its task cancelled).

Piston's rules kept as they are:

- ``version`` is required: ``*``, an exact version or a semver range (``3``,
  ``3.11.x``, ``^3.10``, ``>=3 <4``); no match is 400 ``{language}-{version}
  runtime is unknown``, the same message as an unknown language.
- Environments' languages are runtimes of their own (``_environment_runtimes``):
  ``python@datasci`` with any version, or ``python`` with version ``0.0.0-datasci``.
- The first ``utf8`` file is the program; ``base64`` and ``hex`` files are data
  written beside it, names kept (an unknown encoding counts as ``utf8``, as in
  Piston). A file without a name is ``file{i}.code``.
- ``stdin`` gets a trailing newline when it has none.
- Limits are in Piston's units: ``*_timeout`` wall-clock ms, ``*_cpu_time`` CPU
  ms, ``*_memory_limit`` bytes (rounded up to whole MiB). Absent, 0 or -1 means
  sandlot's configured default; over sandlot's maximum is 400 ``{field} cannot
  exceed the configured limit of {max}``.
- When the compile stage fails, ``run`` is a copy of ``compile`` (Piston's own
  backward-compatible answer), so clients reading ``run`` never find it missing.
- Errors are ``{"message": ...}``; the key may come bare (``Authorization: KEY``,
  as Piston clients send it) or as ``Bearer KEY``.

Our status model mapped to Piston's two-letter ``status`` (``signal`` is
``SIGKILL`` and ``code`` null whenever we killed the program):

    ok -> null            runtime_error -> RE        signaled -> SG
    timeout -> TO         output_limit -> OL / EL (the stream that hit the shared cap)
    memory_limit -> SG    (the OOM killer's SIGKILL, as Piston reports an OOM kill)
    internal_error -> XX  and HTTP 500: the sandbox failed, not the program
    rejected -> HTTP 400
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandlot.api.common.asgi import CLIENT_CLOSED_REQUEST, core_of, race_disconnect
from sandlot.api.common.auth import Principal, bearer_token
from sandlot.api.common.core import Core
from sandlot.api.common.parsing import parse_json
from sandlot.api.http.errors import MAPPED_ERRORS, ApiError, as_api_error
from sandlot.api.piston.render import MS_PER_S, message, render
from sandlot.api.piston.semver import satisfies, semver
from sandlot.broker import TaskSpec
from sandlot.config import MIB, LimitRequest
from sandlot.errors import RejectedError
from sandlot.models import Limits, SourceFile
from sandlot.requests import new_task_id
from sandlot.service import Service

PREFIX = "/api/v2"

# Piston's names where ours differ, the aliases Piston's packages declare, and its shared runtimes.
_PISTON_LANGUAGE = {"cpp": "c++"}
_PISTON_ALIASES: dict[str, tuple[str, ...]] = {
    "python": ("py", "py3", "python3"),
    "javascript": ("node-javascript", "node-js", "js"),
    "c": ("gcc",),
    "cpp": ("cpp", "g++"),
    "go": ("golang",),
    "bash": ("sh",),
}
_PISTON_RUNTIME = {"javascript": "node", "c": "gcc", "cpp": "gcc"}
_ENCODINGS = ("utf8", "base64", "hex")
# Piston's limit suffix -> (the Limits field it caps, Piston units per Limits unit).
_LIMITS = (
    ("timeout", "wall_time_limit_s", MS_PER_S),
    ("cpu_time", "time_limit_s", MS_PER_S),
    ("memory_limit", "memory_limit_bytes", 1),
)
_DEFAULT_LIMIT_VALUES = (0, -1)

_EXECUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["language", "version", "files"],
    "properties": {
        "language": {"type": "string", "examples": ["python"]},
        "version": {"type": "string", "examples": ["*"]},
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["content"],
                "properties": {
                    "name": {"type": "string"},
                    "content": {"type": "string"},
                    "encoding": {"enum": list(_ENCODINGS)},
                },
            },
        },
        "stdin": {"type": "string"},
        "args": {"type": "array", "items": {"type": "string"}},
        **{f"{stage}_{suffix}": {"type": "number"} for stage in ("compile", "run") for suffix, *_ in _LIMITS},
    },
}
_EXECUTE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _EXECUTE_SCHEMA}}}}


def install(app: FastAPI, service: Service) -> None:
    """Mount the Piston routes on ``app`` (built by ``create_app`` over ``service``)."""
    routes = _PistonRoutes(_runtimes(service), service)
    router = APIRouter(prefix=PREFIX, tags=["piston"])
    for slash in ("", "/"):
        shown = not slash
        router.add_api_route(
            "/runtimes" + slash, routes.runtimes, methods=["GET"], include_in_schema=shown, summary="Piston runtimes"
        )
        router.add_api_route(
            "/packages" + slash, routes.packages, methods=["GET"], include_in_schema=shown, summary="Piston packages"
        )
        router.add_api_route(
            "/execute" + slash,
            routes.execute,
            methods=["POST"],
            include_in_schema=shown,
            summary="Run a program, Piston-style",
            openapi_extra=_EXECUTE_BODY,
        )
    # Out of sandlot's OpenAPI document: Piston's own documentation describes this API and its error shape.
    app.include_router(router, include_in_schema=False)


@dataclass(frozen=True)
class _Runtime:
    language: str  # Piston's name
    version: str
    aliases: tuple[str, ...]
    runtime: str | None
    ours: str  # the name our registry knows
    environment: str = ""  # the environment it runs in; "": the host

    def named(self, name: str) -> bool:
        key = name.strip().lower()
        return key == self.language or key in self.aliases

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"language": self.language, "version": self.version, "aliases": list(self.aliases)}
        if self.runtime is not None:  # Piston omits the key unless a package provides several languages
            body["runtime"] = self.runtime
        return body


def _runtimes(service: Service) -> tuple[_Runtime, ...]:
    versions = service.versions()
    runtimes = []
    for lang in service.languages.offered():
        name = _PISTON_LANGUAGE.get(lang.name, lang.name)
        aliases = (*_PISTON_ALIASES.get(lang.name, ()), *lang.aliases, lang.name)
        runtimes.append(
            _Runtime(
                language=name,
                version=semver(versions.get(lang.name, "unknown")),
                aliases=tuple(a for a in dict.fromkeys(aliases) if a != name),
                runtime=_PISTON_RUNTIME.get(lang.name),
                ours=lang.name,
            )
        )
    return tuple(runtimes)


def _environment_runtimes(service: Service, principal: Principal) -> tuple[_Runtime, ...]:
    """Each language of each environment the caller may use, as a runtime of its own.

    Piston clients choose with ``language`` + ``version``: the entry's version is ``0.0.0-ENV`` (a
    prerelease: ``*`` and ranges keep choosing the host's runtime, which is listed first, and the exact
    string chooses this one) and its aliases are ``NAME@ENV`` (``python@datasci``, with any version).
    ``runtime`` names the environment, as Piston's names the package that provides a language.
    """
    runtimes = []
    for listed in service.environments(principal.may_use):
        env = str(listed["name"])
        for ours in cast("list[str]", listed["languages"]):
            name = _PISTON_LANGUAGE.get(ours, ours)
            aliases = (name, *_PISTON_ALIASES.get(ours, ()), ours)
            runtimes.append(
                _Runtime(
                    language=name,
                    version=f"0.0.0-{env}",
                    aliases=tuple(f"{alias}@{env}" for alias in dict.fromkeys(aliases)),
                    runtime=env,
                    ours=ours,
                    environment=env,
                )
            )
    return tuple(runtimes)


class _PistonRoutes:
    def __init__(self, runtimes: tuple[_Runtime, ...], service: Service) -> None:
        self._runtimes = runtimes  # the host's: fixed at start-up
        self._service = service
        self._settings = service.settings

    async def runtimes(self, request: Request) -> Response:
        try:
            principal = _principal(await core_of(request), request)
        except MAPPED_ERRORS as exc:
            return _error(as_api_error(exc))
        # Off the loop: environments are listed from disk, their toolchains probed.
        in_environments = await asyncio.to_thread(_environment_runtimes, self._service, principal)
        return JSONResponse([rt.as_json() for rt in (*self._runtimes, *in_environments)])

    async def packages(self, request: Request) -> Response:
        try:
            _principal(await core_of(request), request)
        except MAPPED_ERRORS as exc:
            return _error(as_api_error(exc))
        return JSONResponse([])

    async def execute(self, request: Request) -> Response:
        core = await core_of(request)
        try:
            principal = _principal(core, request)
            if not request.headers.get("content-type", "").startswith("application/json"):
                return message(415, "requests must be of type application/json")
            body = parse_json(await request.body())
            parsed = self._parse(body, principal.tenant, self._runtimes)
            if parsed is None:  # not the host's: one of an environment's (found only when asked for)
                in_environments = await asyncio.to_thread(_environment_runtimes, self._service, principal)
                parsed = self._parse(body, principal.tenant, in_environments)
            if parsed is None:
                raise RejectedError(f"{body['language']}-{body['version']} runtime is unknown", field="language")
            runtime, spec = parsed
            spec = await core.submit(principal, spec, waits=True)
        except MAPPED_ERRORS as exc:
            return _error(as_api_error(exc))
        finished, events = await race_disconnect(request.receive, core.collect(spec.tenant, spec.id))
        if not finished:
            await core.cancel(spec.tenant, spec.id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if events is None:
            return message(500, f"task {spec.id} vanished before it finished")
        return render(runtime.language, runtime.version, events)

    def _parse(self, body: Any, tenant: str, runtimes: tuple[_Runtime, ...]) -> tuple[_Runtime, TaskSpec] | None:
        """Piston's checks, in Piston's order and words, then ours; None when no runtime matches."""
        if not isinstance(body, dict):
            raise RejectedError("the request body must be a JSON object", field="body")
        language, version, files = body.get("language"), body.get("version"), body.get("files")
        if not isinstance(language, str) or not language:
            raise RejectedError("language is required as a string", field="language")
        if not isinstance(version, str) or not version:
            raise RejectedError("version is required as a string", field="version")
        if not isinstance(files, list):
            raise RejectedError("files is required as an array", field="files")
        for i, item in enumerate(files):
            if not isinstance(item, dict) or not isinstance(item.get("content"), str):
                raise RejectedError(f"files[{i}].content is required as a string", field=f"files[{i}].content")
        runtime = next((rt for rt in runtimes if rt.named(language) and satisfies(rt.version, version)), None)
        if runtime is None:
            return None
        sources = _sources(files)
        run_limits = _limit_request(body, "run", self._settings.run_maxima)
        compile_limits = _limit_request(body, "compile", self._settings.compile_maxima)
        stdin = body.get("stdin") or ""
        if not isinstance(stdin, str):
            raise RejectedError("stdin must be a string", field="stdin")
        args = body.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise RejectedError("args must be an array of strings", field="args")
        return runtime, TaskSpec(
            id=new_task_id(),
            tenant=tenant,
            language=runtime.ours,
            files=sources,
            stdin=_utf8(stdin if stdin.endswith("\n") else stdin + "\n", "stdin"),
            args=tuple(args),
            limits=run_limits,
            compile_limits=compile_limits,
            user_file_name=sources[0].name,
            environment=runtime.environment,
        )


# ------------------------------------------------------------------ parsing


def _principal(core: Core, request: Request) -> Principal:
    """The caller; Piston clients send the key bare, so ``Authorization: KEY`` works as ``Bearer KEY`` does."""
    header = request.headers.get("authorization")
    return core.auth.authenticate(bearer_token(header) or (header or "").strip() or None)


def _sources(files: Sequence[dict[str, Any]]) -> tuple[SourceFile, ...]:
    """The files, decoded, the first utf8 one (the program) first."""
    sources: list[SourceFile] = []
    main: int | None = None
    for i, item in enumerate(files):
        name = item.get("name") or f"file{i}.code"
        if not isinstance(name, str):
            raise RejectedError(f"files[{i}].name must be a string", field=f"files[{i}].name")
        encoding = item.get("encoding") if item.get("encoding") in _ENCODINGS else "utf8"
        content: str = item["content"]
        where = f"files[{i}].content"
        try:
            if encoding == "base64":
                data = base64.b64decode(content)
            elif encoding == "hex":
                data = bytes.fromhex(content)
            else:
                data = _utf8(content, where)
                main = i if main is None else main
        except (binascii.Error, ValueError) as exc:
            raise RejectedError(f"{where} is not valid {encoding}", field=where) from exc
        sources.append(SourceFile(name, data))
    if main is None:
        raise RejectedError("files must include at least one utf8 encoded file", field="files")
    sources.insert(0, sources.pop(main))
    return tuple(sources)


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, which JSON allows
        raise RejectedError(f"{where} is not valid unicode", field=where) from exc


def _limit_request(body: dict[str, Any], stage: str, maxima: Limits) -> LimitRequest | None:
    """One stage's Piston limits in our units, checked against our maxima in Piston's words."""
    given: dict[str, float] = {}
    for suffix, limits_field, per_unit in _LIMITS:
        name = f"{stage}_{suffix}"
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RejectedError(f"If specified, {name} must be a number", field=name)
        if value in _DEFAULT_LIMIT_VALUES:
            continue
        configured = getattr(maxima, limits_field) * per_unit
        if value > configured:
            raise RejectedError(f"{name} cannot exceed the configured limit of {configured:.0f}", field=name)
        if value < 0:
            raise RejectedError(f"{name} must be non-negative", field=name)
        given[suffix] = value
    if not given:
        return None
    memory = given.get("memory_limit")
    return LimitRequest(
        time_limit=given["cpu_time"] / MS_PER_S if "cpu_time" in given else None,
        wall_time_limit=given["timeout"] / MS_PER_S if "timeout" in given else None,
        memory_limit=math.ceil(memory / MIB) if memory is not None else None,
    )


def _error(error: ApiError) -> Response:
    return message(error.status, error.message, error.headers())
