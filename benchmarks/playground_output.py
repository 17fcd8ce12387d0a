"""How long the playground takes to render a megabyte of output, in headless Chromium.

A real ``sandlot serve`` (started as ``http_run.py`` starts it) and the system's
Chromium through Playwright. The program prints ``--lines`` lines of 100 bytes
one ``print`` at a time (python -u: thousands of separate output chunks). For
each of ``--repeat`` runs the page's own clock measures from the Run click to
the moment the output pane holds every byte, and the pane's text is checked
whole. The run's own wall time (the status line) is printed beside it, so what
the page costs can be told from what the program costs.

    .venv/bin/python benchmarks/playground_output.py [--lines 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from playwright.async_api import async_playwright

from http_run import _server as sandlot_server

CHROMIUM = "/usr/bin/chromium"
LINE_BYTES = 100
TIMEOUT_MS = 120_000

# Resolves with the milliseconds from the click to the last byte in the pane (polled once per frame).
CLICK_TO_WHOLE = """n => new Promise(resolve => {
    const pane = document.getElementById('output');
    const start = performance.now();
    document.getElementById('run').click();
    const whole = () => pane.textContent.length >= n;
    const check = () => (whole() ? resolve(performance.now() - start) : requestAnimationFrame(check));
    requestAnimationFrame(check);
})"""
# The editor holds this program (CodeMirror's document, or the plain textarea).
SET_CODE = """code => {
    const cm = document.querySelector('.cm-editor');
    if (!cm) { document.getElementById('code').value = code; return; }
    return import('/static/bundle/editor.js').then(({ EditorView }) => {
        const view = EditorView.findFromDOM(cm);
        view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: code } });
    });
}"""


async def measure(base: str, lines: int, repeat: int) -> list[tuple[float, str]]:
    code = f"for i in range({lines}):\n    print(f'{{i:06d}}' + 'y' * {LINE_BYTES - 7})\n"
    expected = "".join(f"{i:06d}" + "y" * (LINE_BYTES - 7) + "\n" for i in range(lines))
    results: list[tuple[float, str]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(base + "/")
        await page.wait_for_selector("#run:not([disabled])")
        await page.evaluate(SET_CODE, code)
        for _ in range(repeat):
            elapsed_ms = await page.evaluate(CLICK_TO_WHOLE, len(expected))
            await page.wait_for_selector('#status[data-status="ok"]', timeout=TIMEOUT_MS)
            if await page.evaluate("document.getElementById('output').textContent") != expected:
                raise SystemExit("the output pane does not hold the program's output whole")
            status = await page.inner_text("#status")
            wall = next((part for part in status.split(" · ") if part.startswith("wall ")), "wall ?")
            results.append((elapsed_ms, wall))
        await browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000, help="lines of 100 bytes (default: 1 MB)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with sandlot_server(2, None) as base:
        results = asyncio.run(measure(base, args.lines, args.repeat))
    for elapsed_ms, wall in results:
        print(f"click to whole output: {elapsed_ms:8.0f} ms   (the run's {wall})")
    median = statistics.median(ms for ms, _ in results)
    print(f"median {median:.0f} ms for {args.lines * LINE_BYTES} bytes; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
