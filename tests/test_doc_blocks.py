"""Every ```python block of README.md and docs/**/*.md runs, or says why it cannot.

A block is skipped only when the line before it (blank lines aside) is an HTML comment
``<!-- not-run: REASON -->`` with a non-empty reason (a block that needs a real checkpoint, a data set or
the network). The other blocks of a file run in order, in one namespace per file (so a page reads as
one session), in a temporary working directory; the examples use tiny models so that the whole file
stays cheap. A failing block is reported by file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run\s*:?(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: the file, the line of its opening fence, its language and code."""

    path: Path
    line: int
    lang: str
    code: str
    skip_reason: str | None  # None: runs; "" would be a marker without a reason


def doc_files() -> list[Path]:
    """README.md and every Markdown page under docs/ (build outputs left out)."""
    docs = ROOT / "docs"
    pages = sorted(p for p in docs.rglob("*.md") if "_build" not in p.relative_to(docs).parts)
    return [ROOT / "README.md", *pages]


def parse_blocks(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a Markdown file and its stray ``not-run`` markers (line, text).

    Fences may be indented (inside list items); the indentation is removed from the block's lines.
    A fence closes at the first line of the same character at least as long, so a ```` block may
    show a ``` one. A marker counts for the next block when only blank lines lie between them.

    Returns:
      ``(blocks, stray)``: every block in order, and the markers not directly followed by a block.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    stray: list[tuple[int, str]] = []
    marker: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m is None:
            if NOT_RUN.match(line):
                if marker is not None:
                    stray.append(marker)
                marker = (i + 1, NOT_RUN.match(line).group("reason").strip())
            elif line.strip() and marker is not None:
                stray.append(marker)
                marker = None
            i += 1
            continue
        indent, fence = len(m.group("indent")), m.group("fence")
        lang = m.group("info").strip().split(" ")[0].lower() if m.group("info").strip() else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        reason = marker[1] if marker is not None else None
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", reason))
        marker = None
        i = j + 1
    if marker is not None:
        stray.append(marker)
    return blocks, stray


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one file."""
    return [b for b in parse_blocks(path)[0] if b.lang in ("python", "py", "python3")]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


FILES = [p for p in doc_files() if p.exists()]
RUNNABLE = [p for p in FILES if any(b.skip_reason is None for b in python_blocks(p))]


def test_parser_reads_fences_markers_and_indentation(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n<!-- not-run: needs a checkpoint -->\n\n```python\nx = 1\n```\n\n"
        "- item\n\n  ```python\n  y = 2\n  ```\n\n````markdown\n```python\nnot a block\n```\n````\n\n"
        "<!-- not-run: -->\n```python\nz = 3\n```\n\n<!-- not-run: nothing follows -->\n\ntext\n",
        encoding="utf-8",
    )
    blocks, stray = parse_blocks(page)
    assert [(b.lang, b.code, b.skip_reason) for b in blocks] == [
        ("python", "x = 1\n", "needs a checkpoint"),
        ("python", "y = 2\n", None),
        ("markdown", "```python\nnot a block\n```\n", None),
        ("python", "z = 3\n", ""),
    ]
    assert stray == [(26, "nothing follows")]


def test_the_docs_have_runnable_python_blocks():
    """The scan finds the pages and runs most of their examples (an empty scan would pass vacuously)."""
    names = {_rel(p) for p in RUNNABLE}
    assert {"README.md", "docs/getting_started.md", "docs/guides/merge_ops.md"} <= names
    total = sum(len(python_blocks(p)) for p in FILES)
    skipped = sum(b.skip_reason is not None for p in FILES for b in python_blocks(p))
    assert total >= 20 and skipped < total


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_not_run_markers_give_a_reason(path):
    """Each ``not-run`` marker names why, and sits right above a python block (no stale markers)."""
    blocks, stray = parse_blocks(path)
    assert not stray, f"{_rel(path)}: not-run markers not followed by a code block at lines {stray}"
    for b in blocks:
        if b.skip_reason is not None:
            assert b.lang in ("python", "py", "python3"), (
                f"{_rel(path)}:{b.line}: a not-run marker above a {b.lang or 'plain'} block (only python "
                "blocks run; drop the marker)"
            )
            assert len(b.skip_reason) >= 8, (
                f"{_rel(path)}:{b.line}: the not-run marker needs a reason, e.g. "
                "<!-- not-run: needs the UMT-B checkpoint -->"
            )


@pytest.mark.parametrize("path", RUNNABLE, ids=_rel)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    """The file's runnable python blocks, in order, in one namespace, in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_block__"}
    for block in python_blocks(path):
        if block.skip_reason is not None:
            continue
        where = f"{_rel(path)}:{block.line}"
        code = compile(block.code, where, "exec")
        try:
            exec(code, namespace)
        except Exception as err:  # noqa: BLE001 - re-raised with the block's place
            raise AssertionError(f"the python block at {where} failed: {type(err).__name__}: {err}") from err


def test_readme_links_point_to_files():
    """README's relative links (docs pages, images) name files of the repository: the repository page
    shows README without the docs build, so a moved page would otherwise leave a dead link."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?:|mailto:|#)[^)\s]+)\)", text)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert targets and not missing, f"README.md links to missing files: {missing}"
