"""The API documentation page (/docs), rendered by the real Chromium against a live server.

Swagger UI must read the OpenAPI 3.1 document and draw its operations: the 4.x
that came before showed "Unable to render this definition" instead. The page's
problems (uncaught errors, CSP violations, requests to other hosts) fail the test
through the playground tests' ``close_page``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from playwright.async_api import Browser, ConsoleMessage, expect

from sandlot.api.http import docs_page
from sandlot.api.http.app import create_app
from sandlot.api.http.errors import install_handlers
from tests.api.http.test_http import asgi_client, live_server, running_service
from tests.api.http.test_playground import DESKTOP, Visit, browser_fixture, close_page

__all__ = ["browser_fixture"]  # a fixture, used by name
pytestmark = [pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="address")
async def address_fixture() -> AsyncIterator[str]:
    async with running_service(pool_size=1) as service, live_server(create_app(service)) as address:
        yield address


async def open_docs(browser: Browser, address: str) -> Visit:
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    visit = Visit(page, address)
    page.on("request", lambda request: visit.urls.append(request.url))
    page.on("pageerror", lambda error: visit.problems.append(f"uncaught: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":  # CSP violations and failed loads are logged here
            visit.problems.append(f"console: {message.text}")

    page.on("console", console)
    await page.goto(f"http://{address}/docs")
    return visit


async def test_docs_render_the_operations_and_schemas(browser: Browser, address: str) -> None:
    visit = await open_docs(browser, address)
    try:
        page = visit.page
        run = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/api/v1/run"))
        await expect(run.first).to_be_visible()
        await expect(page.locator(".opblock-summary-path", has_text="/api/v1/sessions").first).to_be_visible()
        await expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
        await run.first.locator(".opblock-summary").click()  # open it: the real answers are declared
        await expect(run.first.locator(".responses-table")).to_contain_text("400")
        await expect(run.first.locator(".responses-table")).not_to_contain_text("422")
        await expect(page.locator(".models")).to_contain_text("ErrorBody")
        async with httpx.AsyncClient() as client:
            docs = await client.get(f"http://{address}/docs")
        assert "script-src 'self'" in docs.headers["content-security-policy"]
    finally:
        await close_page(visit)


async def test_assets_are_served_from_an_allowlist(address: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        script = await client.get("/docs-assets/swagger-ui-bundle.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        again = await client.get("/docs-assets/swagger-ui-bundle.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        for name in ("../pyproject.toml", "index.html", "swagger-initializer.js"):
            missing = await client.get(f"/docs-assets/{name}")
            assert missing.status_code == 404, name
            assert missing.json()["error"]["code"] == "not_found"


async def test_a_server_without_the_built_assets_says_how_to_build_them(tmp_path: Path) -> None:
    app = FastAPI(docs_url=None)
    install_handlers(app)
    docs_page.install(app, assets_dir=tmp_path)  # nothing was built there
    async with asgi_client(app) as client:
        page = await client.get("/docs")
        assert page.status_code == 503
        assert "scripts/setup.sh" in page.text
        assert (await client.get("/docs-assets/swagger-ui-bundle.js")).status_code == 404
