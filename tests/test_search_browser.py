"""``tldr-jax serve`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The server runs on a free loopback port (uvicorn in a thread) over a tiny random model and four small MP4
files. The expected first result of the query is the Python API's (``tldr_jax.search.search``); the query
is the candidate word whose best video leads the second by the widest ITC margin, so the order is not a
float tie. The test types the query, waits for the grid, checks the first card and its thumbnail, plays
it, checks that the vid-TLDR token view of the clip loaded beside the player, checks the error line of a
bad query, and saves screenshots (their paths are printed; ``pytest -s``).

Skipped with the reason when the browser (``apt-get install chromium``) or ``playwright`` is missing
(``playwright install`` is never needed: the system browser is used).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from search_fixtures import TEXT, VISION, WORDS

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install "
                               "playwright; no `playwright install`: it uses the system chromium)")

from tldr_jax import retrieval as R  # noqa: E402
from tldr_jax.search import build_index, load_index, search  # noqa: E402
from tldr_jax.search.server import create_app, serve_in_thread  # noqa: E402
from tldr_jax.search.service import SearchService  # noqa: E402
from tldr_jax.video.decode import write_video  # noqa: E402

CHROMIUM = os.environ.get("TLDR_JAX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("the browser test needs Chromium: apt-get install chromium (or set TLDR_JAX_CHROMIUM)",
                allow_module_level=True)

#: The tiny search model at 64 px (a 4 x 4 patch grid per frame, so the token view shows merging) with a
#: schedule that merges: 64 -> 40 -> 28 -> 20 tokens.
R_VIEW = (24, 12, 8)
NAMES = ["beach_sunset.mp4", "city_traffic_at_night.mp4", "dog_catches_frisbee.mp4", "snowy_forest.mp4"]


def _frames(seed: int) -> np.ndarray:
    """``(16, 96, 128, 3)`` uint8: a coloured gradient with a square moving across it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 220, size=3)
    y, x = np.mgrid[0:96, 0:128]
    frames = np.empty((16, 96, 128, 3), np.uint8)
    for t in range(16):
        img = (base + (x[..., None] * (seed + 1) + y[..., None] * 2) % 80).clip(0, 255)
        c = 8 + t * 6
        img[30:60, c:c + 30] = 255 - base
        frames[t] = img
    return frames


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base_url, index_dir, query, expected first video, its row)`` with the server running."""
    folder = tmp_path_factory.mktemp("browser_videos")
    for i, name in enumerate(NAMES):
        write_video(folder / name, _frames(i), fps=8)
    index_dir = tmp_path_factory.mktemp("browser_idx") / "index"
    # one model object for the build, the reference and the server
    model = R.init(0, "umt_b16", text_config=TEXT, vocab=WORDS, **{**VISION, "img_size": 64})
    build_index(model, folder, index_dir, r=R_VIEW, batch_size=4, keep_tokens=True, progress=False)
    with load_index(index_dir, model) as index:
        def margin(word):
            hits = search(index, word, k=2)
            return hits[0].score - hits[1].score

        query = max((w for w in WORDS if w.startswith("w")), key=margin)
        top = search(index, query, k=1)[0]
        assert margin(query) > 1e-4, "no query separates the first video from the second"
    service = SearchService(index_dir, model=model)
    service.warm_up()
    with serve_in_thread(create_app(service, warm_up=False)) as url:
        yield url, index_dir, query, top.video, top.row


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 800})
            yield tab
        finally:
            browser.close()


@pytest.mark.slow  # ~30 s on two cores, nearly all of it building the index and compiling
def test_search_play_and_error_in_a_browser(served, page, tmp_path):
    url, index_dir, query, expected, row = served
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    token_requests: list[str] = []
    page.on("request", lambda r: token_requests.append(r.url) if "/api/tokens/" in r.url else None)
    page.goto(url + "/")
    sync_api.expect(page.locator("#status")).to_contain_text("ready", timeout=30_000)

    page.fill("#q", query)
    page.press("#q", "Enter")
    first = page.locator("#results li.hit").first
    first.wait_for(timeout=30_000)
    sync_api.expect(first.locator(".name")).to_have_text(f"1. {expected}")
    assert page.locator("#results li.hit").count() == len(NAMES)
    page.wait_for_function(
        "() => { const i = document.querySelector('#results li.hit img');"
        " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    assert page.evaluate("document.querySelector('#results li.hit img').naturalWidth") > 0
    results_png = tmp_path / "serve_results.png"
    page.screenshot(path=str(results_png), full_page=True)

    first.click()
    player = page.locator("#player")
    sync_api.expect(page.locator("#player-panel")).to_be_visible()
    sync_api.expect(page.locator("#player-title")).to_have_text(expected)
    assert player.get_attribute("src") == f"/media/{row}"
    assert page.evaluate("document.querySelector('#player').currentSrc").endswith(f"/media/{row}")
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1", timeout=30_000)
    assert page.evaluate("document.querySelector('#player').videoWidth") == 128
    # the vid-TLDR view of the clip beside the player: an image the browser decoded
    page.wait_for_function(
        "() => { const i = document.querySelector('#token-img');"
        " return i && !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=60_000)
    assert page.evaluate("document.querySelector('#token-img').naturalWidth") > 400
    assert page.locator("#token-status").text_content() == ""
    assert any(f"/api/tokens/{row}.png" in u for u in token_requests), token_requests
    player_png = tmp_path / "serve_player.png"
    page.screenshot(path=str(player_png), full_page=True)

    page.fill("#q", "!!!")
    page.press("#q", "Enter")
    status = page.locator("#status")
    sync_api.expect(status).to_contain_text("empty after the official caption cleaning")
    assert "error" in (status.get_attribute("class") or "")
    assert page.locator("#results li.hit").count() == 0  # no stale results under the error
    error_png = tmp_path / "serve_error.png"
    page.screenshot(path=str(error_png))
    for png in (results_png, player_png, error_png):
        assert png.stat().st_size > 1000
        print(f"screenshot: {png}")
        if os.environ.get("TLDR_JAX_SCREENSHOTS"):  # a folder to keep them in (e.g. for docs/)
            shutil.copy(png, os.environ["TLDR_JAX_SCREENSHOTS"])
    # the bad query's 400 (and the browser's line about it) is the only failed request
    unexpected = [e for e in errors if not (e.startswith("400 ") and "/api/search?q=%21%21%21" in e)
                  and "status of 400" not in e]
    assert not unexpected, unexpected
