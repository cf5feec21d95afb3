"""The --ui chat page in headless Chromium: upload an image, ask two questions, watch the answers stream in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from test_inference import GOOD_IMAGES, chatty_tiny_vlm
from test_serve import LiveServer

from vistune.inference.engine import Engine, Request
from vistune.serve.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"Chromium is not installed at {CHROMIUM} "
                       "(make install installs it)"),
]


def test_chat_page_uploads_an_image_and_streams_answers(tmp_path):
    from playwright.sync_api import sync_playwright

    engine = Engine(chatty_tiny_vlm())
    app = create_app(engine, model_name="tiny-chatty", ui=True)
    image_path = GOOD_IMAGES[1]
    image = Image.open(image_path).convert("RGB")
    q1, q2 = "What shape is in the picture?", "What colour is it?"
    a1 = engine.generate([Request.of(q1, image, max_new_tokens=24)])[0].text
    a2 = engine.generate([Request.of(q2, image, history=[(q1, a1)], max_new_tokens=24)])[0].text
    external: list[str] = []
    errors: list[str] = []
    with LiveServer(app) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("request", lambda r: None if r.url.startswith((live.url, "data:", "blob:")) else external.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.url + "/")
            page.wait_for_selector("#model:has-text('tiny-chatty')")
            page.set_input_files("#image-input", str(image_path))
            page.wait_for_selector("#preview:not([hidden])")
            page.click("details summary")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "24")
            for k, (question, answer) in enumerate([(q1, a1), (q2, a2)], 1):
                page.fill("#question", question)
                page.click("#send")
                page.wait_for_selector(f"#messages li.assistant.done >> nth={k - 1}", timeout=60_000)
                shown = page.locator("#messages li.assistant .body").nth(k - 1).inner_text()
                assert shown == answer
            assert page.locator("#messages li.user .body").all_inner_texts() == [q1, q2]
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("VISTUNE_SCREENSHOT"):
                Path(os.environ["VISTUNE_SCREENSHOT"]).write_bytes(shot.read_bytes())
        finally:
            browser.close()
    assert a1 and a2
    assert external == [] and errors == []
