"""The playground's environment picker, in headless Chromium against a live server with a real imported
image: the picker lists the environments, choosing one offers its languages and runs go there."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.api.http.test_playground import PHONE, Served, browser_fixture, close_page, open_page, served_fixture

__all__ = ["browser_fixture", "served_fixture"]  # fixtures, used by name
pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="module")]
PROBE = "import os\nprint('marker', os.path.exists('/etc/marker'))\n"
OPTIONS = "options => options.map(o => o.value)"


async def test_the_picker_offers_an_environments_languages_and_runs_there(
    py_env: str, browser: Browser, served: Served
) -> None:
    visit = await open_page(browser, served.address)
    try:
        page = visit.page
        picker = page.get_by_label("Environment")
        await expect(picker).to_be_visible()
        await expect(picker.locator(f"option[value='{py_env}']")).to_have_count(1)
        assert (await picker.locator("option").evaluate_all(OPTIONS))[0] == ""  # the host first
        languages = page.get_by_label("Language")
        host_offer = await languages.locator("option").evaluate_all(OPTIONS)
        assert len(host_offer) > 1
        await picker.select_option(py_env)
        await expect(languages.locator("option")).to_have_count(1)  # the image offers python only
        await expect(languages).to_have_value("python")
        await visit.code(PROBE)
        await visit.run()
        await visit.finished("ok")
        await expect(page.locator("#output .out-stdout")).to_have_text(["marker True\n"])
        await picker.select_option("")
        assert await languages.locator("option").evaluate_all(OPTIONS) == host_offer
        await visit.expect_code(PROBE)  # the user's code stays when the language does
        await visit.run()
        await expect(page.locator("#output .out-stdout")).to_have_text(["marker False\n"])
    finally:
        await close_page(visit)


async def test_the_picker_fits_a_phone(py_env: str, browser: Browser, served: Served) -> None:
    visit = await open_page(browser, served.address, phone=True)
    try:
        await expect(visit.page.get_by_label("Environment")).to_be_visible()
        width = await visit.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways at 360 px ({width} px wide)"
    finally:
        await close_page(visit)
