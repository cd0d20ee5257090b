"""The docs site builds without a warning, describes every public name, and renders in a browser.

``sphinx-build -W --keep-going -b html docs OUT`` runs once per module (a subprocess, like a user's build):
``docs/conf.py`` sets ``nitpicky``, so a broken cross-reference, a malformed docstring or a page missing
from a toctree fails it. The built site is then checked: each name of each API page's ``__all__`` has
its description (anchor) on the page the reference generator chose, and headless Chromium (Debian's
``chromium``, driven by Playwright as in ``test_search_browser.py``) opens the home page and a notebook
page and finds the title and a figure that actually loaded (``naturalWidth > 0``). The screenshots are
saved beside the build (their paths are printed; ``pytest -s``).

Skipped with the reason when the docs tools (the ``[dev]`` extra) or the browser are missing.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs build needs the [dev] extra (sphinx, myst-nb, the theme)")
pytest.importorskip("myst_nb", reason="the docs build needs the [dev] extra (myst-nb)")
pytest.importorskip("sphinx_book_theme", reason="the docs build needs the [dev] extra (sphinx-book-theme)")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BUILD_TIMEOUT_S = 900
sys.path.insert(0, str(DOCS / "_ext"))
import tldr_api  # noqa: E402  (docs/_ext/tldr_api.py)
from docutils.nodes import make_id  # noqa: E402


def _page_modules() -> list[str]:
    """The modules of ``tldr_api_pages`` in docs/conf.py (read without running conf.py)."""
    tree = ast.parse((DOCS / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "tldr_api_pages"
                                                for t in node.targets):
            return [module for module, _ in ast.literal_eval(node.value)]
    raise AssertionError("docs/conf.py has no tldr_api_pages list")


def _figure_notebooks() -> list[Path]:
    """The notebooks the docs render (``TLDR_JAX_DOCS_NOTEBOOKS`` or ``colabs/``) that store a PNG output."""
    source = Path(os.environ.get("TLDR_JAX_DOCS_NOTEBOOKS") or REPO / "colabs")
    out = []
    for path in sorted(source.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
        if any("image/png" in o.get("data", {}) for o in outputs):
            out.append(path)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built HTML site (one fresh build, into a temporary folder)."""
    out = tmp_path_factory.mktemp("docs_html")
    doctrees = tmp_path_factory.mktemp("docs_doctrees")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees),
           str(DOCS), str(out)]
    try:
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sphinx-build took over {BUILD_TIMEOUT_S} s: {' '.join(cmd)}")
    assert run.returncode == 0, (f"sphinx-build failed (exit {run.returncode}); warnings are errors:\n"
                                 f"{run.stderr[-8000:]}\n{run.stdout[-2000:]}")
    return out


@pytest.mark.slow  # one full Sphinx build: ~20 s on two idle cores, more under load
def test_every_public_name_is_described_on_its_page(site):
    modules = _page_modules()
    best = tldr_api.homes(modules)
    missing = []
    for home in best.values():
        html = (site / "api" / "generated" / f"{home.module}.html").read_text(encoding="utf-8")
        target = f"{home.module}.{home.name}"
        # a function named like a module (tldr_jax.schedule) is anchored by a label, which docutils
        # normalises (api-function-tldr-jax-schedule)
        anchor = f'id="{target}"' if target not in modules else f'id="{make_id(f"api-{home.kind}-{target}")}"'
        if anchor not in html:
            missing.append(f"{target} ({home.kind}) not described on api/generated/{home.module}.html")
    assert len(best) > 150  # the pages really list the API (a broken reading of __all__ would pass)
    assert not missing, "\n".join(missing)
    for module in modules:
        html = (site / "api" / "generated" / f"{module}.html").read_text(encoding="utf-8")
        assert f'id="module-{module}"' in html, f"{module}: the module docstring is not on its page"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the screenshot check needs playwright")
    chromium = os.environ.get("TLDR_JAX_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if chromium is None:
        pytest.skip("the screenshot check needs Chromium: apt-get install chromium "
                    "(or set TLDR_JAX_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        handle = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield handle
        finally:
            handle.close()


def _open(browser, path: Path, shot: Path):
    """Open a built page (file://), wait for it to settle, save a screenshot; the page and its errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=False)
    print(f"screenshot: {shot}")
    return page, errors


@pytest.mark.slow
def test_home_page_renders(site, browser):
    page, errors = _open(browser, site / "index.html", site.parent / "site_home.png")
    assert "tldr_jax" in page.title()
    assert page.locator("h1").first.inner_text().strip().startswith("tldr_jax")
    nav = page.locator("nav").all_inner_texts()
    for caption in ("Guides", "Notebooks", "API reference"):
        assert any(caption in text for text in nav), f"{caption!r} missing from the navigation"
    assert not errors, errors


@pytest.mark.slow
def test_notebook_page_shows_its_figures(site, browser):
    notebooks = _figure_notebooks()
    assert notebooks, ("no notebook in colabs/ stores a figure: the docs render the stored outputs "
                       "(nb_execution_mode='off'), so store them (run each notebook, save with outputs)")
    book = notebooks[0]
    html = site / "notebooks" / f"{book.stem}.html"
    assert html.exists(), f"{book.name} was not rendered to {html}"
    page, errors = _open(browser, html, site.parent / f"site_{book.stem}.png")
    heading = json.loads(book.read_text(encoding="utf-8"))["cells"][0]["source"]
    title = "".join(heading).splitlines()[0].lstrip("# ").strip()
    assert title[:20] in page.title(), (title, page.title())
    page.wait_for_function(
        "() => [...document.querySelectorAll('.cell_output img')]"
        ".some(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    loaded = page.evaluate(
        "[...document.querySelectorAll('.cell_output img')].filter(i => i.naturalWidth > 0).length")
    assert loaded >= 1
    first = page.locator(".cell_output img").first
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(site.parent / f"site_{book.stem}_figure.png"))
    assert not errors, errors
