"""The API documentation page at /docs: Swagger UI 5, served by sandlot itself (no CDN).

Swagger UI comes from npm (``swagger-ui-dist``, pinned in ``web/apidocs``);
``scripts/setup.sh`` runs ``npm ci`` there and copies the two files the page
needs into ``docs_assets/`` next to this module (git-ignored, shipped as package
data). Swagger UI 5 is the first to read OpenAPI 3.1, which FastAPI writes; the
4.x of the ``swagger-ui-bundle`` PyPI package could not render the document.

The page runs under the same strict Content Security Policy as the playground,
widened by exactly one source: ``img-src data:``, because Swagger UI's
stylesheet draws its icons as ``data:`` SVG images. Its start-up script is a
file of ours (``init.js``), not an inline script, so ``script-src`` stays
``'self'``. The assets are read once, at ``install``, into an allowlist: a
request can only ever get one of those files. A server whose assets were never
built answers /docs with 503 and one line saying how to build them, never a 500.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from sandlot.api.http.assets import ASSET_HEADERS, Asset, serve
from sandlot.api.http.errors import ApiError

ASSETS_DIR = Path(__file__).with_name("docs_assets")
BUNDLE = "swagger-ui-bundle.js"
STYLESHEET = "swagger-ui.css"
_INIT = "init.js"
_BUILT = {BUNDLE: "text/javascript; charset=utf-8", STYLESHEET: "text/css; charset=utf-8"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {**ASSET_HEADERS, "Content-Security-Policy": _CSP}
NOT_BUILT = (
    "The API documentation page is not built on this server: run scripts/setup.sh "
    "(it runs npm ci in web/apidocs). The OpenAPI document itself is at {openapi}."
)


def install(app: FastAPI, assets_dir: Path = ASSETS_DIR) -> None:
    """Serve /docs and its assets (the app must be created with ``docs_url=None``)."""
    openapi = app.openapi_url or "/openapi.json"
    assets = _load(assets_dir, openapi)
    built = all(name in assets for name in _BUILT)
    page = _PAGE.format(title=f"{app.title} API")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if not built:
            return HTMLResponse(_NOT_BUILT_PAGE.format(message=NOT_BUILT.format(openapi=openapi)), 503, _HEADERS)
        return HTMLResponse(page, headers=_HEADERS)

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None:
            raise ApiError(404, "not_found", f"/docs-assets/{name}: no such file", field="path")
        return serve(request, found, _HEADERS)


def _load(directory: Path, openapi: str) -> dict[str, Asset]:
    """Our start-up script, and the built assets found in ``directory`` (none when it was never built)."""
    assets = {_INIT: Asset.of(_INIT_JS.replace("{openapi}", openapi).encode(), "text/javascript; charset=utf-8")}
    for name, content_type in _BUILT.items():
        path = directory / name
        if path.is_file():
            assets[name] = Asset.of(path.read_bytes(), content_type)
    return assets


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/docs-assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/docs-assets/init.js"></script>
</body>
</html>
"""

# deepLinking: an operation's URL fragment opens it, so a link can point at one route.
_INIT_JS = """window.ui = SwaggerUIBundle({
  url: "{openapi}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""

_NOT_BUILT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>API documentation unavailable</title></head>
<body><p>{message}</p></body>
</html>
"""
