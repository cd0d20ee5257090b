"""Execute the notebooks in ``colabs/`` in tiny mode and store them with their outputs.

The stored notebooks show their printed results and figures on the repository page, in the docs (which
render the stored outputs and execute nothing) and in Colab before anything runs. This script is the one
way those outputs are made:

* every notebook runs top to bottom in a fresh kernel, in a temporary working directory, with
  ``TLDR_TINY=1`` (tiny random models, the embedded clip, no network), ``JAX_PLATFORMS=cpu`` and no golden
  test data (the self-contained path of notebooks 06 / 08), so the outputs depend on the code only;
* figures are stored as PNG at a modest resolution (:data:`FIGURE_DPI`);
* volatile metadata is dropped (execution timestamps, the kernel's ``language_info``), the temporary
  directory is written as ``.`` in the outputs, and each file is replaced atomically, so a rerun changes
  only what really changed (timings, mostly);
* before running, the Colab badge in the first markdown cell and the ``REPO_URL`` default of the
  parameters cell (which the install cell uses) are rewritten from the one place the repository URL is
  given: ``[project.urls] Repository`` in ``pyproject.toml``.

Usage::

    python colabs/refresh_outputs.py                 # all notebooks (a few minutes on two CPU cores)
    python colabs/refresh_outputs.py 02_visualize    # some of them
    python colabs/refresh_outputs.py --links-only    # rewrite badges / install URLs only, run nothing
    python colabs/refresh_outputs.py --check         # exit 1 if a badge or install URL is out of date

Requires the ``[dev]`` extra (``nbclient``, ``nbformat``, ``ipykernel``, ``matplotlib``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYPROJECT = REPO / "pyproject.toml"
BRANCH = "main"
FIGURE_DPI = 60
CELL_TIMEOUT_S = 300
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.M)
REPO_URL_RE = re.compile(r'^(REPO_URL = os\.environ\.get\("TLDR_REPO_URL", ")([^"]*)(".*)$', re.M)
GITHUB_RE = re.compile(r"^https://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?$")
DRAWS_FIGURES = re.compile(r"\bplt\.(show|subplots|figure|imshow|plot)\(")


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The notebooks to refresh.

    Args:
        names: notebook names with or without ``.ipynb`` (``"02_visualize"``) or a unique prefix
            (``"02"``); ``None`` or empty: all of ``colabs/*.ipynb``.

    Returns:
        The paths, sorted.

    Raises:
        FileNotFoundError: a name matches no notebook or several (the message lists the notebooks).
    """
    every = sorted(HERE.glob("*.ipynb"))
    if not names:
        return every
    chosen = set()
    for name in names:
        stem = name.removesuffix(".ipynb")
        hits = [p for p in every if p.stem == stem] or [p for p in every if p.stem.startswith(stem)]
        if len(hits) != 1:
            raise FileNotFoundError(
                f"{name!r} names {len(hits)} notebooks in {HERE}; give one of {[p.stem for p in every]}"
            )
        chosen.add(hits[0])
    return sorted(chosen)


def repository_url(pyproject: Path = PYPROJECT) -> str:
    """The repository URL: ``[project.urls] Repository`` of ``pyproject.toml``.

    Args:
        pyproject: the ``pyproject.toml`` to read.

    Returns:
        ``https://github.com/<owner>/<repo>`` (no trailing slash, no ``.git``).

    Raises:
        ValueError: the entry is missing or not a ``https://github.com/<owner>/<repo>`` URL (Colab opens
            notebooks from GitHub only); the message says what to add.
    """
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: read the one line
        in_urls, url = False, None
        for line in text.splitlines():
            if line.strip().startswith("["):
                in_urls = line.strip() == "[project.urls]"
            elif in_urls and (m := re.match(r'\s*Repository\s*=\s*"([^"]*)"', line)):
                url = m.group(1)
    else:
        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    m = GITHUB_RE.match(url or "")
    if not m:
        raise ValueError(
            f"{pyproject}: [project.urls] Repository is {url!r}; set it to the GitHub URL of this "
            'repository, e.g. Repository = "https://github.com/OWNER/tldr_jax"'
        )
    return f"https://github.com/{m.group(1)}/{m.group(2)}"


def colab_url(repo_url: str, name: str) -> str:
    """The Colab address that opens ``colabs/<name>`` of ``repo_url``'s :data:`BRANCH`.

    Args:
        repo_url: ``https://github.com/<owner>/<repo>``.
        name: the notebook's file name (``"01_quickstart.ipynb"``).

    Returns:
        ``https://colab.research.google.com/github/<owner>/<repo>/blob/main/colabs/<name>``.
    """
    path = repo_url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/colabs/{name}"


def badge(repo_url: str, name: str) -> str:
    """The Markdown "Open In Colab" badge of one notebook.

    Args:
        repo_url: ``https://github.com/<owner>/<repo>``.
        name: the notebook's file name.

    Returns:
        ``[![Open In Colab](<badge svg>)](<colab_url(repo_url, name)>)``, one line.
    """
    return f"[![Open In Colab]({BADGE_SVG})]({colab_url(repo_url, name)})"


def link_problems(book: Any, name: str, repo_url: str) -> list[str]:
    """What in a notebook's badge or install URL disagrees with the repository URL.

    Args:
        book: the notebook (``nbformat.NotebookNode``).
        name: its file name, for the badge and the messages.
        repo_url: the repository URL (:func:`repository_url`).

    Returns:
        One message per problem; empty when the badge and the ``REPO_URL`` default are current.
    """
    problems = []
    first_md = next((c for c in book.cells if c.cell_type == "markdown"), None)
    badges = BADGE_RE.findall(first_md.source) if first_md is not None else []
    want = badge(repo_url, name)
    if first_md is None or want not in first_md.source.splitlines():
        problems.append(f"{name}: the first markdown cell lacks the badge {want}")
    if len(badges) > 1:
        problems.append(f"{name}: {len(badges)} Colab badges in the first markdown cell, want one")
    urls = [m.group(2) for c in book.cells if c.cell_type == "code" for m in REPO_URL_RE.finditer(c.source)]
    if urls != [repo_url]:
        problems.append(f"{name}: REPO_URL defaults {urls}, want exactly one, {repo_url!r}")
    code = [c.source for c in book.cells if c.cell_type == "code"]
    install = [s for s in code if "pip" in s and "IN_COLAB" in s]
    if not install or not all("git+{REPO_URL}" in s for s in install):
        problems.append(f"{name}: no Colab install cell installing git+{{REPO_URL}}")
    return problems


def sync_links(book: Any, name: str, repo_url: str) -> bool:
    """Rewrite a notebook's Colab badge and ``REPO_URL`` default from the repository URL, in place.

    The badge goes on the line after the title of the first markdown cell (replacing any badge there);
    the ``REPO_URL = os.environ.get("TLDR_REPO_URL", "...")`` line of the parameters cell gets the URL.

    Args:
        book: the notebook (``nbformat.NotebookNode``), modified in place.
        name: its file name (``"01_quickstart.ipynb"``).
        repo_url: the repository URL (:func:`repository_url`).

    Returns:
        Whether anything changed.

    Raises:
        ValueError: the notebook has no markdown cell or no ``REPO_URL`` line to rewrite.
    """
    first_md = next((c for c in book.cells if c.cell_type == "markdown"), None)
    if first_md is None:
        raise ValueError(f"{name}: no markdown cell to hold the Colab badge; add a title cell")
    lines = [ln for ln in first_md.source.splitlines() if not BADGE_RE.match(ln)]
    head, rest = (lines[:1], lines[1:]) if lines and lines[0].startswith("#") else ([], lines)
    while rest and not rest[0].strip():
        rest.pop(0)  # the blank lines around a removed badge
    lines = head + [""] * bool(head) + [badge(repo_url, name)] + ([""] + rest if rest else [])
    source = "\n".join(lines)
    changed = source != first_md.source
    first_md.source = source
    hits = 0
    for cell in book.cells:
        if cell.cell_type == "code" and REPO_URL_RE.search(cell.source):
            new = REPO_URL_RE.sub(lambda m: m.group(1) + repo_url + m.group(3), cell.source)
            hits += 1
            changed |= new != cell.source
            cell.source = new
    if hits != 1:
        raise ValueError(f'{name}: {hits} `REPO_URL = os.environ.get("TLDR_REPO_URL", ...)` lines, want 1')
    return changed


def kernel_env(workdir: Path, golden_dir: Path, fast_compile: bool = False) -> dict[str, str]:
    """The environment the notebooks run in (tiny mode, CPU, this checkout, no golden data).

    Args:
        workdir: a directory for the matplotlib configuration (``matplotlibrc`` with :data:`FIGURE_DPI`).
        golden_dir: passed as ``TLDR_GOLDEN_DIR``; an empty directory makes notebooks 06 / 08 build their
            self-contained random models whatever lies beside the clone.
        fast_compile: add ``--xla_backend_optimization_level=0`` to ``XLA_FLAGS``: XLA's CPU compiles
            take about a third of the time and the tiny programs run slower (the tests use it; the stored
            outputs, whose timings are shown, do not).

    Returns:
        The kernel's environment variables.
    """
    rc = workdir / "mplconfig"
    rc.mkdir(parents=True, exist_ok=True)
    (rc / "matplotlibrc").write_text(f"figure.dpi: {FIGURE_DPI}\nsavefig.dpi: figure\n")
    env = dict(os.environ)
    for key in ("TLDR_REPO_URL", "UMT_SRC", "RET_SRC", "QA_SRC", "MODEL_DIR", "VIDEOS_DIR", "DATA_DIR"):
        env.pop(key, None)
    env.update(
        TLDR_TINY="1",
        JAX_PLATFORMS="cpu",
        PYTHONHASHSEED="0",
        TLDR_JAX_COMPILE_CACHE="0",  # no persistent compilation cache: every run compiles, as the tests do
        # tqdm.auto's note that ipywidgets is missing (its message holds this machine's site-packages path).
        PYTHONWARNINGS="ignore:IProgress not found",
        TLDR_GOLDEN_DIR=str(golden_dir),
        MPLCONFIGDIR=str(rc),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        # The kernel imports this checkout, not another installed copy.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    if fast_compile:
        flags = [env.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]
        env["XLA_FLAGS"] = " ".join(filter(None, flags))
    return env


def execute(
    book: Any,
    workdir: Path,
    timeout: int = CELL_TIMEOUT_S,
    golden_dir: Path | None = None,
    fast_compile: bool = False,
    **hooks: Any,
) -> None:
    """Run a notebook top to bottom in a fresh kernel in ``workdir/run`` (tiny mode, see :func:`kernel_env`).

    Each cell's stdout and stderr are merged into one output each (carriage returns applied, so a
    progress bar keeps its last state).

    Args:
        book: the notebook (``nbformat.NotebookNode``); its outputs are replaced in place.
        workdir: an empty scratch directory.
        timeout: seconds one cell may take.
        golden_dir: passed as ``TLDR_GOLDEN_DIR``; ``None`` (what the stored outputs use): an empty
            directory, so notebooks 06 / 08 build their self-contained random models.
        fast_compile: compile with XLA's backend optimisations off (see :func:`kernel_env`).
        **hooks: ``nbclient.NotebookClient`` hooks (``on_cell_start=...``, ``on_cell_executed=...``).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message holds the traceback).
    """
    import nbclient

    run, golden = workdir / "run", golden_dir or workdir / "no_golden"
    run.mkdir(parents=True, exist_ok=True)
    golden.mkdir(exist_ok=True)
    client = nbclient.NotebookClient(
        book, timeout=timeout, kernel_name="python3", record_timing=False, coalesce_streams=True,
        resources={"metadata": {"path": str(run)}}, **hooks,
    )
    client.execute(env=kernel_env(workdir, golden, fast_compile))


def normalise(book: Any, workdir: Path) -> None:
    """Drop what changes from run to run without the code changing, in place.

    Cell timing metadata and the kernel's ``language_info`` go; the scratch directory is written as ``.``
    and this checkout as ``<repo>`` in text outputs.

    Args:
        book: the executed notebook (``nbformat.NotebookNode``).
        workdir: the scratch directory it ran in (:func:`execute`).
    """
    book.metadata["language_info"] = {"name": "python"}
    for key in ("widgets", "papermill"):
        book.metadata.pop(key, None)
    subs = [(str((workdir / "run").resolve()) + os.sep, ""), (str(workdir / "run") + os.sep, ""),
            (str(workdir.resolve()), "."), (str(workdir), "."), (str(REPO), "<repo>")]

    def clean(text: str) -> str:
        for old, new in subs:
            text = text.replace(old, new)
        return text

    for cell in book.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text = clean(out.text)
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out.data[mime] = clean(value)


def write_atomic(book: Any, path: Path) -> None:
    """Write a notebook to ``path`` through a temporary file and a rename (never half-written); an
    existing file keeps its permissions.

    Args:
        book: the notebook (``nbformat.NotebookNode``).
        path: where it goes.
    """
    import nbformat

    text = nbformat.writes(book) + "\n"
    umask = os.umask(0)
    os.umask(umask)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)  # mkstemp's 0600 would make the notebook unreadable to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refresh(path: Path, repo_url: str, timeout: int = CELL_TIMEOUT_S) -> float:
    """Sync the links of one notebook, execute it in tiny mode and store it with its outputs.

    Args:
        path: the notebook.
        repo_url: the repository URL (:func:`repository_url`).
        timeout: seconds one cell may take.

    Returns:
        The seconds the execution took.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed; the stored notebook is left as it was.
    """
    import nbformat

    book = nbformat.read(path, as_version=4)
    sync_links(book, path.name, repo_url)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tldr_nb_") as tmp:
        execute(book, Path(tmp), timeout=timeout)
        normalise(book, Path(tmp))
    seconds = time.perf_counter() - t0
    write_atomic(book, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: the arguments; ``None``: ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when ``--check`` found stale links or a notebook failed.
    """
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to refresh (default: all of colabs/*.ipynb)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report stale badges / install URLs, run nothing")
    mode.add_argument("--links-only", action="store_true", help="rewrite badges / install URLs, run nothing")
    ap.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = ap.parse_args(argv)
    repo_url, paths = repository_url(PYPROJECT), notebook_paths(args.names)
    if args.check or args.links_only:
        problems = []
        for path in paths:
            book = nbformat.read(path, as_version=4)
            if args.links_only and sync_links(book, path.name, repo_url):
                write_atomic(book, path)
                print(f"{path.name}: links rewritten for {repo_url}")
            problems += link_problems(book, path.name, repo_url)
        print("\n".join(problems) or f"{len(paths)} notebooks link to {repo_url}")
        return 1 if problems else 0
    failed, t_all = [], time.perf_counter()
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path.name}: executing in tiny mode ...", flush=True)
        try:
            seconds = refresh(path, repo_url, timeout=args.timeout)
        except Exception as err:  # noqa: BLE001 - report every failing notebook, keep the others
            failed.append(path.name)
            print(f"[{i}/{len(paths)}] {path.name}: FAILED, left unchanged:\n{err}", file=sys.stderr)
            continue
        print(f"[{i}/{len(paths)}] {path.name}: {seconds:.1f} s, {path.stat().st_size / 1024:.0f} KiB stored")
    total = sum(p.stat().st_size for p in notebook_paths()) / 1024
    print(f"done in {time.perf_counter() - t_all:.0f} s; colabs/*.ipynb hold {total:.0f} KiB"
          + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
