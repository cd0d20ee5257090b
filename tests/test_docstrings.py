"""Docstrings of the public API are complete: what the API reference (docs/api/) is generated from.

The public API is every name in the ``__all__`` of the modules with an API page (``tldr_api_pages`` in
``docs/conf.py``) and of every package of ``tldr_jax`` / ``checkpoints_convert``. The rules:

* every name has its own docstring (for a constant: a ``#:`` comment above its assignment, found where it
  is assigned; a dataclass's generated ``Name(field, ...)`` text does not count);
* a public function, or a public method a public class defines (``__init__`` and ``__call__``
  included), whose docstring has an ``Args:`` section lists every parameter there (``self`` / ``cls``
  and ``_private`` parameters excepted; ``*args`` / ``**kwargs`` by their names): no half-documented
  signatures. A dataclass with an ``Attributes:`` section lists every field there;
* sections use Google style: one name per entry (``a, b:`` or ``a / b:`` entries render as one unknown
  name);
* the functions with parameters but no ``Args:`` section at all, and the dataclasses with no
  ``Attributes:`` section, are the debt listed in ``tests/docstring_debt.txt`` (written when this test
  was introduced: their parameters are described in prose). The list only shrinks: a new public
  function without ``Args:`` fails, and so does a listed one that gained its section (remove its line).

A failure names each gap (``module.name: parameter 'x' is not in Args``), so fixing one is a local edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "_ext"))
import tldr_api  # noqa: E402  (docs/_ext/tldr_api.py: the same reading of __all__ as the docs)

ROOTS = ("tldr_jax", "checkpoints_convert")


def _page_modules() -> list[str]:
    """The modules of ``tldr_api_pages`` in docs/conf.py (read without running conf.py)."""
    import ast

    tree = ast.parse((REPO / "docs" / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "tldr_api_pages"
                                                for t in node.targets):
            return [module for module, _ in ast.literal_eval(node.value)]
    raise AssertionError("docs/conf.py has no tldr_api_pages list")


def _packages() -> list[str]:
    """Every package (``__init__``) under the roots."""
    out = []
    for root in ROOTS:
        package = importlib.import_module(root)
        out.append(root)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}."):
            if info.ispkg and ".tests" not in info.name:
                out.append(info.name)
    return out


def public_modules() -> list[str]:
    """The modules whose ``__all__`` is the public API: the API pages, and every package with one."""
    modules = list(dict.fromkeys(_page_modules() + _packages()))
    return [m for m in modules if hasattr(importlib.import_module(m), "__all__")]


def _own_functions(cls: type) -> list[tuple[str, object]]:
    """The public methods a class defines itself (plus ``__init__`` / ``__call__``), unwrapped."""
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_") and name not in ("__init__", "__call__"):
            continue
        func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        if inspect.isfunction(func) and func.__qualname__.startswith(cls.__qualname__ + "."):
            if name == "__init__" and func.__code__.co_filename == "<string>":
                continue  # made by @dataclass: the fields are checked on the class
            out.append((name, func))
    return out


def _parameters(func: object) -> list[str]:
    """The parameters a docstring must list (``*args`` / ``**kw`` by name; ``self`` / ``_x`` excluded)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    names = []
    for i, p in enumerate(signature.parameters.values()):
        if (i == 0 and p.name in ("self", "cls")) or p.name.startswith("_"):
            continue
        names.append(p.name)
    return names


def _listed(doc: str, sections: tuple[str, ...]) -> set[str]:
    """The names the given Google sections list, ``*`` / ``**`` stripped."""
    return {name.lstrip("*") for section in sections for name in tldr_api.section_names(doc, section)}


DEBT_FILE = REPO / "tests" / "docstring_debt.txt"


def _debt_key(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _check_function(where: str, func: object, doc: str, extra_doc: str = "",
                    debt: set[str] | None = None) -> list[str]:
    """Gaps of one function: no docstring, a malformed Args entry, parameters a present Args section
    does not list; a missing Args section is recorded in ``debt`` (its canonical name)."""
    if not doc:
        return [f"{where}: no docstring"]
    listed = _listed(doc + "\n\n" + extra_doc, ("Args", "Arguments", "Parameters", "Keyword Args"))
    bad = [n for n in listed if not n.isidentifier()]
    gaps = [f"{where}: Args entry {n!r} is not one parameter name (one entry per parameter)" for n in bad]
    params = _parameters(func)
    if params and not listed and debt is not None:
        debt.add(_debt_key(func))
        return gaps
    return gaps + [f"{where}: parameter {n!r} is not in Args" for n in params if n not in listed]


def api_gaps(module_name: str, debt: set[str] | None = None) -> list[str]:
    """Every gap in one module's ``__all__``; missing sections go to ``debt`` when it is given (else
    they are gaps too)."""
    gaps = []
    if debt is None:
        gaps_only: set[str] = set()
    else:
        gaps_only = debt
    module = importlib.import_module(module_name)
    for entry in tldr_api.entries(module_name):
        where = f"{module_name}.{entry.name}"
        obj = getattr(module, entry.name)
        if not entry.doc:
            gaps.append(f"{where}: no docstring" + (" (a #: comment above its assignment in "
                                                    f"{entry.origin})" if entry.kind == "data" else ""))
            continue
        if entry.kind == "function" and inspect.isfunction(inspect.unwrap(obj)):
            gaps += _check_function(where, inspect.unwrap(obj), entry.doc, debt=gaps_only)
        elif entry.kind in ("class", "exception"):
            if dataclasses.is_dataclass(obj):
                fields = [f.name for f in dataclasses.fields(obj) if f.init and not f.name.startswith("_")]
                listed = _listed(entry.doc, ("Attributes", "Args", "Parameters"))
                if fields and not listed:
                    gaps_only.add(_debt_key(obj))
                else:
                    gaps += [f"{where}: field {n!r} is not in Attributes" for n in fields if n not in listed]
            for name, func in _own_functions(obj):
                doc = tldr_api.own_doc(func)
                # __init__'s parameters may be documented in the class docstring (napoleon's convention)
                extra = entry.doc if name == "__init__" else ""
                if name == "__init__" and not doc:
                    doc, extra = entry.doc, ""
                gaps += _check_function(f"{where}.{name}", func, doc, extra, gaps_only)
    if debt is None:
        gaps += [f"{key}: no Args / Attributes section" for key in sorted(gaps_only)]
    return gaps


MODULES = public_modules()


def test_the_public_modules_are_found():
    # The list the other test walks: if discovery broke, every module would pass vacuously.
    for want in ("tldr_jax", "tldr_jax.merge", "tldr_jax.video", "tldr_jax.retrieval", "checkpoints_convert"):
        assert want in MODULES
    assert len(MODULES) >= 15


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_complete_docstrings(module_name):
    gaps = api_gaps(module_name, debt=set())
    assert not gaps, f"{len(gaps)} docstring gaps in {module_name}.__all__:\n" + "\n".join(gaps)


def _read_debt() -> set[str]:
    lines = DEBT_FILE.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_the_docstring_debt_only_shrinks():
    debt: set[str] = set()
    for module_name in MODULES:
        api_gaps(module_name, debt)
    listed = _read_debt()
    new = sorted(debt - listed)
    paid = sorted(listed - debt)
    assert not new, ("public functions / dataclasses without an Args / Attributes section (document each "
                     "parameter, Google style):\n" + "\n".join(new))
    assert not paid, (f"documented now, remove from {DEBT_FILE.name}:\n" + "\n".join(paid))


def test_the_checker_finds_gaps(tmp_path, monkeypatch):
    # The rules on a module written for the purpose: each kind of gap is reported, by name.
    (tmp_path / "tldr_jax_doccheck_probe.py").write_text('''
import dataclasses

#: Documented.
GOOD = 1
BAD = 2


def documented(a, *, b=1, **extra):
    """Fine.

    Args:
        a: one.
        b: two.
        **extra: more.
    """


def missing_b(a, b):
    """Not fine.

    Args:
        a: one.
    """


def merged(a, b):
    """Two names in one entry.

    Args:
        a / b: both.
    """


def undocumented(a):
    pass


def undocumented_args(a):
    """Parameters in prose only: a debt, not a gap."""


@dataclasses.dataclass
class Fields:
    """Has two fields.

    Attributes:
        x: documented.
    """

    x: int
    y: int = 0

    def method(self, z, w):
        """A method with half its Args.

        Args:
            w: documented.
        """


__all__ = ["GOOD", "BAD", "documented", "missing_b", "merged", "undocumented", "undocumented_args", "Fields"]
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    debt: set[str] = set()
    gaps = "\n".join(api_gaps("tldr_jax_doccheck_probe", debt))
    assert debt == {"tldr_jax_doccheck_probe.undocumented_args"}, debt
    assert "tldr_jax_doccheck_probe.GOOD" not in gaps and ".documented:" not in gaps
    assert "tldr_jax_doccheck_probe.BAD: no docstring" in gaps
    assert "missing_b: parameter 'b' is not in Args" in gaps
    assert "merged: Args entry 'a / b' is not one parameter name" in gaps
    assert "undocumented: no docstring" in gaps
    assert "Fields: field 'y' is not in Attributes" in gaps and "field 'x'" not in gaps
    assert "Fields.method: parameter 'z' is not in Args" in gaps
