"""The playground's code editor in headless Chromium: CodeMirror (bundled from npm at set-up), its
highlighting per language, samples, the compile error's line marked, and the plain-textarea
fallback a server without the bundle serves. Fixtures and helpers are test_playground's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, expect

from sandlot.api.http import playground
from sandlot.api.http.app import create_app
from tests.api.http.test_http import live_server
from tests.api.http.test_playground import (
    Served,
    Visit,
    browser_fixture,
    close_page,
    open_page,
    served_fixture,
    visit_fixture,
)

__all__ = ["browser_fixture", "served_fixture", "visit_fixture"]  # module-scoped here too
pytestmark = [pytest.mark.asyncio(loop_scope="module")]

KEYWORDS = ".cm-content .tok-keyword"
# Per language: a program whose third line is wrong (a compile error, or for the interpreted ones the
# syntax error their interpreter reports at run time).
BROKEN_ON_LINE_3 = {
    "c": "#include <stdio.h>\n\nint main(void) { return missing; }\n",
    "cpp": "#include <iostream>\n\nint main() { return missing; }\n",
    "go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(missing) }\n',
    "java": "public class Main {\n    public static void main(String[] args) {\n        int x = missing;\n    }\n}\n",
    "python": "print('fine')\n\nprint(1 +)\n",
    "javascript": "console.log('fine');\n\nconst = 2;\n",
    "bash": "echo fine\n\nif then\n",
}
BROKEN_LINE = {"go": 5}  # go's sample needs its import first
COMPILE_TIMEOUT_MS = 90_000  # bounded by the test's own timeout, not a claim about speed


async def keyword_texts(visit: Visit) -> list[str]:
    return await visit.page.locator(KEYWORDS).all_inner_texts()


async def test_the_editor_is_codemirror_and_typing_works(visit: Visit, served: Served) -> None:
    page = visit.page
    editor = page.get_by_label("Code", exact=True)
    await expect(page.locator(".cm-editor")).to_be_visible()
    assert await editor.get_attribute("contenteditable") == "true"  # CodeMirror's content, not a textarea
    await expect(page.locator("textarea#code")).to_have_count(0)
    await expect(page.locator("#editor-note")).to_be_hidden()

    await visit.code("")
    await editor.click()
    await page.keyboard.type("def twice(x):")
    await page.keyboard.press("Enter")  # Python's indentation after a colon
    await page.keyboard.type("return 2 * x")
    await visit.expect_code("def twice(x):\n    return 2 * x")
    await expect(page.locator(KEYWORDS, has_text="def")).to_have_count(1)
    await expect(page.locator(KEYWORDS, has_text="return")).to_have_count(1)
    await expect(page.locator(".cm-lineNumbers")).to_contain_text("2")
    await page.keyboard.press("Shift+Tab")  # outdents the line
    await visit.expect_code("def twice(x):\nreturn 2 * x")
    await page.keyboard.press("Tab")
    await visit.expect_code("def twice(x):\n    return 2 * x")
    await page.keyboard.press("Escape")
    await page.keyboard.press("Tab")  # after Escape, Tab leaves the editor: no keyboard trap
    await expect(editor).not_to_be_focused()
    await visit.expect_code("def twice(x):\n    return 2 * x")
    await page.keyboard.press("Shift+Tab")  # back into the editor: Tab indents again
    await expect(editor).to_be_focused()

    # Typing over a selection that starts with a highlighted token: Chromium's native edit would add a
    # style attribute (a CSP violation, failing the page's teardown); the editor makes that edit itself.
    await visit.code("return 1")
    await editor.click()
    await page.keyboard.press("Control+a")
    await page.keyboard.type("x = 1")
    await visit.expect_code("x = 1")

    if "go" in {lang.name for lang in served.service.languages.offered()}:
        await visit.code("")
        await page.get_by_label("Language").select_option("go")
        await visit.code("")
        await editor.click()
        await page.keyboard.press("Tab")
        await visit.expect_code("\t")  # Go indents with tabs


async def test_switching_language_changes_highlighting_and_restores_the_sample(visit: Visit, served: Served) -> None:
    offered = {lang.name: lang for lang in served.service.languages.offered()}
    if "c" not in offered:
        pytest.skip("C is not offered on this host")
    page = visit.page
    picker = page.get_by_label("Language")
    await visit.expect_code(offered["python"].sample or "")
    await picker.select_option("c")  # the Python sample was not edited: C's replaces it
    await visit.expect_code(offered["c"].sample or "")
    await expect(page.locator(KEYWORDS, has_text="return")).to_have_count(1)

    same_text = "def main(): return 1\n"
    await visit.code(same_text)
    await expect(page.locator(KEYWORDS, has_text="return")).to_have_count(1)
    assert "def" not in await keyword_texts(visit)  # just a name in C
    await picker.select_option("python")  # edited code is kept, and highlighted as Python now
    await visit.expect_code(same_text)
    await expect(page.locator(KEYWORDS, has_text="def")).to_have_count(1)

    await page.get_by_role("button", name="Load sample").click()
    await visit.expect_code(offered["python"].sample or "")
    await picker.select_option("bash")
    await visit.expect_code(offered["bash"].sample or "")


@pytest.mark.parametrize("language", sorted(BROKEN_ON_LINE_3))
async def test_an_error_marks_its_line(visit: Visit, served: Served, language: str) -> None:
    if language not in {lang.name for lang in served.service.languages.offered()}:
        pytest.skip(f"{language} is not offered on this host")
    page = visit.page
    await visit.code("")
    await page.get_by_label("Language").select_option(language)
    await visit.code(BROKEN_ON_LINE_3[language])
    await visit.run()
    status = "runtime_error" if language in ("python", "javascript", "bash") else "compile_error"
    # javac on two busy cores can take longer than expect's default: wait for the result, however long.
    await expect(page.locator("#status")).to_have_attribute("data-status", status, timeout=COMPILE_TIMEOUT_MS)
    marked = page.locator(".cm-line.cm-error-line")
    await expect(marked).to_have_count(1)
    line = BROKEN_LINE.get(language, 3)
    index = await marked.evaluate("el => [...el.parentElement.querySelectorAll('.cm-line')].indexOf(el) + 1")
    assert index == line, f"{language}: line {index} marked, {line} expected"
    assert (await marked.get_attribute("title") or "").strip(), "the mark carries the message"

    await page.get_by_label("Code", exact=True).press("End")
    await page.keyboard.type(" ")  # an edit: the line numbers may no longer mean the same
    await expect(marked).to_have_count(0)


@pytest_asyncio.fixture(loop_scope="module", name="plain_address")
async def plain_address_fixture(served: Served, tmp_path: Path) -> AsyncIterator[str]:
    """A server like `served` whose editor bundle was never built (set-up's npm step did not run)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(playground, "BUNDLE_DIR", tmp_path / "not-built")
        app = create_app(served.service)
    async with live_server(app) as address:
        yield address


async def test_without_the_bundle_the_plain_editor_works_and_says_so(browser: Browser, plain_address: str) -> None:
    visit = await open_page(browser, plain_address)
    try:
        page = visit.page
        await expect(page.locator("#editor-note")).to_contain_text("not built")
        await expect(page.locator(".cm-editor")).to_have_count(0)
        editor = page.get_by_label("Code", exact=True)
        await editor.fill("x\ny")
        await expect(page.locator("#gutter")).to_contain_text("2")
        await editor.press("Home")
        await editor.press("Tab")
        await expect(editor).to_have_value("x\n    y")
        await editor.press("End")
        await editor.press("Enter")  # keeps the indentation of the line above
        await expect(editor).to_have_value("x\n    y\n    ")
        await editor.press("Escape")
        await editor.press("Tab")  # after Escape, Tab leaves the editor: no keyboard trap
        await expect(editor).not_to_be_focused()

        await visit.code("print('plain', 6 * 7)\n")
        await visit.run()
        await visit.finished("ok")
        await expect(page.locator("#output .out-stdout")).to_have_text("plain 42\n")
        assert not any("/static/bundle/" in url for url in visit.urls), visit.urls
    finally:
        await close_page(visit)


async def test_the_bundle_is_served_locally_and_the_page_carries_a_fresh_style_nonce(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served.address}") as client:
        bundle = await client.get("/static/bundle/editor.js")
        assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
        for path in ("/static/bundle/nope.js", "/static/bundle/..%2f..%2fplayground.py", "/static/bundle"):
            assert (await client.get(path)).status_code == 404, path
        nonces = []
        for _ in range(2):
            page = await client.get("/")
            assert page.headers["cache-control"] == "no-store"  # the nonce must never be reused
            policy = re.search(r"style-src 'self' 'nonce-([\w-]+)';", page.headers["content-security-policy"])
            assert policy, page.headers["content-security-policy"]
            assert f'data-style-nonce="{policy[1]}"' in page.text
            assert 'data-code-editor="/static/bundle/editor.js"' in page.text
            nonces.append(policy[1])
        assert nonces[0] != nonces[1]
