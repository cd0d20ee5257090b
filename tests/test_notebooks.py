"""The notebooks in ``colabs/``: stored with their outputs, linked to the repository, and runnable.

The slow test executes every notebook top to bottom in tiny mode (``TLDR_TINY=1``: tiny random models, the
embedded clip, no network), in the environment ``colabs/refresh_outputs.py`` stores their outputs from;
a failing cell fails the test with its traceback, and a cell that prints or draws must have stored output
of the same kind. The quick tests read the stored files: outputs present (figures as PNG, no errors, no
volatile metadata, no machine paths), the files small, and each Colab badge and install URL matching
``[project.urls] Repository`` of ``pyproject.toml``.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
from pathlib import Path

import pytest
from conftest import GOLDEN_DIR

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colabs").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
MAX_TOTAL_BYTES = 1_500_000
MAX_PNG_SIDE = 1200


def _load_refresh():
    spec = importlib.util.spec_from_file_location("refresh_outputs", REPO / "colabs" / "refresh_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _load_refresh()


def _code(book) -> list:
    return [c for c in book.cells if c.cell_type == "code"]


def _colab_only(cell) -> bool:
    """The install cell: it does something in Colab only, so it runs without output elsewhere."""
    return "if IN_COLAB:" in cell.source


def _signature(cell) -> tuple[bool, tuple[str, ...]]:
    """What kind of output a cell has: stdout or not, and the MIME types of its rich outputs."""
    stdout = any(o.output_type == "stream" and o.name == "stdout" and o.text.strip() for o in cell.outputs)
    rich = {m for o in cell.outputs if o.output_type in ("display_data", "execute_result") for m in o.data}
    return stdout, tuple(sorted(rich))


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for want in ("01_quickstart.ipynb", "02_visualize.ipynb", "03_benchmark.ipynb", "04_convert_umt.ipynb",
                 "05_finetune.ipynb", "06_retrieval.ipynb", "07_search.ipynb", "08_qa.ipynb"):
        assert want in names


# --- links: the Colab badge and the install URL come from pyproject.toml --------------------------------


def test_badges_and_install_urls_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_repo = url.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    assert refresh.repository_url() == f"https://github.com/{owner_repo}"
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        title = next(c for c in book.cells if c.cell_type == "markdown").source
        colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/colabs/{path.name}"
        badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})"
        assert badge in title.splitlines(), path.name
        params = _code(book)[0].source
        assert f'REPO_URL = os.environ.get("TLDR_REPO_URL", "https://github.com/{owner_repo}")' in params
        install = [c.source for c in _code(book) if "pip" in c.source and "IN_COLAB" in c.source]
        assert install and all("git+{REPO_URL}" in s for s in install), path.name
        assert refresh.link_problems(book, path.name, refresh.repository_url()) == []


def test_sync_links_follows_a_new_repository_url():
    path = NOTEBOOKS[0]
    book = nbformat.read(path, as_version=4)
    before = [c.source for c in book.cells]
    fork = "https://github.com/someone/fork_of_tldr"
    assert refresh.link_problems(book, path.name, fork)            # stale for the fork
    assert refresh.sync_links(book, path.name, fork) is True
    assert refresh.link_problems(book, path.name, fork) == []
    assert refresh.link_problems(book, path.name, refresh.repository_url())   # now stale for the original
    assert refresh.sync_links(book, path.name, fork) is False      # idempotent
    title = book.cells[0].source
    assert title.count("colab-badge.svg") == 1
    assert f"colab.research.google.com/github/someone/fork_of_tldr/blob/main/colabs/{path.name}" in title
    changed = [i for i, c in enumerate(book.cells) if c.source != before[i]]
    code_index = next(i for i, c in enumerate(book.cells) if c.cell_type == "code")
    assert changed == [0, code_index]                              # the title and the parameters cell only
    assert refresh.sync_links(book, path.name, refresh.repository_url()) is True
    assert [c.source for c in book.cells] == before                # and back, byte for byte


def test_repository_url_names_the_fix(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[project]\nname = "x"\n\n[project.urls]\nRepository = "https://github.com/a/b.git"\n')
    assert refresh.repository_url(good) == "https://github.com/a/b"
    bad = tmp_path / "bad.toml"
    bad.write_text('[project]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"\[project.urls\] Repository"):
        refresh.repository_url(bad)


def test_check_mode_reports_stale_links(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "pyproject.toml"
    stale.write_text('[project]\nname = "x"\n\n[project.urls]\nRepository = "https://github.com/a/b"\n')
    before = NOTEBOOKS[0].read_bytes()
    monkeypatch.setattr(refresh, "PYPROJECT", stale)
    assert refresh.main(["--check", "01"]) == 1
    assert "01_quickstart.ipynb: the first markdown cell lacks the badge" in capsys.readouterr().out
    assert NOTEBOOKS[0].read_bytes() == before                      # --check writes nothing
    monkeypatch.undo()
    assert refresh.main(["--check"]) == 0


def test_write_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    target = tmp_path / "book.ipynb"
    target.write_text("old")
    target.chmod(0o644)
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    refresh.write_atomic(book, target)
    assert nbformat.read(target, as_version=4) == book
    assert target.stat().st_mode & 0o777 == 0o644                  # not mkstemp's 0600

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(refresh.os, "replace", fail)
    book.cells[0].source = "changed"
    with pytest.raises(OSError, match="disk full"):
        refresh.write_atomic(book, target)
    assert nbformat.read(target, as_version=4).cells[0].source != "changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.ipynb"]   # no temporary file left


# --- the stored outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_notebook_has_its_outputs(path):
    """Executed top to bottom once, outputs kept, nothing volatile or machine-specific stored."""
    book = nbformat.read(path, as_version=4)
    assert book.metadata.get("language_info") == {"name": "python"}, "kernel metadata not normalised"
    ran = [c for c in _code(book) if not _colab_only(c)]
    assert [c.execution_count for c in _code(book)] == list(range(1, len(_code(book)) + 1)), (
        f"{path.name}: not executed top to bottom in one kernel; run python colabs/refresh_outputs.py")
    assert any(c.outputs for c in ran), f"{path.name} is stored without outputs"
    pngs = []
    for cell in _code(book):
        assert "execution" not in cell.metadata, "cell timing metadata is volatile"
        assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}: stored error"
        if re.search(r"^print\(", cell.source, re.M):
            assert _signature(cell)[0], f"{path.name}: a printing cell has no stored stdout:\n{cell.source}"
        if re.search(r"^\s*plt\.show\(\)", cell.source, re.M):
            assert "image/png" in _signature(cell)[1], f"{path.name}: no PNG from:\n{cell.source}"
        for out in cell.outputs:
            data = out.get("data", {})
            text = out.get("text", "") + "".join(v for k, v in data.items() if k.startswith("text/"))
            for leak in ("/tmp/", "/root/", "/home/", str(REPO)):
                assert leak not in text, f"{path.name}: machine path {leak!r} stored: {text[:300]}"
            if "image/png" in out.get("data", {}):
                pngs.append(base64.b64decode(out.data["image/png"]))
    if refresh.DRAWS_FIGURES.search("\n".join(c.source for c in _code(book))):
        assert pngs, f"{path.name} draws figures but stores no image/png"
    from PIL import Image

    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and max(im.size) <= MAX_PNG_SIDE, (path.name, im.size)


def test_stored_notebooks_are_small():
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS}
    assert sum(sizes.values()) < MAX_TOTAL_BYTES, sizes


# --- execution ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_tiny_mode(path, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    stored = nbformat.read(path, as_version=4)
    first = _code(stored)[0]
    assert 'TINY = os.environ.get("TLDR_TINY", "0") == "1"' in first.source, "first code cell must set TINY"
    book = nbformat.from_dict(stored)
    for cell in _code(book):
        cell.outputs, cell.execution_count = [], None
    # The golden data beside the clone, when there: notebooks 06 / 08 then run its official tiny models
    # (the stored outputs come from their self-contained random ones; the kinds of output are the same).
    try:
        # fast_compile: XLA's CPU backend at -O0 compiles in about a third of the time (the test's cost is
        # compiling); the stored outputs are made with the default optimisation.
        refresh.execute(book, tmp_path, golden_dir=GOLDEN_DIR if GOLDEN_DIR.is_dir() else None,
                        fast_compile=True)
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed:\n{err}")
    for ran, kept in zip(_code(book), _code(stored)):
        assert not [o for o in ran.outputs if o.output_type == "error"]
        if ran.outputs:
            assert kept.outputs, f"{path.name}: this cell has output now, none stored:\n{ran.source}"
        assert _signature(ran) == _signature(kept), (
            f"{path.name}: outputs (stdout, rich types) {_signature(ran)} now, {_signature(kept)} stored; "
            f"rerun python colabs/refresh_outputs.py {path.stem}\n{ran.source}")
