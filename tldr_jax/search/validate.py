"""Checking an index's own files before they are used: ``index.json``'s fields, the vector and token
arrays against the entries and the model, and the cached per-video results a build reads.

Every check raises one line that names the file and the fix; nothing here opens a file that a record
merely names (entry paths are shown as recorded, never opened), and no file is loaded with pickle.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: The name of a data directory (``data-`` and a random hex id): a plain name inside the index.
DATA_NAME = re.compile(r"data-[0-9a-f]{6,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Rows checked for finite values at once (bounds the memory of the check of a memory-mapped file).
FINITE_CHUNK = 1 << 16

__all__ = ["DATA_NAME", "check_arrays", "check_cached", "check_entry", "check_info"]


def _fail(where: Path, what: str) -> ValueError:
    return ValueError(f"{where}: {what}; the index is damaged. Rebuild it (tldr-jax index ... --overwrite).")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_entry(rec: Any, i: int, where: Path) -> None:
    """Entry ``i`` of ``index.json`` has the fields of an :class:`~tldr_jax.search.index.IndexEntry`
    (``sha256``: 64 hex digits, since it names a cache file)."""
    if not isinstance(rec, dict):
        raise _fail(where, f"entry {i} is not a record")
    for key in ("video", "path", "sha256"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise _fail(where, f"entry {i} has no {key!r} text")
    if not _SHA256.fullmatch(rec["sha256"]):
        sha = rec["sha256"][:80]
        raise _fail(where, f"entry {i} ({rec['video']!r}) has sha256 {sha!r}, not 64 hex digits")
    for key in ("size", "mtime_ns"):
        if not _is_int(rec.get(key)) or rec[key] < 0:
            raise _fail(where, f"entry {i} ({rec['video']!r}) has {key} {rec.get(key)!r}, not an int >= 0")
    if not _is_int(rec.get("frames", 0)):
        raise _fail(where, f"entry {i} ({rec['video']!r}) has frames {rec.get('frames')!r}, not an int")
    warns = rec.get("warnings", [])
    if not isinstance(warns, list) or not all(isinstance(w, str) for w in warns):
        raise _fail(where, f"entry {i} ({rec['video']!r}) has warnings that are not a list of texts")
    _check_window(rec, i, where)


def _check_window(rec: dict[str, Any], i: int, where: Path) -> None:
    """A window entry's ``frame_range`` ``[first, stop)`` (ints, ``0 <= first < stop``) and ``start <
    end`` seconds (finite numbers); a whole-file entry has none of the three."""
    keys = [k for k in ("start", "end", "frame_range") if rec.get(k) is not None]
    if not keys:
        return
    span, start, end = rec.get("frame_range"), rec.get("start"), rec.get("end")
    if len(keys) != 3:
        raise _fail(where, f"entry {i} ({rec['video']!r}) has {', '.join(keys)} but not all of start, end, "
                    "frame_range")
    if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)
            and 0 <= span[0] < span[1]):
        raise _fail(where, f"entry {i} ({rec['video']!r}) has frame_range {span!r}, not [first, stop)")
    numbers = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (start, end)
    )
    if not numbers or not 0 <= start < end:
        raise _fail(where, f"entry {i} ({rec['video']!r}) has start {start!r} and end {end!r}, not seconds "
                    "0 <= start < end")


def _check_settings(settings: Any, where: Path) -> None:
    if not isinstance(settings, dict):
        raise _fail(where, "'settings' is not a record")
    for key, kind in (("model", str), ("arch", str), ("keep_tokens", bool), ("options", dict)):
        if not isinstance(settings.get(key), kind):
            raise _fail(where, f"settings {key!r} is {settings.get(key)!r}, not a {kind.__name__}")
    if "r" not in settings:
        raise _fail(where, "settings has no 'r' (the merge schedule)")
    tokens = settings.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(_is_int(t) and t > 0 for t in tokens):
        raise _fail(where, f"settings 'tokens' is {tokens!r}, not a list of token counts")
    if not _is_int(settings.get("num_frames")) or settings["num_frames"] < 1:
        raise _fail(where, f"settings 'num_frames' is {settings.get('num_frames')!r}, not an int >= 1")


def check_info(info: dict[str, Any], where: Path) -> None:
    """The fields of a parsed ``index.json`` (kind and format already checked); ``ValueError`` naming
    the first bad one. ``data`` must be a plain ``data-<id>`` name: the data directory lies inside the
    index, never elsewhere."""
    _check_settings(info.get("settings"), where)
    data = info.get("data")
    if not isinstance(data, str) or not DATA_NAME.fullmatch(data):
        raise _fail(where, f"'data' is {str(data)[:80]!r}, not the name of a data directory inside the index")
    entries = info.get("entries")
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "'entries' is not a non-empty list")
    for i, rec in enumerate(entries):
        check_entry(rec, i, where)
    for key in ("count", "dim"):
        if not _is_int(info.get(key)) or info[key] < 1:
            raise _fail(where, f"{key!r} is {info.get(key)!r}, not an int >= 1")
    if info["count"] != len(entries):
        raise _fail(where, f"'count' is {info['count']} but there are {len(entries)} entries")
    if not isinstance(info.get("approximate", False), bool):
        raise _fail(where, f"'approximate' is {info.get('approximate')!r}, not true or false")
    shape = info.get("tokens_shape")
    if info["settings"]["keep_tokens"] and (
        not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(v) and v > 0 for v in shape)
    ):
        raise _fail(where, f"'tokens_shape' is {shape!r}, not [tokens, width]")
    sizes = info.get("bytes", {})
    if not isinstance(sizes, dict) or not all(_is_int(v) for v in sizes.values()):
        raise _fail(where, "'bytes' is not a record of byte counts")
    for key in ("model_dir", "root"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise _fail(where, f"{key!r} is {info[key]!r}, not a path")


def _check_finite(arr: np.ndarray, f: Path) -> None:
    for start in range(0, len(arr), FINITE_CHUNK):
        block = np.asarray(arr[start : start + FINITE_CHUNK])
        bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if bad.any():
            raise _fail(f, f"row {start + int(np.argmax(bad))} holds NaN or inf values")


def check_arrays(
    vectors: np.ndarray, tokens: np.ndarray | None, info: dict[str, Any], files: tuple[Path, Path]
) -> None:
    """``vectors (n, dim)`` float32 and finite, ``tokens (n, *tokens_shape)`` float32, with ``n`` the
    number of entries (one line naming the file, of ``files = (vectors file, tokens file)``, otherwise).
    Token values are checked for the rows a search re-ranks, when it reads them."""
    n, dim = len(info["entries"]), info["dim"]
    f = files[0]
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise _fail(f, f"holds {vectors.dtype} {vectors.shape}, not float32 (videos, width) vectors")
    if vectors.shape != (n, dim):
        raise _fail(f, f"has shape {vectors.shape}, but index.json lists {n} videos of width {dim}")
    _check_finite(vectors, f)
    if tokens is not None:
        want = (n, *info["tokens_shape"])
        if tokens.dtype != np.float32 or tokens.shape != want:
            raise _fail(files[1], f"holds {tokens.dtype} {tokens.shape}, not float32 {want}")


def _member_header(z: zipfile.ZipFile, name: str) -> tuple[np.dtype, tuple[int, ...]] | None:
    """dtype and shape of an ``.npy`` member of an ``.npz`` (its header only; no data, no pickle)."""
    if f"{name}.npy" not in z.namelist():
        return None
    with z.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return dtype, shape


def check_cached(path: Path, dim: int, tokens_shape: tuple[int, int] | None) -> str | None:
    """Why a cached result file (valid ``meta``) cannot be used, or None: ``embedding`` must be a finite
    float ``(dim,)`` vector and, with ``tokens_shape``, ``tokens`` a float ``tokens_shape`` array."""
    try:
        with zipfile.ZipFile(path) as z:
            head = _member_header(z, "embedding")
            if head is None or head[0].kind != "f" or head[1] != (dim,):
                got = "none" if head is None else f"{head[0]} {head[1]}"
                return f"its embedding is {got}, not float ({dim},)"
            if tokens_shape is not None:
                head = _member_header(z, "tokens")
                if head is None or head[0].kind != "f" or head[1] != tuple(tokens_shape):
                    got = "none" if head is None else f"{head[0]} {head[1]}"
                    return f"its tokens are {got}, not float {tuple(tokens_shape)}"
        with np.load(path, allow_pickle=False) as z:
            if not np.isfinite(z["embedding"]).all():
                return "its embedding holds NaN or inf values"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        return f"it cannot be read ({type(err).__name__}: {err})"
    return None
