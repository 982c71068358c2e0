"""The web app in a real browser: Debian's chromium, driven by playwright, on the tiny model: a
run with its verdict, the comparison, the explored tree and a step's inspection, the form's own
validation messages, presets, the run as JSON, and the history surviving a reload.

Needs `pip install playwright` (the Python driver only: no `playwright install`) and a system
chromium (`apt-get install -y chromium`); skipped with the reason otherwise. Set
MLX_VGB_CHROMIUM to use another chromium binary, MLX_VGB_SCREENSHOTS to keep the screenshots.
"""

import os
import shutil
from pathlib import Path

import pytest
from test_app_support import running_app, save_tiny_model_folder

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DONE = (
    "() => { const s = document.querySelector('#status'); return s && /done|⚠/.test(s.innerText); }"
)


def chromium_path():
    for p in (
        os.environ.get("MLX_VGB_CHROMIUM"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if p and os.path.exists(p):
            return p
    return None


sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright Python package is not installed "
    "(pip install playwright; no browser download needed)",
)
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no system chromium (apt-get install -y chromium, or set "
    "MLX_VGB_CHROMIUM to a chromium binary)",
)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    model = save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    with running_app(model) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = ctx.new_page()
    pg.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    pg.wait_for_selector("#run", timeout=60_000)
    yield pg
    ctx.close()


@pytest.fixture
def shots(tmp_path):
    out = Path(os.environ.get("MLX_VGB_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def pick(page, elem_id, option):
    """Choose ``option`` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def run(page):
    page.locator("#run").click()
    page.wait_for_function(DONE, timeout=60_000)
    return page.locator("#status").inner_text()


def show_step(page, n):
    """Type step ``n`` and press Show, as a user would, until that step is shown: Gradio takes
    the box's value asynchronously, and the tab's first render can replace the box."""
    want = f"#step-view .vgb-step[data-step='{n}']"
    for _ in range(10):
        page.locator("#inspect-step input").fill(str(n))
        page.locator("#inspect-step input").press("Tab")
        page.locator("#inspect-show").click()
        try:
            page.wait_for_selector(want, timeout=2_000)
            return
        except Exception:
            continue
    raise AssertionError(f"step {n} never shown: {page.locator('#step-view').inner_text()[:300]}")


def test_a_run_shows_its_verdict_and_the_comparison_with_plain(page, shots):
    page.locator("#compare input[type=checkbox]").check()
    pick(page, "baseline", "plain")
    status = run(page)
    # the letter preset: VGB avoids the 'e'; plain, scored by the same verifier, does not
    assert "vgb passes" in status and "plain (baseline) fails" in status, status
    assert page.locator("#stats-0 .vgb-verdict").get_attribute("data-verdict") == "passes"
    assert page.locator("#stats-1 .vgb-verdict").get_attribute("data-verdict") == "fails"
    assert "vgb passes, plain fails" in page.locator("#compare-summary").inner_text()
    assert "output tokens/s" in page.locator("#compare-summary").inner_text()
    svg = page.locator("#depth svg.vgb-depth")
    assert svg.get_attribute("data-series") == "2"  # both runs on one axis
    assert page.locator("#walk-0 del.vgb-erased").count() > 0  # erased spans visible
    final = page.locator("#final-0 textarea").input_value()
    assert final and "e" not in final.lower()
    page.screenshot(path=str(shots / "app-tiny-compare.png"), full_page=True)


def test_the_tree_view_and_step_inspection_show_the_walk(page, shots):
    run(page)
    page.get_by_role("tab", name="Explored tree").click()
    tree = page.locator("#tree-0 .vgb-tree")
    assert int(tree.get_attribute("data-nodes")) > 5
    assert page.locator("#tree-0 .vgb-onpath").count() >= 3  # the path taken, in bold
    ups = [
        int(x)
        for x in page.locator("#tree-0 .vgb-node").evaluate_all(
            "els => els.map(e => e.dataset.ups)"
        )
    ]
    assert sum(ups) > 0  # backtracks are marked on the nodes they left
    assert "V^" in tree.inner_text() and "visits" in tree.inner_text()
    # the run's last event (the export and the step view of its last step) lands after the
    # status reads done; a step asked for before it would be overwritten by it (the tab renders
    # its content when first opened, so wait there)
    page.get_by_role("tab", name="Inspect a step").click()
    page.wait_for_selector("#step-view .vgb-step[data-step]", timeout=30_000)
    show_step(page, 5)
    step = page.locator("#step-view .vgb-step")
    assert step.locator(".vgb-options tr").count() >= 3  # header + candidates (+ parent)
    assert step.locator("tr.vgb-drawn").count() == 1 or step.get_attribute("data-move") == "stay"
    assert "share of weight" in step.inner_text()
    # a click on a backtrack dot of the depth plot opens that step
    dot = page.locator("#depth circle.vgb-drop").first
    want = dot.get_attribute("data-step")
    dot.click()
    page.wait_for_selector(f"#step-view .vgb-step[data-step='{want}']", timeout=10_000)
    page.screenshot(path=str(shots / "app-tiny-step.png"), full_page=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max-tokens", "0", "Max tokens (H): must be a whole number >= 1"),
        ("candidates", "0", "Candidates K: must be a whole number >= 1"),
        ("temp", "-1", "Temperature: must be >= 0"),
    ],
)
def test_out_of_range_fields_get_the_apps_own_message(page, field, value, message):
    page.locator(f"#{field} input").fill(value)
    page.locator("#run").click()
    page.wait_for_selector("#status .vgb-error", timeout=20_000)
    assert message in page.locator("#status").inner_text()
    assert page.get_by_text("Error", exact=True).count() == 0  # no bare Gradio error labels


def test_run_is_at_the_top_and_stays_in_view(page):
    box = page.locator("#run").bounding_box()
    assert box["y"] + box["height"] <= 720
    page.mouse.wheel(0, 1500)
    page.wait_for_timeout(300)
    box = page.locator("#run").bounding_box()
    assert 0 <= box["y"] <= 720 - box["height"]  # sticky


def test_a_preset_fills_the_form_and_runs(page):
    pick(page, "preset", "Regex: one plain sentence")
    page.wait_for_function(
        "() => document.querySelector('#verifier input').value === 'regex'", timeout=10_000
    )
    assert (
        page.locator("#pattern input, #pattern textarea").first.input_value() == r"[A-Z][a-z ,.']*"
    )
    assert page.locator("#letter").is_hidden()
    assert page.locator("#prompt textarea").input_value().startswith("Write one short")
    run(page)
    verdict = page.locator("#stats-0 .vgb-verdict").get_attribute("data-verdict")
    assert verdict in ("passes", "fails", "unfinished")


def test_the_run_as_json_and_the_history_survive_a_reload(page):
    page.locator("#prompt textarea").fill("Tell me about cats.")
    run(page)
    page.get_by_role("tab", name="Run as JSON").click()
    page.wait_for_function(
        "() => /mlx-vgb run v1/.test(document.querySelector('#run-json').innerText)", timeout=10_000
    )
    assert '"verdict"' in page.locator("#run-json").inner_text()
    link = page.locator("#run-json-file a").first  # the download link
    rec = page.request.get(link.get_attribute("href")).json()
    assert rec["format"] == "mlx-vgb run v1" and rec["settings"]["prompt"] == "Tell me about cats."
    first = rec["runs"][0]
    assert first["events"] and first["stats"]["steps"] > 0 and first["verdict"]
    page.wait_for_function(
        "() => /cats/.test(document.querySelector('#history-list').innerText)", timeout=10_000
    )
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector("#run", timeout=60_000)
    page.wait_for_function(
        "() => /cats/.test(document.querySelector('#history-list').innerText)", timeout=10_000
    )
    page.locator("#prompt textarea").fill("something else")
    page.locator("#restore").click()
    page.wait_for_function(
        "() => document.querySelector('#prompt textarea').value === 'Tell me about cats.'",
        timeout=10_000,
    )


@pytest.mark.slow
def test_screenshots_of_the_real_app():
    """The README's screenshots: the app on SmolLM2 (MLX_VGB_APP_MODEL: a model folder, default
    the embedded one), letter avoidance, VGB beside plain sampling; saved in docs/img/."""
    out = Path(__file__).resolve().parent.parent / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with running_app(os.environ.get("MLX_VGB_APP_MODEL"), timeout_s=600) as (url, _):
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector("#run", timeout=120_000)
            page.locator("#compare input[type=checkbox]").check()
            pick(page, "baseline", "plain")
            page.locator("#run").click()
            page.wait_for_selector("#walk-0 del.vgb-erased", timeout=300_000)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(out / "app-smollm2-running.png"), full_page=True)
            page.wait_for_function(DONE, timeout=600_000)
            assert "done" in page.locator("#status").inner_text()
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(out / "app-smollm2-compare.png"), full_page=True)
            page.get_by_role("tab", name="Explored tree").click()
            page.locator("#tree-0").screenshot(path=str(out / "app-smollm2-tree.png"))
            dot = page.locator("#depth circle.vgb-drop").nth(3)  # a backtrack: click inspects
            want = dot.get_attribute("data-step")
            dot.click()
            page.wait_for_selector(f"#step-view .vgb-step[data-step='{want}']", timeout=20_000)
            page.locator("#step-view").screenshot(path=str(out / "app-smollm2-step.png"))
            browser.close()
