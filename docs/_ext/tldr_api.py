"""The API reference pages, generated from each public module's ``__all__`` (a small Sphinx extension).

Every name in a listed module's ``__all__`` gets a row in that page's summary table, and one full
description on exactly one page, its *home*: the listed module closest to where the object is defined
(``tldr_jax.MergePlan`` is described on the ``tldr_jax.merge`` page, ``tldr_jax.apply`` on the top-level
page, ``tldr_jax.retrieval.TextConfig`` on the ``tldr_jax.text`` page); the other pages link to it. So a
name added to an ``__all__`` appears in the reference with no edit here, and no object is described twice
(which Sphinx reports as a duplicate).

Module constants have no ``__doc__``: their documentation is the ``#:`` comment above the assignment (or a
string literal right after it), found by following ``from X import NAME`` to the module that assigns it
(:func:`data_doc`); ``tests/test_docstrings.py`` uses the same helpers.

The pages are written to ``docs/api/generated/`` (git-ignored) when the build starts, and only rewritten
when their text changes, so an incremental build re-reads nothing it need not.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path

#: The kinds of public names, in the order the pages list them.
KINDS = ("module", "class", "exception", "function", "data")
_HEADINGS = {"module": "Modules", "class": "Classes", "exception": "Exceptions", "function": "Functions",
             "data": "Constants and types"}


def kind_of(obj: object) -> str:
    """The kind of a public object, one of :data:`KINDS`.

    Args:
        obj: a value taken from a module's ``__all__``.

    Returns:
        ``"module"``, ``"exception"`` (an ``Exception`` or ``Warning`` class), ``"class"``, ``"function"``
        (any other callable: functions, builtins, ``jax.jit`` wrappers) or ``"data"`` (constants, type
        aliases).
    """
    if inspect.ismodule(obj):
        return "module"
    if isinstance(obj, (types.GenericAlias, types.UnionType)) or type(obj).__module__ == "typing":
        return "data"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):  # functions, builtins, jax.jit / functools wrappers
        return "function"
    return "data"


def _source_tree(module_name: str) -> tuple[ast.Module, list[str]] | None:
    """The parsed source of a module and its lines, or None where there is no Python source."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    text = Path(spec.origin).read_text(encoding="utf-8")
    return ast.parse(text), text.splitlines()


def _top_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements, with those inside ``if`` / ``try`` blocks (optional imports) flattened."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If):
            out += _top_statements(node.body) + _top_statements(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_statements(node.body) + _top_statements(node.orelse)
            for handler in node.handlers:
                out += _top_statements(handler.body)
    return out


def _assigned_names(node: ast.stmt) -> list[str]:
    """The plain names an assignment statement binds (``A = B = 1``, ``A: int = 1``, ``type A = ...``)."""
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _comment_doc(lines: list[str], node: ast.stmt, following: ast.stmt | None) -> list[str]:
    """The ``#:`` lines above ``node`` (or ``#:`` on its line), else a string literal right after it."""
    above: list[str] = []
    i = node.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        above.insert(0, lines[i].strip()[2:].removeprefix(" "))
        i -= 1
    if above:
        return above
    same = lines[node.lineno - 1]
    if "#: " in same:
        return [same.split("#: ", 1)[1]]
    if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)):
        return inspect.cleandoc(following.value.value).splitlines()
    return []


def _resolve_from(module_name: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``module_name`` reads from."""
    if not node.level:
        return node.module or ""
    spec = importlib.util.find_spec(module_name)
    package = module_name if spec and spec.submodule_search_locations else module_name.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _is_module(name: str) -> bool:
    """Whether a dotted name is an importable module (``find_spec`` raises for ``module.attribute``)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def data_doc(module_name: str, name: str, _depth: int = 0) -> tuple[str, str, list[str]]:
    """Where a module-level name is assigned, and its documentation comment.

    Follows ``from X import NAME [as ALIAS]`` through re-exporting packages to the assignment.

    Args:
        module_name: the module whose namespace holds ``name`` (e.g. ``"tldr_jax.video"``).
        name: the public name (e.g. ``"IMAGENET_MEAN"``).

    Returns:
        ``(defining module, name there, doc lines)``; the doc lines are empty when the assignment has no
        ``#:`` comment or docstring, and the module is ``module_name`` itself when the assignment is not
        found (a name made at run time).
    """
    parsed = _source_tree(module_name)
    if parsed is None or _depth > 10:
        return module_name, name, []
    tree, lines = parsed
    statements = _top_statements(tree.body)
    for i, node in enumerate(statements):
        if name in _assigned_names(node):
            following = statements[i + 1] if i + 1 < len(statements) else None
            return module_name, name, _comment_doc(lines, node, following)
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _resolve_from(module_name, node)
                    if _is_module(f"{source}.{alias.name}"):
                        return module_name, name, []  # a submodule, not a constant
                    return data_doc(source, alias.name, _depth + 1)
    return module_name, name, []


def own_doc(obj: object) -> str:
    """An object's own docstring: empty for none, and for the ``Name(field, ...)`` text that dataclasses and
    named tuples make up when the class has none (``inspect.getdoc`` would also inherit a base's).

    Args:
        obj: a class, function or module.

    Returns:
        The cleaned docstring, or ``""``.
    """
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    doc = inspect.cleandoc(doc)
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc


@dataclass(frozen=True)
class Entry:
    """One public name of one module's ``__all__``.

    Attributes:
        module: the module whose ``__all__`` lists it.
        name: the name there.
        kind: one of :data:`KINDS`.
        key: what identifies the object across modules (``("data", module, name)`` of its assignment for
            constants, its ``id`` otherwise).
        origin: the module that defines it (where a class or function was written, or a constant assigned).
        doc: its docstring, or the constant's comment, ``""`` when it has none.
    """

    module: str
    name: str
    kind: str
    key: tuple
    origin: str
    doc: str


def entries(module_name: str) -> list[Entry]:
    """Every name of a module's ``__all__``, in the order ``__all__`` gives them.

    Args:
        module_name: a module with an ``__all__``.

    Returns:
        One :class:`Entry` per name.

    Raises:
        ValueError: if the module has no ``__all__`` or lists a name it does not have.
    """
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"{module_name} has no __all__: the API reference lists each module's __all__")
    out = []
    for name in names:
        if not hasattr(module, name):
            raise ValueError(f"{module_name}.__all__ names {name!r}, which the module does not have")
        obj = getattr(module, name)
        kind = kind_of(obj)
        if kind == "data":
            origin, there, lines = data_doc(module_name, name)
            out.append(Entry(module_name, name, kind, ("data", origin, there), origin, "\n".join(lines)))
        elif kind == "module":
            out.append(Entry(module_name, name, kind, ("module", obj.__name__), obj.__name__, own_doc(obj)))
        else:
            origin = getattr(obj, "__module__", None) or module_name
            out.append(Entry(module_name, name, kind, ("obj", id(obj)), origin, own_doc(obj)))
    return out


def _shared_prefix(a: str, b: str) -> int:
    """How many leading dotted components two module names share."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def homes(modules: list[str]) -> dict[tuple, Entry]:
    """The one entry that carries each object's full description.

    Args:
        modules: the modules that have an API page.

    Returns:
        For each object key, the entry of the page closest to where the object is defined (most leading
        module components shared with its origin, then the more specific page).

    Raises:
        ValueError: if a module listed in an ``__all__`` has no page of its own.
    """
    best: dict[tuple, Entry] = {}
    for module in modules:
        for entry in entries(module):
            if entry.kind == "module":
                if entry.origin not in modules:
                    raise ValueError(f"{module}.__all__ lists the module {entry.origin}, which has no API "
                                     "page: add it to API_PAGES in docs/conf.py")
                continue
            rank = (_shared_prefix(entry.origin, module), module.count("."))
            old = best.get(entry.key)
            if old is None or rank > (_shared_prefix(old.origin, old.module), old.module.count(".")):
                best[entry.key] = entry
    return best


def _summary(doc: str) -> str:
    """The first paragraph of a docstring on one line (a table cell)."""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines())


def _indent(text: str, pad: str = "   ") -> list[str]:
    return [pad + line if line.strip() else "" for line in text.splitlines()]


def section_names(doc: str, section: str) -> list[str]:
    """The names a Google-style docstring section lists (``Args:``, ``Attributes:``).

    Args:
        doc: a cleaned docstring.
        section: the section's title, without the colon.

    Returns:
        The names at the section's first indentation level (``name:`` or ``name (type):``), ``*`` and
        ``**`` kept, in order.
    """
    names: list[str] = []
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != f"{section}:":
            continue
        base = len(line) - len(line.lstrip())
        item = None
        for body in lines[i + 1:]:
            if not body.strip():
                continue
            pad = len(body) - len(body.lstrip())
            if pad <= base:
                break
            item = pad if item is None else item
            if pad == item:
                head = body.strip().split(":", 1)[0].split(" (", 1)[0].strip()
                names.append(head)
    return names


def _label(entry: Entry) -> str:
    return f"api-{entry.kind}-{entry.module}.{entry.name}"


def _link(entry: Entry, pages: set[str]) -> str:
    """A cross-reference to an object's description (a label where its name is also a module's)."""
    target = f"{entry.module}.{entry.name}"
    if target in pages:
        return f":ref:`{entry.name} <{_label(entry)}>`"
    return f":py:obj:`~{target}`"


def _describe(entry: Entry, obj: object, pages: set[str]) -> list[str]:
    """The RST that describes one object at its home."""
    target = f"{entry.module}.{entry.name}"
    lines: list[str] = []
    options: list[str] = []
    if target in pages:  # tldr_jax.schedule, the function, shadows the module of that name
        lines = [f".. _{_label(entry)}:", ""]
        options = ["   :no-index:"]
    if entry.kind == "function":
        return lines + [f".. autofunction:: {target}"] + options + [""]
    if entry.kind in ("class", "exception"):
        directive = "autoexception" if entry.kind == "exception" else "autoclass"
        lines += [f".. {directive}:: {target}", "   :members:"] + options
        # Fields the class docstring documents (napoleon's Attributes) are not documented again from
        # the class body, nor are a named tuple's field accessors ("Alias for field number 0").
        skip = section_names(entry.doc, "Attributes") + list(getattr(obj, "_fields", ()))
        if skip:
            lines.append(f"   :exclude-members: {', '.join(dict.fromkeys(skip))}")
        if "__call__" in getattr(obj, "__dict__", {}) and own_doc(obj.__call__):
            lines.append("   :special-members: __call__")
        if entry.kind == "exception":
            lines.append("   :show-inheritance:")
        return lines + [""]
    lines += [f".. py:data:: {entry.name}", f"   :module: {entry.module}"]
    value = repr(obj)
    if len(value) <= 70 and "\n" not in value:
        lines.append(f"   :value: {value}")
    return lines + options + [""] + _indent(entry.doc) + [""]


def page_rst(module_name: str, title: str, best: dict[tuple, Entry], modules: list[str]) -> str:
    """The RST of one module's API page.

    Args:
        module_name: the module.
        title: the page title.
        best: :func:`homes` of all pages.
        modules: the modules of all pages.

    Returns:
        The page: the module docstring, a summary table of its ``__all__`` by kind (links to each name's
        home), then the full descriptions of the names whose home it is.
    """
    module = importlib.import_module(module_name)
    pages = set(modules)
    heading = f"{title}: ``{module_name}``"
    lines = [heading, "=" * len(heading), "", f".. automodule:: {module_name}", "",
             f".. currentmodule:: {module_name}", ""]
    listed = entries(module_name)
    here = [e for e in listed if e.kind != "module" and best[e.key] == e]
    for kind in KINDS:
        group = [e for e in listed if e.kind == kind]
        if not group:
            continue
        lines += [f".. rubric:: {_HEADINGS[kind]}", "", ".. list-table::", "   :widths: 30 70", ""]
        for e in group:
            link = f":py:mod:`{e.origin}`" if kind == "module" else _link(best[e.key], pages)
            lines += [f"   * - {link}", f"     - {_summary(e.doc)}"]
        lines.append("")
    if here:
        lines += ["Reference", "---------", ""]
        for e in here:
            lines += _describe(e, getattr(module, e.name), pages)
    return "\n".join(lines) + "\n"


def write_pages(out_dir: Path, pages: list[tuple[str, str]]) -> list[Path]:
    """Write one ``<module>.rst`` per page into ``out_dir``; files whose text is unchanged are left alone.

    Args:
        out_dir: the folder of generated pages (removed pages' files are deleted).
        pages: ``(module, title)`` pairs.

    Returns:
        The page files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = [m for m, _ in pages]
    best = homes(modules)
    written = []
    for module_name, title in pages:
        path = out_dir / f"{module_name}.rst"
        text = page_rst(module_name, title, best, modules)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in set(out_dir.glob("*.rst")) - set(written):
        stale.unlink()
    return written


def aliases(modules: list[str]) -> dict[str, str]:
    """Every other name of a described object, mapped to the name it is described under.

    Args:
        modules: the modules that have an API page.

    Returns:
        ``{"tldr_jax.load": "tldr_jax.loading.load", "tldr_jax.video.clip.load_clip":
        "tldr_jax.video.load_clip", ...}``: each name in any page's ``__all__``, and the object's name in
        the module that defines it.
    """
    best = homes(modules)
    out: dict[str, str] = {}
    for module in modules:
        for entry in entries(module):
            if entry.kind == "module":
                continue
            home = best[entry.key]
            target = f"{home.module}.{home.name}"
            out.setdefault(f"{entry.module}.{entry.name}", target)
            if entry.kind == "data":
                out.setdefault(f"{entry.key[1]}.{entry.key[2]}", target)
            else:
                obj = getattr(importlib.import_module(module), entry.name)
                out.setdefault(f"{entry.origin}.{getattr(obj, '__qualname__', entry.name)}", target)
    return {k: v for k, v in out.items() if k != v}


_ALIASES: dict[str, str] = {}
_PAGES: list[str] = []


def _on_builder_inited(app) -> None:
    _PAGES[:] = [m for m, _ in app.config.tldr_api_pages]
    write_pages(Path(app.srcdir) / "api" / "generated", list(app.config.tldr_api_pages))
    _ALIASES.clear()
    _ALIASES.update(aliases(_PAGES))


def _resolve(py, target: str, module: str | None, reftype: str) -> tuple[str, str, str] | None:
    """``(docname, anchor, title)`` of the description a reference means, or None.

    Tried in turn: the name (or ``module.name``) as another name of a described object (re-exports,
    the defining module); a unique described object whose name ends with ``.target``; a tldr_jax name
    that exists but is in no ``__all__`` (:func:`internal_module`), and a module without a page: the page
    of the nearest enclosing module that has one (``tldr_jax.video.decode`` -> ``tldr_jax.video``,
    ``tldr_jax.configs.ArchConfig`` -> ``tldr_jax``). A name that does not exist stays unresolved.
    """
    names = [target] + ([f"{module}.{target}"] if module else [])
    for name in names:
        real = _ALIASES.get(name)
        if real in py.objects:
            entry = py.objects[real]
            return entry.docname, entry.node_id, real
    if reftype != "mod":
        found = {n for n in py.objects if n.endswith("." + target) and not py.objects[n].aliased}
        if len(found) == 1:
            (real,) = found
            return py.objects[real].docname, py.objects[real].node_id, real
        owner = internal_module(target, module)
        if owner is None:
            return None
        _UNEXPORTED.add(f"{owner}.{target.rpartition('.')[2]}")
        target = owner
    for page in sorted(_PAGES, key=len, reverse=True):
        if (target == page or target.startswith(page + ".")) and page in py.modules:
            entry = py.modules[page]
            return entry.docname, entry.node_id, page
    if _PAGES and _PAGES[0] in py.modules and internal_module(target, None):
        entry = py.modules[_PAGES[0]]  # a module outside every page's package: the top-level page
        return entry.docname, entry.node_id, _PAGES[0]
    return None


_ROOTS = ("tldr_jax", "checkpoints_convert")


def internal_module(target: str, module: str | None) -> str | None:
    """The tldr_jax module that defines a name no ``__all__`` lists, or None if there is no such name.

    Args:
        target: a dotted name (``tldr_jax.configs.ArchConfig``, ``Attention.chunking``) or a bare one
            (``chunking``: found when exactly one loaded tldr_jax module defines it).
        module: the module the reference was written in, if known.

    Returns:
        The defining module's name (for a module, the module itself).
    """
    for name in [target] + ([f"{module}.{target}"] if module else []):
        if not name.startswith(_ROOTS):
            continue
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if not _is_module(head):
                continue
            obj: object = importlib.import_module(head)
            for attr in parts[cut:]:
                obj = getattr(obj, attr, _MISSING)
            if obj is not _MISSING and not inspect.ismodule(obj):
                defined = getattr(obj, "__module__", None) or head
                return head if defined.startswith(_ROOTS) else None
            if obj is not _MISSING:
                return head
            break
    if "." in target:
        return None
    owners = {m for m, mod in list(sys.modules.items())
              if m.startswith(_ROOTS) and mod is not None and target in vars(mod)
              and getattr(vars(mod)[target], "__module__", m) == m}
    return owners.pop() if len(owners) == 1 else None


_MISSING = object()
_UNEXPORTED: set[str] = set()


def _on_build_finished(app, exception) -> None:
    """Say which referenced names are in no ``__all__`` (their links go to their package's page)."""
    if _UNEXPORTED and exception is None:
        from sphinx.util import logging

        logging.getLogger(__name__).info(
            "tldr_api: %d referenced names are in no __all__ (linked to their package's page): %s",
            len(_UNEXPORTED), ", ".join(sorted(_UNEXPORTED)))


def _on_missing_reference(app, env, node, contnode):
    """Resolve references to re-exported names, defining modules and private submodules (see
    :func:`_resolve`); anything else stays a broken reference (an error under ``-n -W``)."""
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    found = _resolve(env.get_domain("py"), node["reftarget"], node.get("py:module"), node["reftype"])
    if found is None:
        return None
    docname, anchor, title = found
    return make_refnode(app.builder, node["refdoc"], docname, anchor, contnode, title)


def setup(app) -> dict:
    """Register the ``tldr_api_pages`` setting, write the pages when the build starts, resolve aliases."""
    app.add_config_value("tldr_api_pages", [], "env")
    app.connect("builder-inited", _on_builder_inited)
    app.connect("missing-reference", _on_missing_reference)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "version": "1"}


if __name__ == "__main__":  # python docs/_ext/tldr_api.py MODULE: print the page (a debugging aid)
    print(page_rst(sys.argv[1], sys.argv[1], homes([sys.argv[1]]), [sys.argv[1]]))
