"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by playwright (never a
browser download). ``.ci/run`` installs chromium; without it the test says so and skips."""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from serving import Live, call

import udiff
from conftest import TINY, write_folder
from udiff.cli import main
from udiff.serve.keys import digest, entry_toml, new_secret

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("UDIFF_REQUIRE_BROWSER"):  # .ci/run: the browser and its driver must be here
    import fastapi  # noqa: F401  (an ImportError fails the run, not a skip)
    from playwright import sync_api
    if CHROMIUM is None:
        raise RuntimeError("no chromium, and UDIFF_REQUIRE_BROWSER is set")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    """A tiny run on a folder whose labels are names, not digits (alice, bob, carol)."""
    root = tmp_path_factory.mktemp("named")
    data = write_folder(root / "users", names=["alice", "bob", "carol"])
    assert main(["train", "--data", str(data), "--backbone", "unet", *TINY,
                 "--out", str(root / "named")]) == 0
    return root / "named"


def generate(page, count: int, steps: int, seed: int) -> None:
    """Fill the form, press Generate, wait until the grid shows ``count`` decoded images."""
    page.fill("#count", str(count))
    page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#grid img').length === {count} && "
                           "[...document.querySelectorAll('#grid img')].every(i => i.complete"
                           " && i.naturalWidth > 0)")


def shown_images(page) -> np.ndarray:
    """The grid's images as the browser holds them: ``[N, H, W(, C)]`` uint8."""
    srcs = page.eval_on_selector_all("#grid img", "els => els.map(i => i.src)")
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))))
                     for s in srcs])


def test_the_page_generates_images_for_a_named_label_and_shows_errors(tiny_run, named_run,
                                                                      tmp_path):
    if CHROMIUM is None:  # .ci/run installs it and sets UDIFF_REQUIRE_BROWSER: never a skip there
        pytest.skip("no chromium here (apt-get install -y chromium)")
    keys, secret = tmp_path / "keys.toml", new_secret()  # every label of tiny, carol of named
    keys.write_text(entry_toml("carol", digest(secret), {tiny_run.name: "*",
                                                         named_run.name: ["carol"]}))
    with Live([tiny_run, named_run], keys_file=keys) as live, sync_api.sync_playwright() as p:
        assert call(live.port, "GET", "/")[0] == 401  # the page needs a key too
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 640})
        offline = []
        requested = []
        page.on("request", lambda r: requested.append(r.url) or r.url.startswith(
            f"http://127.0.0.1:{live.port}/") or offline.append(r.url))
        page.goto(f"http://127.0.0.1:{live.port}/?token={secret}")  # opened from a link
        page.wait_for_selector("body[data-ready]")
        page.select_option("#run", tiny_run.name)
        page.select_option("#label", "7")
        generate(page, count=4, steps=8, seed=5)
        sizes = page.eval_on_selector_all("#grid img", "els => els.map(i => [i.naturalWidth, "
                                          "i.naturalHeight, i.alt])")
        assert sizes == [[16, 16, "7"]] * 4
        assert page.eval_on_selector("#progress", "e => e.value") == 1
        events = page.evaluate("document.body.dataset.events").split(",")
        assert events[-1] == "succeeded" and "progress" in events  # from the job's events
        assert not [u for u in requested if "/v1/jobs/" in u and "/events" not in u]  # no polls
        assert page.text_content("#error") == ""
        if os.environ.get("UDIFF_SCREENSHOT"):  # docs/serve-page.png is made this way
            page.screenshot(path=os.environ["UDIFF_SCREENSHOT"])

        page.fill("#steps", "500")  # over the server's limit: its message, as text
        page.click("#generate")
        page.wait_for_function("document.querySelector('#error').textContent.length > 0")
        message = page.text_content("#error")
        assert message.startswith("steps:") and "over this server's limit 100" in message
        assert page.eval_on_selector_all("#grid img", "els => els.length") == 0
        # A run whose labels are names: pick "carol" by its name; the images are label 2's, as
        # the library makes them (the page sent the token with every call it made).
        page.select_option("#run", named_run.name)
        assert page.eval_on_selector_all("#label option", "els => els.map(o => o.textContent)") \
            == ["carol"]  # the key's one label of this run
        page.select_option("#label", label="carol")
        generate(page, count=2, steps=6, seed=3)
        assert page.eval_on_selector_all("#grid img", "els => els.map(i => i.alt)") == ["carol"] * 2
        guidance = float(page.input_value("#guidance"))
        want = np.stack([np.asarray(im) for im in udiff.load(named_run).sample(
            [2], 2, steps=6, guidance=guidance, seed=3)])
        got = shown_images(page)
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert offline == []  # nothing outside this server was requested
        browser.close()
