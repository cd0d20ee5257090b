"""Imports only run down: no module imports the ``tldr_jax`` package itself, the vision checkpoint loader
imports no multi-modal package, and neither the converters nor the command-line modules import in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` of every import statement in ``path`` (function bodies included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, tuple(a.name for a in node.names)))
    return out


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_no_module_imports_the_package_itself():
    bad = []
    for path in sorted((ROOT / "tldr_jax").rglob("*.py")):
        if path == ROOT / "tldr_jax" / "__init__.py":
            continue
        for module, names in _imports(path):
            if module == "tldr_jax" and not names:
                bad.append(f"{path.relative_to(ROOT)}: import tldr_jax")
            elif module == "tldr_jax":
                bad += [f"{path.relative_to(ROOT)}: from tldr_jax import {n}" for n in names
                        if not _is_module(f"tldr_jax.{n}")]
    assert not bad, "\n".join(bad)


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (anywhere in the file)."""
    graph = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for module, names in _imports(path):
            if module.startswith(package):
                deps.add(module)
                deps.update(f"{module}.{n}" for n in names if _is_module(f"{module}.{n}"))
        graph[name] = deps - {name}
    return graph


@pytest.mark.parametrize(
    "package",
    [
        "checkpoints_convert", "tldr_jax/cli", "tldr_jax/text", "tldr_jax/retrieval", "tldr_jax/qa",
        "tldr_jax/search",
    ],
)
def test_no_import_cycles(package):
    """Between the modules of a package (the package ``__init__`` that re-exports them aside)."""
    dotted = package.replace("/", ".")
    graph = {m: {d for d in deps if d != dotted} for m, deps in _graph(package).items() if m != dotted}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*trail, node, dep])
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_vision_converter_does_not_import_the_others():
    imported = {m for m, _ in _imports(ROOT / "checkpoints_convert" / "core.py")}
    assert not any(m.startswith(("checkpoints_convert.retrieval", "checkpoints_convert.dispatch"))
                   for m in imported)
    checkpoint = {m for m, _ in _imports(ROOT / "tldr_jax" / "checkpoint.py")}
    higher = ("tldr_jax.retrieval", "tldr_jax.loading", "tldr_jax.text")
    assert not any(m.startswith(higher) for m in checkpoint)


def test_import_tldr_jax_in_a_fresh_process():
    code = "import tldr_jax, tldr_jax.cli, checkpoints_convert; print(tldr_jax.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    from tldr_jax.version import __version__

    assert out.stdout.strip() == __version__
