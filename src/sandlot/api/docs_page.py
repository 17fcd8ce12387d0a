"""The OpenAPI docs page at /docs, with Swagger UI's assets served by sandlot itself (no CDN).

The assets come from the ``swagger-ui-bundle`` PyPI package; only the two files
the page needs are served, from an allowlist.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle  # type: ignore[import-untyped]
from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}


def install(app: FastAPI) -> None:
    """Serve /docs (the app must be created with ``docs_url=None``)."""
    root = Path(swagger_ui_bundle.swagger_ui_path)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="no such asset")
        return FileResponse(root / name, media_type=media_type)
