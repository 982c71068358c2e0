"""The web app in a real browser: Debian's chromium, driven by playwright, opens the page, starts a
run on the tiny model, waits for it to finish, checks the page and saves a screenshot.

Needs `pip install playwright` (the Python driver only: no `playwright install`) and a system
chromium (`apt-get install -y chromium`); skipped with the reason otherwise. Set
MLX_VGB_CHROMIUM to use another chromium binary, MLX_VGB_SCREENSHOTS to keep the screenshot.
"""

import os
import shutil
from pathlib import Path

import pytest
from test_app_support import running_app, save_tiny_model_folder

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path():
    for p in (os.environ.get("MLX_VGB_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
              shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and os.path.exists(p):
            return p
    return None


sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed "
    "(pip install playwright; no browser download needed)")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system chromium (apt-get install -y chromium, or set "
    "MLX_VGB_CHROMIUM to a chromium binary)")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    model = save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    with running_app(model) as (url, _):
        yield url


def test_page_runs_a_walk_and_shows_it(app_url, tmp_path):
    shots = Path(os.environ.get("MLX_VGB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = ctx.new_page()
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("#run", timeout=60_000)
            assert "verifier-guided backtracking" in page.content()
            # the default form is the letter-avoidance example; compare with the plain baseline
            page.locator("#compare input[type=checkbox]").check()
            page.locator("#run").click()
            page.wait_for_function(
                "() => { const s = document.querySelector('#status');"
                " return s && /done|⚠/.test(s.innerText); }", timeout=60_000)
            status = page.locator("#status").inner_text()
            assert "done" in status, status
            stats = page.locator("#stats-0").inner_text()
            assert "reached leaf" in stats and "yes" in stats, stats
            assert "backtracks" in stats
            assert page.locator("#walk-0 .vgb-text[data-done=true]").count() == 1
            assert page.locator("#depth-0 svg.vgb-depth").count() == 1
            assert page.locator("#walk-0 del.vgb-erased").count() > 0  # erased spans visible
            final = page.locator("#final-0 textarea").input_value()
            assert final and "e" not in final.lower()
            assert "(baseline)" in page.locator("#stats-1").inner_text()
            path = shots / "app-tiny-model.png"
            page.screenshot(path=str(path), full_page=True)
            assert path.stat().st_size > 10_000
        finally:
            browser.close()


@pytest.mark.slow
def test_screenshots_of_the_real_app():
    """The README's screenshots: the app on SmolLM2 (MLX_VGB_APP_MODEL: a model folder, default
    the embedded one), letter avoidance, VGB beside ActionLevelRS; saved in docs/img/."""
    out = Path(__file__).resolve().parent.parent / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with running_app(os.environ.get("MLX_VGB_APP_MODEL"), timeout_s=600) as (url, _):
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector("#run", timeout=120_000)
            page.locator("#compare input[type=checkbox]").check()
            page.locator("#run").click()
            page.wait_for_selector("#walk-0 del.vgb-erased", timeout=300_000)
            page.screenshot(path=str(out / "app-smollm2-running.png"), full_page=True)
            page.wait_for_function(
                "() => /done|⚠/.test(document.querySelector('#status').innerText)",
                timeout=600_000)
            assert "done" in page.locator("#status").inner_text()
            page.screenshot(path=str(out / "app-smollm2-compare.png"), full_page=True)
            browser.close()
