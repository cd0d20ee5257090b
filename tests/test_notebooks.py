"""Execute every notebook in ``colabs/`` top to bottom in tiny mode (``TLDR_TINY=1``: tiny random
models, the embedded clip, no network). A failing cell fails the test with its traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colabs").glob("*.ipynb"))
CELL_TIMEOUT_S = 240


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for want in ("01_quickstart.ipynb", "02_visualize.ipynb", "03_benchmark.ipynb", "04_convert_umt.ipynb",
                 "06_retrieval.ipynb", "07_search.ipynb", "08_qa.ipynb"):
        assert want in names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_tiny_mode(path, tmp_path, monkeypatch):
    book = nbformat.read(path, as_version=4)
    first = next(c for c in book.cells if c.cell_type == "code")
    assert 'TINY = os.environ.get("TLDR_TINY", "0") == "1"' in first.source, "first code cell must set TINY"
    monkeypatch.setenv("TLDR_TINY", "1")
    # The kernel imports this checkout (not another installed copy) and writes its outputs to tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        book, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed:\n{err}")
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
