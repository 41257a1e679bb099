"""End to end in a real browser: Debian's Chromium, driven headless by Playwright, against the demo on loopback.

Uploads a clip, asks, and checks that the answer, the timeline strip and the gallery of kept frames appear.
A screenshot of the page is saved (to $VIDEOLLM_ARTIFACTS when set, else the test's temp dir).
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served_demo():
    from videollm.demo.app import build_demo, launch

    port = _free_port()
    demo = build_demo("tiny-random", device="cpu")
    launch(demo, port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_upload_ask_and_see_answer_timeline_gallery(served_demo, short_video, tmp_path):
    artifacts = Path(os.environ.get("VIDEOLLM_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(served_demo, wait_until="load", timeout=180_000)
        page.locator("input[type=file]").first.set_input_files(str(short_video))
        page.locator("video").first.wait_for(timeout=60_000)  # the upload reached the server and plays back
        page.get_by_role("button", name="Answer").click()
        page.locator(".vl-timeline").wait_for(timeout=180_000)
        answer = page.locator(".vl-answer").first
        assert answer.is_visible() and "meaningless" in answer.inner_text()
        assert page.locator(".vl-bar").count() >= 1
        assert "took" in page.locator(".vl-took").first.inner_text()
        page.locator(".vl-strip").first.scroll_into_view_if_needed()
        gallery_images = page.locator("img")
        assert gallery_images.count() >= 1
        page.screenshot(path=str(artifacts / "demo.png"), full_page=True)
        browser.close()
    assert (artifacts / "demo.png").stat().st_size > 10_000
