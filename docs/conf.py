"""Sphinx configuration of the tldr_jax docs (``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Markdown and notebooks through myst-nb, the sphinx-book-theme, and an API reference generated from each
public module's ``__all__`` (``_ext/tldr_api.py``: autodoc with napoleon for the Google-style docstrings).
The notebooks of ``colabs/`` are copied into ``notebooks/`` when the build starts and rendered with the
outputs stored in them: nothing is executed (``nb_execution_mode = "off"``), so the build needs no
accelerator, network or model download. No intersphinx: the build runs offline.
"""

from __future__ import annotations

import builtins
import os
import shutil
import sys
import typing
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))  # autodoc imports this checkout, not another installed copy
sys.path.insert(0, str(DOCS / "_ext"))

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tldr_jax.version import __version__  # noqa: E402

_PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
#: The repository's address has one home, ``[project.urls] Repository`` in pyproject.toml.
REPOSITORY_URL = _PYPROJECT["project"]["urls"]["Repository"]

project = "tldr_jax"
author = "the tldr_jax authors"
copyright = "the tldr_jax authors, Apache-2.0"  # noqa: A001 (Sphinx's name)
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "tldr_api",
]

# --- sources --------------------------------------------------------------------------------------------
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute", "_ext"]
html_static_path = ["_static"]

# --- notebooks: colabs/*.ipynb with their stored outputs -------------------------------------------------
#: Where the notebooks come from (``TLDR_JAX_DOCS_NOTEBOOKS`` overrides it, e.g. a folder of freshly
#: executed copies); they are copied into ``notebooks/`` (git-ignored), rewritten only when changed.
NOTEBOOK_SOURCE = Path(os.environ.get("TLDR_JAX_DOCS_NOTEBOOKS") or REPO / "colabs")


def _copy_notebooks(source: Path, target: Path) -> None:
    """Mirror ``source/*.ipynb`` into ``target``: copy new or changed files, delete ones gone from source."""
    target.mkdir(exist_ok=True)
    wanted = {p.name: p for p in sorted(source.glob("*.ipynb"))}
    if not wanted:
        raise FileNotFoundError(f"no notebooks in {source}: the docs render colabs/*.ipynb "
                                "(or the folder named by TLDR_JAX_DOCS_NOTEBOOKS)")
    for name, path in wanted.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


_copy_notebooks(NOTEBOOK_SOURCE, DOCS / "notebooks")

nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-section-title) links between pages

# --- API reference --------------------------------------------------------------------------------------
#: One page per public module: its ``__all__`` in a summary table, each object described once, on the page
#: of the module closest to where it is defined (``_ext/tldr_api.py``).
tldr_api_pages = [
    ("tldr_jax", "Top level"),
    ("tldr_jax.merge", "Merge ops"),
    ("tldr_jax.saliency", "Saliency"),
    ("tldr_jax.schedule", "Merge schedules"),
    ("tldr_jax.flops", "FLOPs"),
    ("tldr_jax.options", "Apply options"),
    ("tldr_jax.models", "Models"),
    ("tldr_jax.video", "Video input"),
    ("tldr_jax.vis", "Visualisation"),
    ("tldr_jax.train", "Fine-tuning"),
    ("tldr_jax.retrieval", "Retrieval"),
    ("tldr_jax.retrieval.multiple_choice", "Multiple choice"),
    ("tldr_jax.qa", "Question answering"),
    ("tldr_jax.text", "Text tower and tokenizer"),
    ("tldr_jax.search", "Video search"),
    ("tldr_jax.checkpoint", "Checkpoints"),
    ("tldr_jax.loading", "Loading"),
    ("checkpoints_convert", "Checkpoint conversion"),
]
# Broken cross-references are errors (-n -W); names outside tldr_jax are not (no intersphinx offline).
nitpicky = True
_EXTERNAL = ("jax", "jaxlib", "numpy", "np", "flax", "optax", "orbax", "chex", "einops", "PIL", "av", "torch",
             "ray", "starlette", "uvicorn", "tokenizers", "usearch", "tqdm", "pathlib", "os", "collections",
             "typing", "types", "concurrent", "threading", "dataclasses", "enum", "io", "json", "argparse",
             "contextlib", "functools", "logging", "queue", "subprocess", "datetime", "warnings", "_io",
             "abc", "asyncio", "multiprocessing", "numbers", "re", "fractions")
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?")]
nitpick_ignore = [(f"py:{role}", name) for name in dir(builtins) + dir(typing)
                  for role in ("class", "exc", "obj", "func", "data")]
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = False
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# --- HTML -----------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"tldr_jax {release}"
html_theme_options = {
    "repository_url": REPOSITORY_URL,
    "use_repository_button": True,
    "path_to_docs": "docs",
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
