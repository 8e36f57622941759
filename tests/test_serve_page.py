"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by playwright (never a
browser download). ``.ci/run`` installs chromium; without it the test says so and skips."""

from __future__ import annotations

import os
import shutil

import pytest
from serving import Live

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("UDIFF_REQUIRE_BROWSER"):  # .ci/run: the browser and its driver must be here
    import fastapi  # noqa: F401  (an ImportError fails the run, not a skip)
    from playwright import sync_api
    if CHROMIUM is None:
        raise RuntimeError("no chromium, and UDIFF_REQUIRE_BROWSER is set")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")


def test_the_page_generates_images_for_a_named_label_and_shows_errors(tiny_run):
    if CHROMIUM is None:  # .ci/run installs it and sets UDIFF_REQUIRE_BROWSER: never a skip there
        pytest.skip("no chromium here (apt-get install -y chromium)")
    with Live([tiny_run]) as live, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 640})
        offline = []
        page.on("request", lambda r: r.url.startswith(f"http://127.0.0.1:{live.port}/")
                or offline.append(r.url))
        page.goto(f"http://127.0.0.1:{live.port}/")
        page.wait_for_selector("body[data-ready]")
        page.select_option("#label", "7")
        page.fill("#count", "4")
        page.fill("#steps", "8")
        page.fill("#seed", "5")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#grid img').length === 4 && "
                               "[...document.querySelectorAll('#grid img')].every(i => i.complete"
                               " && i.naturalWidth > 0)")
        sizes = page.eval_on_selector_all("#grid img", "els => els.map(i => [i.naturalWidth, "
                                          "i.naturalHeight, i.alt])")
        assert sizes == [[16, 16, "7"]] * 4
        assert page.eval_on_selector("#progress", "e => e.value") == 1
        assert page.text_content("#error") == ""
        if os.environ.get("UDIFF_SCREENSHOT"):  # docs/serve-page.png is made this way
            page.screenshot(path=os.environ["UDIFF_SCREENSHOT"])

        page.fill("#steps", "500")  # over the server's limit: its message, as text
        page.click("#generate")
        page.wait_for_function("document.querySelector('#error').textContent.length > 0")
        message = page.text_content("#error")
        assert message.startswith("steps:") and "over this server's limit 100" in message
        assert page.eval_on_selector_all("#grid img", "els => els.length") == 0
        assert offline == []  # nothing outside this server was requested
        browser.close()
