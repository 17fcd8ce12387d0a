"""Cross-origin browser requests are refused; programs, the clients and our own pages are not.

The HTTP checks send the headers a browser sends; the last test drives real
Chromium on a page served from another loopback port (a different origin, the
same site) and checks on the server's side that nothing ran.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.responses import HTMLResponse
from playwright.async_api import async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sandlot.api.http.app import create_app
from sandlot.config import load_settings, server_settings_from
from sandlot.service import Service
from tests.api.http.test_http import (
    asgi_client,
    client_fixture,
    executions,
    live_server,
    running_service,
    service_fixture,
)
from tests.api.http.test_playground import CHROMIUM, CHROMIUM_ARGS

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name

EVIL = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
RUN = {"language": "bash", "code": "echo ran"}


def refused(service: Service) -> float:
    """403 answers counted, whichever door."""
    doors = ("http", "run_text", "piston", "judge0", "mcp", "ws")
    registry = service.metrics.registry
    return sum(registry.get_sample_value("sandlot_requests_total", {"door": d, "code": "403"}) or 0.0 for d in doors)


async def test_cross_site_requests_are_refused_on_every_state_changing_route(
    service: Service, client: httpx.AsyncClient
) -> None:
    session_id = (await client.post("/api/v1/sessions")).json()["session_id"]
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/run", {"json": RUN}),
        ("POST", "/api/v1/execute", {"content": b"echo ran", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/run", {"content": b"print('ran')"}),
        ("POST", "/api/v1/sessions", {}),
        ("PUT", f"/api/v1/sessions/{session_id}/files/x", {"content": b"x"}),
        ("DELETE", f"/api/v1/sessions/{session_id}", {}),
        ("POST", "/api/v2/execute", {"json": {"language": "bash", "version": "*", "files": [{"content": "echo"}]}}),
        ("POST", "/judge0/submissions?wait=true", {"json": {"language_id": 46, "source_code": "echo ran"}}),
        ("POST", "/mcp", {"json": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}),
    ]
    for method, path, extra in attempts:
        headers = {**EVIL, **extra.pop("headers", {})}
        response = await client.request(method, path, headers=headers, **extra)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["field"] == "Origin"
    # And every other state-changing route the API declares, found in its OpenAPI document.
    declared = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in (await client.get("/openapi.json")).json()["paths"].items()
        for method in operations
        if method in ("post", "put", "delete", "patch")
    ]
    # The document holds the JSON API (Judge0, Piston and MCP are kept out of it, and listed above).
    assert {("POST", "/api/v1/run"), ("POST", "/api/v1/sessions"), ("PUT", "/api/v1/sessions/x/files/x")} <= set(
        declared
    )
    for method, path in declared:
        response = await client.request(method, path, headers=EVIL, content=b"{}")
        assert response.status_code == 403, (method, path, response.text)
    # Without an Origin, a browser's Sec-Fetch-Site alone says so too (another port of this host: same-site).
    alone = await client.post("/api/v1/run", json=RUN, headers={"Sec-Fetch-Site": "same-site"})
    assert alone.status_code == 403
    assert executions(service, "bash", "ok") == 0
    assert refused(service) == len(attempts) + len(declared) + 1
    # Reads pass: no page can read them without CORS headers, and the playground loads with them.
    assert (await client.get("/api/v1/languages", headers=EVIL)).status_code == 200


async def test_same_origin_and_programs_pass(service: Service, client: httpx.AsyncClient) -> None:
    own = {"Origin": "http://sandlot", "Sec-Fetch-Site": "same-origin"}  # as the playground's page sends
    assert (await client.post("/api/v1/run", json=RUN, headers=own)).json()["stdout"] == "ran\n"
    assert (await client.post("/api/v1/run", json=RUN)).json()["stdout"] == "ran\n"  # curl, the clients
    typed = await client.post("/api/v1/run", json=RUN, headers={"Sec-Fetch-Site": "none"})  # typed in the bar
    assert typed.status_code == 200


def test_allowed_origins_is_a_server_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDLOT_ALLOWED_ORIGINS", "https://ide.example")
    assert server_settings_from(load_settings()).allowed_origins == "https://ide.example"


async def test_allowed_origins_opens_the_door_for_a_named_site() -> None:
    origins = "https://ide.example, https://other.example"
    async with running_service(allowed_origins=origins) as service, asgi_client(create_app(service)) as client:
        named = await client.post("/api/v1/run", json=RUN, headers={"Origin": "https://ide.example"})
        assert named.json()["stdout"] == "ran\n"
        assert (await client.post("/api/v1/run", json=RUN, headers=EVIL)).status_code == 403


async def test_a_cross_site_websocket_is_refused() -> None:
    async with running_service() as service, live_server(create_app(service)) as address:
        with pytest.raises(InvalidStatus) as refusal:
            async with connect(f"ws://{address}/api/v1/ws", origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refusal.value.response.status_code == 403
        async with connect(f"ws://{address}/api/v1/ws", origin=f"http://{address}") as ws:  # type: ignore[arg-type]
            await ws.send('{"type": "run", "language": "bash", "code": "echo ran"}')
            messages = [str(message) async for message in ws]  # until the server's close after the exit
            assert '"data":"ran\\n"' in "".join(messages)


@pytest.fixture(name="evil_site")
async def evil_site_fixture() -> AsyncIterator[str]:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>evil</title>")

    async with live_server(Starlette(routes=[Route("/", page)])) as address:  # type: ignore[arg-type]
        yield address


async def test_a_page_on_another_loopback_port_cannot_run_code_in_chromium(evil_site: str) -> None:
    async with running_service() as service, live_server(create_app(service)) as address:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://{evil_site}/")
                script = """async (target) => {
                    const simple = {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}};
                    await fetch(`http://${target}/api/v1/run`,
                                {...simple, body: JSON.stringify({language: 'bash', code: 'echo ran'})});
                    await fetch(`http://${target}/api/v1/execute`, {...simple, body: 'echo ran'});
                    return 'sent';
                }"""
                assert await page.evaluate(script, address) == "sent"
            finally:
                await browser.close()
        assert refused(service) == 2  # both reached the server, which refused them
        assert executions(service, "bash", "ok") == 0
