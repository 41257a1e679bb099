"""End to end in a real browser: Debian's Chromium, driven headless by Playwright, against the demo on loopback.

Uploads a clip and asks, comparing two compressors, then a follow-up; checks what a user sees (stages while it
runs, the conversation, titled columns, whole captions, the empty budget box, labelled examples, a refused
upload named in full) and what the browser is given (no server path of the upload folder; the folder's
`.owner` record not served). Screenshots are saved to $VIDEOLLM_ARTIFACTS when set, else the test's temp dir.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
STAGE_WORDS = ("loading the model", "decoding", "vision tower", "reading the prompt", "answering", "compressing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served_demo(capfd):
    from videollm.demo.app import build_demo, launch

    port = _free_port()
    demo = build_demo("tiny-random", device="cpu")
    launch(demo, port, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo.videollm_uploads
    finally:
        demo.close()
        demo.videollm_uploads.close()
    printed = capfd.readouterr()
    assert "share=True" not in printed.out + printed.err  # Gradio's hint is silenced: no link is ever made
    assert f"http://127.0.0.1:{port}/" in printed.err


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("VIDEOLLM_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _visible_text_and_urls(page) -> str:
    """Everything the page shows or links to, except the <video> player's own source (the upload itself)."""
    return page.evaluate("""() => {
        const urls = [...document.querySelectorAll('img, a, source, link, script')]
            .filter(e => !e.closest('video'))
            .map(e => e.getAttribute('src') || e.getAttribute('href') || '');
        return document.body.innerText + '\\n' + urls.join('\\n');
    }""")


def test_upload_ask_compare_follow_up_in_a_browser(served_demo, short_video, tmp_path):
    import httpx

    url, area = served_demo
    artifacts = _artifacts(tmp_path)
    notes = tmp_path / "notes for the quarterly meeting, final version.txt"
    notes.write_text("not a video")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(url, wait_until="load", timeout=180_000)

        # examples are labelled (clip and question), the budget box is empty as its label says
        examples = page.get_by_text("bikes: What objects appear in this video?")
        examples.first.wait_for(timeout=60_000)
        assert examples.first.is_visible()
        page.get_by_text("settings", exact=True).click()
        budget = page.get_by_label("visual token budget (empty = fit the model's context)")
        assert budget.input_value() == ""
        page.screenshot(path=str(artifacts / "demo-start.png"), full_page=True)

        # a file that is not a video: named in full, and still named when Answer is clicked
        page.locator("input[type=file]").first.set_input_files(str(notes))
        error = page.locator(".block.vl-status-box .vl-error")
        error.wait_for(timeout=30_000)
        assert f"{notes.name} is not a video file" in error.inner_text()
        page.get_by_role("button", name="Answer").click()
        time.sleep(1.5)
        shown = page.locator(".block.vl-status-box").inner_text()
        assert notes.name in shown and "upload a video first" not in shown
        page.screenshot(path=str(artifacts / "demo-not-a-video.png"), full_page=True)

        # a clip, compared with pool: the stages show while it runs, one status and no Gradio overlay
        page.locator("input[type=file]").first.set_input_files(str(short_video))
        page.locator("video").first.wait_for(timeout=60_000)
        page.get_by_label("compare side by side with").click()
        page.get_by_role("option", name="pool", exact=True).click()
        page.evaluate("""() => {  // record every status line and any Gradio progress overlay, however brief
            window.vlStatus = []; window.vlOverlay = 0; window.vlMaxStatus = 0;
            new MutationObserver(() => {
                const lines = document.querySelectorAll('.vl-status');
                window.vlMaxStatus = Math.max(window.vlMaxStatus, lines.length);
                lines.forEach(e => window.vlStatus.push(e.innerText));
                document.querySelectorAll('.progress-text, .eta-bar').forEach(e => {
                    const r = e.getBoundingClientRect(), st = getComputedStyle(e);
                    const w = e.closest('.wrap');
                    const ws = w ? getComputedStyle(w) : st;
                    if (!r.width || st.visibility === 'hidden' || ws.opacity === '0' || ws.display === 'none') return;
                    window.vlOverlay += 1;
                    const b = e.closest('.block'); window.vlOverlayWhere = (b && b.className) + ' | ' + e.innerText;
                });
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        page.get_by_role("button", name="Answer").click()
        page.wait_for_function("document.querySelector('.block.vl-same').innerText.includes('kept the same')",
                               timeout=180_000)
        lines = page.evaluate("window.vlStatus")
        seen = {w for line in lines for w in STAGE_WORDS if w in line}
        assert any(line.startswith("uniform ·") for line in lines)
        assert any(line.startswith("pool ·") for line in lines)
        assert page.evaluate("window.vlMaxStatus") == 1
        assert page.evaluate("window.vlOverlay") == 0, page.evaluate("window.vlOverlayWhere")
        assert seen, "no stage was shown while answering"
        titles = [t.inner_text() for t in page.locator(".block.vl-col-title").all()]
        assert titles == ["uniform", "pool"]
        assert "kept the same frames" in page.locator(".block.vl-same").inner_text()
        captions = page.locator(".vl-frame figcaption")
        assert captions.count() >= 2
        for i in range(captions.count()):
            cap = captions.nth(i)
            assert cap.inner_text().endswith("tokens")  # whole, not "3 to…"
            assert cap.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        page.screenshot(path=str(artifacts / "demo-compare.png"), full_page=True)

        # a follow-up keeps the first question and answer on screen
        page.get_by_label("question").fill("And what colour is it?")
        page.get_by_role("button", name="Answer").click()
        page.wait_for_function("document.querySelector('.block.vl-chat').innerText.includes('And what colour is it?')")
        page.wait_for_function("document.querySelector('.block.vl-chat').innerText.split('uniform').length >= 3",
                               timeout=180_000)
        chat = page.locator(".block.vl-chat").inner_text()
        assert "What objects appear in this video?" in chat and "And what colour is it?" in chat
        page.screenshot(path=str(artifacts / "demo-follow-up.png"), full_page=True)

        # what the browser was given: no path of the private folder beside the player's own source
        seen_by_user = _visible_text_and_urls(page)
        assert str(area.path) not in seen_by_user and "gradio_api/file=" not in seen_by_user.split("\n", 1)[-1]
        browser.close()

    for path in (area.path / ".owner", f"{area.files}/../.owner"):
        r = httpx.get(url + f"gradio_api/file={path}", timeout=10)
        assert r.status_code == 403 and socket.gethostname() not in r.text
    assert (artifacts / "demo-compare.png").stat().st_size > 10_000
