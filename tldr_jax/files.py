"""Writing files atomically (a path holds either the complete new file or what it held before), content
hashes, and settings as JSON."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike

__all__ = [
    "atomic_directory", "atomic_output", "check_output", "jsonable", "sha256_file", "write_text_atomic",
]


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (same suffix) to write to: renamed to ``path`` when the block
    succeeds, removed when it fails, so ``path`` is either complete or untouched."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{p.suffix}")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def cached_bytes(path: PathLike, make: Callable[[], bytes], *, cache: bool = True) -> bytes:
    """The bytes stored at ``path``, else ``make()``'s, then stored there atomically (a derived file:
    a thumbnail, a rendered figure). Storing is best effort: where ``path`` cannot be written (a
    read-only folder) the bytes are returned all the same. ``cache=False``: always ``make()``, store
    nothing."""
    path = Path(path)
    if cache:
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = make()
    if cache:
        try:
            path.parent.mkdir(exist_ok=True)
            with atomic_output(path) as tmp:
                tmp.write_bytes(data)
        except OSError:
            pass  # not writable: served without caching
    return data


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is replaced only once ``tmp`` is in place."""
    if not path.exists():
        tmp.rename(path)
        return
    backup = _sibling(path, "old")
    path.rename(backup)
    try:
        tmp.rename(path)
    except BaseException:
        backup.rename(path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A new, empty temporary sibling directory of ``path`` to fill.

    When the block succeeds it is moved to ``path`` (an existing ``path`` is replaced only once the new
    one is in place); when it fails it is removed and ``path`` is untouched.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False (before anything is written).
    """
    p = Path(path).expanduser().absolute()
    if p.exists() and not overwrite:
        raise FileExistsError(
            f"{p} already exists; refusing to overwrite it. Pass overwrite=True (CLI: --overwrite) "
            "or choose another path."
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(p, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _swap_into_place(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(path: PathLike, what: str, *, directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written as a file (or a ``directory``); returns it.

    The folder that will hold it must exist and be writable (an atomic write puts a temporary sibling
    there); an existing directory output must be writable itself. ``what`` names the path in messages
    (``"--json"``, ``"the index"``).

    Raises:
      IsADirectoryError / NotADirectoryError / FileNotFoundError / PermissionError: one line naming
        ``what``, the path and the fix.
    """
    p = Path(path).expanduser()
    shown = f"{what} {str(path)!r}"
    if p.is_dir() and not directory:
        raise IsADirectoryError(f"{shown} is a directory; give a file name.")
    if p.exists() and directory and not p.is_dir():
        raise NotADirectoryError(f"{shown} is a file; give a directory (a new or an existing one).")
    parent = p.absolute().parent
    found = next((q for q in (parent, *parent.parents) if q.exists()), None)
    if found is not None and not found.is_dir():
        raise NotADirectoryError(f"{shown}: {found} is a file, not a folder.")
    if found != parent:
        raise FileNotFoundError(
            f"{shown}: the folder {parent} does not exist; create it, or choose another path."
        )
    target = p if p.is_dir() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{shown}: {target} is not writable (permissions or a read-only file system); choose a "
            "writable path."
        )
    return p


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """Settings as JSON: dtypes by name, tuples as lists, anything else by ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    try:
        return np.dtype(value).name
    except TypeError:
        return repr(value)
