"""The playground: a web page, served by sandlot itself, to write and run code interactively.

The page is static (HTML, CSS and plain JavaScript modules in ``static/``,
nothing fetched from another host) and talks only to this server's
public API: ``GET /api/v1/languages``, ``GET /api/v1/environments`` for the environment
picker (shown when there are any; each lists the languages it offers), ``/api/v1/sessions`` for the "keep files"
and "notebook" toggles, and the interactive WebSocket ``/api/v1/ws`` for runs. So this module
owns no logic of its own: it serves the files.

The code editor is CodeMirror 6, from npm: ``scripts/setup.sh`` bundles
``web/playground/`` with esbuild into ``static/bundle/`` (git-ignored), served
under ``/static/bundle/``. Whether that bundle exists is decided once, here: the
page learns it from ``data-code-editor`` on its ``<body>`` and, without it,
keeps the plain-textarea editor and says why, so a checkout where the npm step
never ran still has a working playground (and no 404 in the browser console).
CodeMirror writes its base styles into a ``<style>`` element, which the policy
allows only with a nonce: each page response carries a fresh one, in the CSP
header and in ``data-style-nonce`` for the editor (``EditorView.cspNonce``), so
the page itself is never cached (its assets still are). Scripts stay 'self' only.

The assets are read once, at ``install``, into an allowlist keyed by name: a
request can only ever get one of those files, never a path it made up, and
each carries its content type explicitly (module scripts must be JavaScript
whatever the host's mime tables say). The page is sent with a Content Security
Policy allowing nothing but this origin, so even a bug in the page cannot
load or send anything elsewhere.

Not supported yet: servers with API keys. A browser cannot set the
``Authorization`` header of a WebSocket, so the page says so on 401/403
instead of pretending to work.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from sandlot.api.http.assets import ASSET_HEADERS, Asset, serve
from sandlot.api.http.errors import ApiError
from sandlot.service import Service

STATIC_DIR = Path(__file__).with_name("static")
BUNDLE_DIR = STATIC_DIR / "bundle"  # built by scripts/setup.sh from web/playground/
INDEX_FILE = "index.html"
EDITOR_BUNDLE = "editor.js"
_EDITOR_SLOT = b'data-code-editor=""'  # in index.html; filled with the bundle's URL when it is built
_NONCE_SLOT = b'data-style-nonce=""'  # in index.html; filled with each response's style nonce
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# 'self' covers ws:/wss: to this host too (CSP level 3), which the runs need.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def install(app: FastAPI, service: Service, *, bundle_dir: Path | None = None) -> None:
    """Serve the playground page at ``/``, its assets under ``/static/``, the editor's under ``/static/bundle/``.

    ``service`` is unused today (the page learns everything through the API) and
    is taken so every door installs the same way. ``bundle_dir`` (default
    ``BUNDLE_DIR``) may not exist (the npm step did not run): the page then
    uses its plain editor.
    """
    del service
    bundle_dir = BUNDLE_DIR if bundle_dir is None else bundle_dir
    assets = _load_assets(STATIC_DIR)
    if INDEX_FILE not in assets:
        raise FileNotFoundError(f"{STATIC_DIR / INDEX_FILE}: the playground page is missing")
    bundle = _load_assets(bundle_dir) if bundle_dir.is_dir() else {}
    index = assets[INDEX_FILE]
    if EDITOR_BUNDLE in bundle:
        slot = b'data-code-editor="/static/bundle/' + EDITOR_BUNDLE.encode() + b'"'
        index = Asset.of(index.body.replace(_EDITOR_SLOT, slot), index.content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        nonce = secrets.token_urlsafe(18)  # URL-safe base64: no character that needs escaping in HTML
        body = index.body.replace(_NONCE_SLOT, b'data-style-nonce="' + nonce.encode() + b'"')
        headers = {**ASSET_HEADERS, "Cache-Control": "no-store", "Content-Security-Policy": _CSP.format(nonce=nonce)}
        return Response(body, media_type=index.content_type, headers=headers)

    @app.get("/static/bundle/{name}", include_in_schema=False)
    async def bundled(name: str, request: Request) -> Response:
        asset = bundle.get(name)
        if asset is None:
            raise ApiError(404, "not_found", f"/static/bundle/{name}: no such file", field="path")
        return serve(request, asset)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None or name == INDEX_FILE:
            raise ApiError(404, "not_found", f"/static/{name}: no such file", field="path")
        return serve(request, asset)


def _load_assets(directory: Path) -> dict[str, Asset]:
    """Every file of a known type directly in ``directory`` (no subfolders, no dotfiles)."""
    assets: dict[str, Asset] = {}
    for path in sorted(directory.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is None or path.name.startswith(".") or not path.is_file():
            continue
        assets[path.name] = Asset.of(path.read_bytes(), content_type)
    return assets
