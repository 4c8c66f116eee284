"""The local page in a real browser (Debian's Chromium, headless, driven by Playwright): load `/`, send each
example API's sample with its button, check the answers; keep a screenshot for the README (issue 10 item 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess

SCREENSHOT = ROOT / "docs" / "images" / "local-page.png"
EXPECTED = {  # what each example answers to its own sample (checked in the page's output)
    "iris-classifier": lambda r: r["label"] in ("setosa", "versicolor", "virginica"),
    "kmeans": lambda r: 0 <= r["cluster"] < 100,
    "image-classifier": lambda r: r["digit"] == 7,
    "sentence-embedding": lambda r: len(r["embedding"]) == 384,
}


@pytest.fixture(scope="module")
def chromium() -> str:
    from system_packages import ensure

    return ensure("chromium", "chromium")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    server = ServerProcess(["local", "apis", "--no-reload"], tmp_path_factory.mktemp("page"))
    server.wait_ready(timeout=180)
    server.wait_settled(timeout=180)
    yield server
    server.stop()


def test_clients_get_json(local):
    apis = {a["name"]: a for a in httpx.get(f"{local.base}/").json()["apis"]}
    assert set(apis) >= set(EXPECTED)
    for name in EXPECTED:
        api = apis[name]
        assert api["state"] == "ready" and api["endpoint"] == f"/{name}" and api["load_seconds"] > 0
        assert api["summary"] and api["sample"]["file"].startswith("sample.")


def test_the_page_sends_each_sample_and_shows_the_answer(local, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1500})
            page.goto(f"{local.base}/", wait_until="load")
            assert page.title() == "myelin local"
            for name, check in EXPECTED.items():
                card = page.locator(f"#api-{name}")
                assert "ready" in card.locator(".state").inner_text()
                assert card.locator("p").first.inner_text()  # the README's first paragraph
                page.click(f"#send-{name}")
                page.wait_for_function(f"document.getElementById('out-{name}').dataset.status !== undefined",
                                       timeout=60_000)
                status = page.get_attribute(f"#out-{name}", "data-status")
                text = page.inner_text(f"#out-{name}")
                meta = page.inner_text(f"#meta-{name}")
                assert status == "200", (name, text)
                if "…" not in text:
                    assert check(json.loads(text)), (name, text)
                assert meta.startswith("HTTP 200 in ") and meta.endswith(" ms")
            # `make docs-images` refreshes the README's picture; a test run writes a scratch copy.
            shot = SCREENSHOT if os.environ.get("MYELIN_UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_docs_page_renders_offline(local, chromium):
    """Swagger UI comes from the server itself: with every other host unreachable it still lists the APIs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(local.base) else None)
            page.goto(f"{local.base}/docs", wait_until="networkidle")
            page.wait_for_selector("text=/kmeans", timeout=30_000)
            assert not outside, outside
        finally:
            browser.close()


def test_make_local_installs_every_apis_requirements():
    import subprocess

    # -B: the plan as on a fresh machine, even where the test run itself already installed everything.
    plan = subprocess.run(["make", "-n", "-B", "local"], capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    for req in sorted(Path(ROOT / "apis").glob("*/requirements.txt")):
        assert f"-r {req.relative_to(ROOT)}" in plan, plan
    assert "myelin local apis" in plan
