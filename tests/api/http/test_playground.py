"""The playground page, driven in headless Chromium against a live server.

One Service, one uvicorn and one browser serve the whole module (its tests share
an event loop); every test gets a fresh browser context, so no cookies, storage
or sessions leak between tests. The browser is the system's Chromium: nothing is
downloaded. Every page records the requests it makes, and its teardown fails the
test if one went anywhere but the server, or if the page threw or logged an error.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, async_playwright, expect

from sandlot.api.http.app import create_app
from sandlot.service import Service
from tests.api.http.test_http import live_server, note_submits, running_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = ViewportSize(width=360, height=740)
DESKTOP = ViewportSize(width=1280, height=900)
# Prints, waits for a line on stdin (the test types it once 'first' is shown), prints.
TWO_PART = "print('first', flush=True)\ninput()\nprint('second', flush=True)\n"
HUMAN_TIME = r"\d+(\.\d+)? (ms|s)"
# The editor's text, whichever editor the page has: CodeMirror keeps its document in its state
# (the DOM holds only the visible lines), so read it through the view the bundle's EditorView finds.
EDITOR_TEXT = """() => {
    const cm = document.querySelector('.cm-editor');
    if (!cm) return document.getElementById('code').value;
    return window.__testEditorView?.findFromDOM(cm)?.state.doc.toString() ?? null;
}"""
PASTE_INTO_EDITOR = """text => {
    const view = window.__testEditorView.findFromDOM(document.querySelector('.cm-editor'));
    view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text}, userEvent: 'input.paste'});
}"""
LOAD_EDITOR_VIEW = "import('/static/bundle/editor.js').then(m => { window.__testEditorView = m.EditorView; })"

# No skip when Chromium is missing: scripts/setup.sh installs it, and a silently skipped
# browser suite would hide a broken playground.
assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)"
pytestmark = [pytest.mark.asyncio(loop_scope="module")]
expect.set_options(timeout=20_000)  # a run includes queueing and, for C, a compile


@dataclass
class Served:
    service: Service
    address: str  # host:port


@dataclass
class Visit:
    """A page on the playground, and what it did."""

    page: Page
    address: str
    urls: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def code(self, text: str) -> None:
        """Put ``text`` in the editor as a paste would (the typing tests press real keys).

        Not Playwright's fill on CodeMirror: Chromium's contenteditable editing keeps the colour of
        the replaced first token as a style attribute, which the CSP (rightly) blocks and logs.
        """
        if await self.page.locator(".cm-editor").count():
            await self.page.evaluate(PASTE_INTO_EDITOR, text)
        else:
            await self.page.get_by_label("Code", exact=True).fill(text)

    async def expect_code(self, text: str) -> None:
        """Wait until the editor (CodeMirror's document, or the plain textarea's value) holds ``text``."""
        await self.page.wait_for_function(f"want => ({EDITOR_TEXT})() === want", arg=text)

    async def run(self) -> None:
        await self.page.get_by_label("Code", exact=True).press("Control+Enter")

    async def finished(self, status: str) -> None:
        await expect(self.page.locator("#status")).to_have_attribute("data-status", status)


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="served")
async def served_fixture() -> AsyncIterator[Served]:
    async with running_service(pool_size=3) as service:
        app = create_app(service)
        async with live_server(app) as address:
            yield Served(service, address)


@pytest_asyncio.fixture(loop_scope="module", scope="module", name="browser")
async def browser_fixture() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # launch() runs the browser on a fresh temporary profile of its own, removed at close.
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, address: str, *, fragment: str = "", phone: bool = False) -> Visit:
    context = await browser.new_context(viewport=PHONE if phone else DESKTOP)
    page = await context.new_page()
    visit = Visit(page, address)
    page.on("request", lambda request: visit.urls.append(request.url))
    page.on("websocket", lambda socket: visit.urls.append(socket.url))
    page.on("pageerror", lambda error: visit.problems.append(f"uncaught: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":  # CSP violations and failed loads are logged here
            visit.problems.append(f"console: {message.text}")

    page.on("console", console)
    await page.goto(f"http://{address}/{fragment}")
    await expect(page.get_by_role("button", name="Run")).to_be_enabled()
    if await page.locator(".cm-editor").count():
        await page.evaluate(LOAD_EDITOR_VIEW)
    return visit


async def close_page(visit: Visit) -> None:
    await visit.page.context.close()
    foreign = [url for url in visit.urls if urlsplit(url).netloc != visit.address]
    assert not foreign, f"requests to other hosts: {foreign}"
    assert not visit.problems, visit.problems


@pytest_asyncio.fixture(loop_scope="module", name="visit")
async def visit_fixture(browser: Browser, served: Served) -> AsyncIterator[Visit]:
    visit = await open_page(browser, served.address)
    yield visit
    await close_page(visit)


# ------------------------------------------------------------------ the page


async def test_page_loads_languages_and_fits_a_phone(browser: Browser, served: Served) -> None:
    visit = await open_page(browser, served.address, phone=True)
    try:
        page = visit.page
        offered = {lang.name: lang for lang in served.service.languages.offered()}
        picker = page.get_by_label("Language")
        values = await picker.locator("option").evaluate_all("options => options.map(o => o.value)")
        assert set(values) == set(offered)
        await expect(picker).to_have_value("python")
        await visit.expect_code(offered["python"].sample or "")
        for name in ("Input (stdin", "Type to the program", "Keep files (session)"):
            await expect(page.get_by_label(name)).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways at 360 px ({width} px wide)"
        async with httpx.AsyncClient() as client:
            page_response = await client.get(f"http://{served.address}/")
        assert "default-src 'none'" in page_response.headers["content-security-policy"]
    finally:
        await close_page(visit)


# ------------------------------------------------------------------ runs


async def test_output_streams_while_the_program_runs(visit: Visit) -> None:
    page = visit.page
    await visit.code(TWO_PART)
    await visit.run()
    # 'first' is shown and the run is not over (the program waits for our line): streamed, not delivered at
    # the end. The gate is the program's stdin, so this moment lasts until the test types, however slow.
    await page.wait_for_function(
        """() => {
            const out = document.getElementById('output').textContent;
            const status = document.getElementById('status').dataset.status;
            return out.includes('first') && !out.includes('second') && status === 'running';
        }""",
        timeout=20_000,
    )
    await expect(page.locator("#status")).to_contain_text("Running")
    await page.get_by_label("Type to the program").press("Enter")
    await visit.finished("ok")
    # The empty line typed shows between the two parts (in its own span), as in a terminal.
    await expect(page.locator("#output .out-stdout")).to_have_text(["first\n", "second\n"])
    status = page.locator("#status")
    await expect(status).to_contain_text("OK")
    await expect(status).to_contain_text(re.compile(f"wall {HUMAN_TIME}"))
    await expect(status).to_contain_text(re.compile(f"CPU {HUMAN_TIME}"))
    await expect(status).to_contain_text(re.compile(r"memory \d+(\.\d)? (B|KiB|MiB)"))


async def test_a_compile_error_is_shown_as_compile_output(visit: Visit, served: Served) -> None:
    if "c" not in {lang.name for lang in served.service.languages.offered()}:
        pytest.skip("C is not offered on this host")
    page = visit.page
    await page.get_by_label("Language").select_option("c")
    await visit.code("int main(void) { return missing; }\n")
    await page.get_by_role("button", name="Run").click()
    await visit.finished("compile_error")
    await expect(page.locator("#output .out-compile")).to_contain_text("main.c:")
    await expect(page.locator("#status")).to_contain_text("Compile error")


async def test_a_time_limit_ends_in_timeout(visit: Visit) -> None:
    page = visit.page
    await page.get_by_text("Limits").click()
    await page.get_by_label("CPU time (s)").fill("1")
    await page.get_by_label("Wall time (s)").fill("3")
    await visit.code("while True:\n    pass\n")
    await visit.run()
    await visit.finished("timeout")
    await expect(page.locator("#status")).to_contain_text("Time limit exceeded")


async def test_stdout_and_stderr_are_told_apart(visit: Visit) -> None:
    page = visit.page
    await visit.code("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n")
    await visit.run()
    await visit.finished("ok")
    out = page.locator("#output .out-stdout")
    err = page.locator("#output .out-stderr")
    await expect(out).to_have_text("to out\n")
    await expect(err).to_have_text("to err\n")
    colour = "element => getComputedStyle(element).color"
    assert await out.evaluate(colour) != await err.evaluate(colour)


async def test_typing_to_a_running_program(visit: Visit) -> None:
    page = visit.page
    await visit.code(
        "name = input('name? ')\nprint('hello, ' + name.upper())\nimport sys\nprint(repr(sys.stdin.read()))\n"
    )
    await visit.run()
    await expect(page.locator("#output")).to_contain_text("name? ")  # it is waiting for us
    line = page.get_by_label("Type to the program")
    await line.fill("wörld")
    await line.press("Enter")
    await expect(page.locator("#output .out-stdout").last).to_contain_text("hello, WÖRLD")
    await line.fill("tail")
    await line.press("Control+d")  # sends what is typed, then EOF
    await visit.finished("ok")
    await expect(page.locator("#output")).to_contain_text("'tail'")
    await expect(line).to_be_disabled()


async def test_stop_interrupts_then_cancels(visit: Visit) -> None:
    page = visit.page
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGINT, lambda *_: print('ignored SIGINT', flush=True))\n"
        "print('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n"
    )
    await visit.code(stubborn)
    await visit.run()
    await expect(page.locator("#output")).to_contain_text("ready")
    stop = page.get_by_role("button", name="Stop")
    await stop.click()
    await expect(page.locator("#output .out-stdout").last).to_contain_text("ignored SIGINT")
    await page.get_by_role("button", name="Force stop").click()
    await visit.finished("cancelled")
    await expect(page.get_by_role("button", name="Run")).to_be_enabled()


async def test_a_run_cancelled_elsewhere_says_cancelled(
    visit: Visit, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = note_submits(served.service, monkeypatch)
    await visit.code("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    await visit.run()
    await expect(visit.page.locator("#output")).to_contain_text("started")
    assert await served.service.broker.cancel("public", await submitted.get())  # an API client's DELETE
    await visit.finished("cancelled")  # not "signaled": the result's message says why it was killed
    await expect(visit.page.locator("#status")).to_contain_text("Cancelled")
    await expect(visit.page.locator("#status")).to_contain_text("cancelled by request")
    await expect(visit.page.locator("#output")).to_contain_text("started")


# ------------------------------------------------------------------ share links and sessions


async def test_a_share_link_round_trips_the_code(browser: Browser, visit: Visit) -> None:
    code = "print('héllo ✓ <b>&amp;</b>')\n" * 3
    await visit.code(code)
    await visit.page.get_by_role("button", name="Share").click()
    link = await visit.page.get_by_label("Share link").input_value()
    fragment = urlsplit(link).fragment
    assert fragment.startswith("lang=python&code=")
    encoded = fragment.removeprefix("lang=python&code=")
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded  # base64url, unpadded
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() == code

    other = await open_page(browser, visit.address, fragment="#" + fragment)
    try:
        await other.expect_code(code)
        await expect(other.page.get_by_label("Language")).to_have_value("python")
    finally:
        await close_page(other)


async def test_keep_files_keeps_a_session_between_runs(visit: Visit, served: Served) -> None:
    page = visit.page
    toggle = page.get_by_label("Keep files (session)")
    await toggle.check()
    info = page.locator("#session-info")
    await expect(info).to_have_attribute("data-session-id", re.compile(r"\w+"))
    session_id = await info.get_attribute("data-session-id")
    assert session_id is not None
    served.service.pool.get_session("public", session_id)  # it exists

    await visit.code(
        "import os\nprint('seen' if os.path.exists('kept.txt') else 'new')\nopen('kept.txt', 'w').write('1')\n"
    )
    await visit.run()
    await visit.finished("ok")
    await expect(page.locator("#output .out-stdout")).to_have_text("new\n")
    await visit.run()
    await visit.finished("ok")
    await expect(page.locator("#output .out-stdout")).to_have_text("seen\n")

    async with page.expect_response(lambda r: r.request.method == "DELETE") as ended:
        await toggle.uncheck()
    assert (await ended.value).status == 204
    await visit.run()
    await visit.finished("ok")
    await expect(page.locator("#output .out-stdout")).to_have_text("new\n")  # a fresh box again


async def test_nothing_is_requested_from_another_host(visit: Visit) -> None:
    await visit.code("print(1)\n")
    await visit.run()
    await visit.finished("ok")
    await visit.page.get_by_role("button", name="Share").click()
    await visit.page.reload()
    await expect(visit.page.get_by_role("button", name="Run")).to_be_enabled()
    paths = {urlsplit(url).path for url in visit.urls}
    assert {
        "/",
        "/static/app.js",
        "/static/api.js",
        "/static/bundle/editor.js",
        "/api/v1/languages",
        "/api/v1/ws",
    } <= paths
    assert all(urlsplit(url).netloc == visit.address for url in visit.urls), visit.urls


async def test_assets_are_an_allowlist(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served.address}") as client:
        script = await client.get("/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        again = await client.get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "/" not in paths and "/static/{name}" not in paths  # a page, not an API
        for path in ("/static/index.html", "/static/nope.js", "/static/..%2fplayground.py", "/static/"):
            assert (await client.get(path)).status_code == 404, path


# ------------------------------------------------------------------ output and status rendering


async def test_a_signal_is_told_once(visit: Visit) -> None:
    page = visit.page
    await visit.code(
        "import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\nos.kill(os.getpid(), signal.SIGINT)\n"
    )
    await visit.run()
    await visit.finished("signaled")
    text = await page.locator("#status").inner_text()
    assert text.count("signal 2") == 1, text


async def test_truncated_output_is_marked_where_it_stops(visit: Visit) -> None:
    page = visit.page
    await visit.code("import sys\nsys.stdout.write('x' * 3_000_000)\n")
    await visit.run()
    await visit.finished("output_limit")
    marker = page.locator("#output > :last-child")
    await expect(marker).to_have_class("out-truncated")
    await expect(marker).to_contain_text("output truncated")
    await expect(marker).to_be_visible()


async def test_a_megabyte_of_output_arrives_whole(visit: Visit) -> None:
    page = visit.page
    # 10,000 lines of 100 bytes, written one by one (python -u): thousands of chunks to render.
    await visit.code("for i in range(10_000):\n    print(f'{i:06d}' + 'y' * 93)\n")
    await visit.run()
    await visit.finished("ok")
    expected = "".join(f"{i:06d}" + "y" * 93 + "\n" for i in range(10_000))
    await page.wait_for_function("n => document.getElementById('output').textContent.length >= n", arg=len(expected))
    assert await page.locator("#output").evaluate("el => el.textContent") == expected


async def test_notebook_mode_keeps_variables_and_shows_the_value(visit: Visit, served: Served) -> None:
    page = visit.page
    toggle = page.get_by_label("Notebook (keep variables)")
    await toggle.check()
    info = page.locator("#session-info")
    await expect(info).to_have_attribute("data-session-id", re.compile(r"\w+"))
    session_id = await info.get_attribute("data-session-id")
    assert served.service.stateful is not None and served.service.stateful.find("public", session_id) is not None

    await visit.code("x = 41\nprint('set')\n")
    await visit.run()
    await visit.finished("ok")
    await visit.code("x + 1\n")
    await visit.run()
    await visit.finished("ok")
    await expect(page.locator("#output .out-value")).to_have_text("⇒ 42\n")

    await page.get_by_label("Keep files (session)").check()  # one session at a time: the notebook ends
    await expect(toggle).not_to_be_checked()
    await expect(info).to_contain_text("Files are kept")
    assert served.service.stateful.count == 0
