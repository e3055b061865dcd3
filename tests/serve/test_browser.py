"""End to end: the service on loopback, its page driven in headless Chromium (Debian's chromium,
installed by `make test`), a phantom image dropped on it and the shown answer read back."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(bundle):
    import uvicorn

    from chestdx.predict.predictor import Predictor
    from chestdx.serve.app import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(Predictor(bundle)), host="127.0.0.1", port=port,
                                        log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    t.join(timeout=10)


def test_drop_a_file_and_read_the_answer(server, phantom_png, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server)
            assert "not a medical device" in page.inner_text("body")
            # drop the file on the drop zone, as a person would
            data = phantom_png.read_bytes()
            handle = page.evaluate_handle(
                """(bytes) => { const dt = new DataTransfer();
                   dt.items.add(new File([new Uint8Array(bytes)], 'chest.png', {type: 'image/png'}));
                   return dt; }""", list(data))
            page.dispatch_event("#drop", "drop", {"dataTransfer": handle})
            page.wait_for_function("document.getElementById('answer').textContent.length > 0", timeout=60_000)
            answer = page.inner_text("#answer")
            assert answer in ("normal", "pneumonia", "covid")
            assert page.is_visible("#overlay")
            assert page.locator("#probs tr").count() == 3
            # a bad file shows the service's error
            page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                                  "buffer": b"plain text, not an image"}])
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
            assert "415" in page.inner_text("#error")
        finally:
            browser.close()
