"""The HTTP door: ``create_app(service)`` builds the FastAPI application. Wiring only.

Theory of operation
-------------------
The app is a thin shell around the ``Service`` it is given: it parses requests
into ``TaskSpec``s (``sandlot.requests``), submits them to the broker, and
renders the task's event stream as JSON, Server-Sent Events, WebSocket messages
or plain text. It never runs a process; the worker does.

Routes (one module each)::

    tasks          POST /api/v1/run  GET|DELETE /api/v1/tasks/{id}  GET /api/v1/tasks/{id}/events (SSE)
    execute        POST /api/v1/execute (a raw ASGI route in front of FastAPI: the ingest path)
    text           POST /run (the Go code runner's text door)
    ws             GET /api/v1/ws (interactive WebSocket)
    sessions       /api/v1/sessions[/{id}[/files[/{path}]]]
    environments   GET /api/v1/environments
    here           GET /api/v1/languages  /healthz  /readyz  /metrics  (+ /openapi.json, /docs: docs_page)
    playground     GET /  /static/{name} (the web page)
    piston         GET /api/v2/runtimes  POST /api/v2/execute (Piston-compatible)
    judge0         /judge0/submissions[/batch]  /languages  /statuses  ... (Judge0-compatible)
    mcp            /mcp (MCP streamable HTTP: run code, languages, session files)

Every route but the last four (and the docs) needs ``Authorization: Bearer
KEY`` when the server has API keys (``auth``). Errors are always
``{"error": {"code", "message", "field"}}``; the mapping from exceptions to
statuses lives in ``errors`` (bad input is 400 whatever its kind, type
errors included; an unknown or foreign task or session is 404). The OpenAPI
document declares each route's real answers from ``schemas`` (checked
against live answers by the tests); the Judge0, Piston and MCP doors are kept
out of it, their own projects document them. Two pure ASGI
middlewares wrap everything: ``CountResponses`` (``sandlot_requests_total`` by
door and code; 499 when the client left before an answer) outermost, so it
also counts the 413s of ``BodyLimit``, which refuses oversized bodies before
buffering them. ``POST /api/v1/execute`` never reaches them or FastAPI:
``SandlotApp`` hands it to ``execute.ExecuteRoute``, which caps and counts
it the same way itself. Before either, ``SameOriginOnly`` refuses state-changing
requests a browser sends for another site's page (403; ``allowed_origins``).

The Judge0, Piston and MCP doors are mounted here, the one module that imports
them: they share the app's middlewares (body cap, counting, origin guard) by
being mounted, not by importing this door. They find the process's ``Core`` on
the app (``api.common.asgi.core_of``) and import nothing of this door but
``errors`` (``ApiError``, what the app's middlewares raise); see
``tests/test_api_layout.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

import sandlot
from sandlot.api.common.asgi import CoreDep
from sandlot.api.common.auth import Authenticator
from sandlot.api.common.core import Core
from sandlot.api.http import docs_page, playground
from sandlot.api.http import environments as http_environments
from sandlot.api.http import judge as http_judge
from sandlot.api.http import schemas as http_schemas
from sandlot.api.http import sessions as http_sessions
from sandlot.api.http import tasks as http_tasks
from sandlot.api.http import text as http_text
from sandlot.api.http import ws as http_ws
from sandlot.api.http.door import CallerDep
from sandlot.api.http.errors import install_handlers
from sandlot.api.http.execute import ExecuteRoute
from sandlot.api.http.middleware import BodyLimit, CountResponses, SameOriginOnly
from sandlot.api.http.schemas import AUTH, answers
from sandlot.api.judge0 import routes as judge0
from sandlot.api.mcp import server as mcp_server
from sandlot.api.piston import routes as piston
from sandlot.engine import check_isolation
from sandlot.service import Service

_service_routes = APIRouter(tags=["service"])


class SandlotApp(FastAPI):
    """FastAPI, with ``POST /api/v1/execute`` answered before any of FastAPI's machinery (``execute``)."""

    execute_route: ExecuteRoute | None = None
    origin_guard: SameOriginOnly | None = None

    def openapi(self) -> dict[str, Any]:
        return http_schemas.finish(super().openapi())  # no phantom 422s: see http_schemas

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.origin_guard
        if guard is not None and guard.refuses(scope):  # before any route, the raw execute route included
            await guard.refuse(scope, receive, send)
            return
        route = self.execute_route
        if route is not None and route.serves(scope):
            await route(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(service: Service, *, authenticator: Authenticator | None = None) -> SandlotApp:
    """The HTTP application over a started Service (which the caller starts and stops)."""
    app = SandlotApp(
        title="sandlot",
        version=sandlot.__version__,
        summary="Run untrusted code in hardened sandboxes.",
        docs_url=None,  # docs_page serves /docs with local assets
        redoc_url=None,
        # FastAPI's own OpenTelemetry asks the global providers on every request; our metrics are Prometheus'.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # One Authenticator per process, shared with the gRPC door, so a key's quotas are one budget.
    app.state.core = Core(service, authenticator or Authenticator(service.server.api_keys))
    install_handlers(app)
    for router in (
        http_tasks.router,
        http_text.router,
        http_ws.router,
        http_sessions.router,
        http_environments.router,
        http_judge.router,
        _service_routes,
    ):
        app.include_router(router)
    playground.install(app, service)
    docs_page.install(app)
    piston.install(app, service)
    judge0.install(app, service)
    mcp_server.install(app, service)
    # Added last = outermost: the counter sees every answer, the 413s of BodyLimit included.
    app.add_middleware(BodyLimit, max_body_bytes=service.server.max_body_bytes)
    app.add_middleware(CountResponses, metrics=service.metrics)
    app.execute_route = ExecuteRoute(app.state.core, max_body_bytes=service.server.max_body_bytes)
    app.origin_guard = SameOriginOnly(service.server.allowed_origins, metrics=service.metrics)
    return app


@_service_routes.get(
    "/api/v1/languages",
    response_model=None,
    responses=answers(200, http_schemas.Languages, *AUTH),
    summary="The languages this server offers",
)
async def languages(caller: CallerDep) -> dict[str, Any]:
    registry = caller.service.languages
    versions = caller.service.versions()
    return {
        "languages": [
            {**lang.describe(versions.get(lang.name, "unknown")), "sample": lang.sample} for lang in registry.offered()
        ]
    }


@_service_routes.get(
    "/healthz", response_model=None, responses=answers(200, http_schemas.Health), summary="The process is up"
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@_service_routes.get(
    "/readyz",
    response_model=None,
    responses={
        **answers(200, http_schemas.Readiness, 400, what="Ready"),
        503: {"model": http_schemas.Readiness, "description": "Not ready (starting, draining, or no live worker)"},
    },
    summary="The server accepts work and a live worker serves the isolation level",
)
async def readyz(core: CoreDep, isolation: str = "") -> JSONResponse:
    """200 when this node accepts work and some live worker serves ``isolation`` (default: the server's
    default level); in the distributed mode an API node without a live worker answers 503 ``no_worker``."""
    service = core.service
    if not service.ready:
        return JSONResponse({"status": "not_ready"}, status_code=503)
    level = isolation or service.server.default_isolation
    check_isolation(level)
    if not await service.serves(level):
        return JSONResponse(
            {"status": "no_worker", "message": f"no live worker serves isolation {level!r}"}, status_code=503
        )
    return JSONResponse({"status": "ready"})


@_service_routes.get(
    "/metrics",
    response_class=Response,
    responses=answers(200, None, media="text/plain", what="The Prometheus text format"),
    summary="Prometheus metrics",
)
async def metrics(core: CoreDep) -> Response:
    return Response(generate_latest(core.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
