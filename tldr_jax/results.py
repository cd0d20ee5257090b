"""The files of a :func:`tldr_jax.batch.run_directory` run and the identity of its settings.

Result ``.npz`` files written atomically and their ``meta`` record, the JSON-lines manifest and error log
(torn last lines ignored), and the run key: a hash of everything a result depends on (weights, clip
preprocessing, schedule, options), which decides what a rerun may reuse. The video index
(:mod:`tldr_jax.search`) keys its cache with the same functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tldr_jax.api import Params
from tldr_jax.files import atomic_output, jsonable
from tldr_jax.video import Preprocessing

PathLike = str | os.PathLike

MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
RUN_FILE = "run.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Output files.
# --------------------------------------------------------------------------------------------------


def output_path(out_dir: PathLike, path: PathLike) -> Path:
    """``out_dir/<input file name>.npz`` (the full name, so ``a.mp4`` and ``a.npy`` do not collide)."""
    return Path(out_dir) / f"{Path(path).name}.npz"


def save_npz_atomic(path: PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write an ``.npz`` so that ``path`` either does not exist or is complete (temp file + rename)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def read_meta(path: PathLike) -> dict[str, Any] | None:
    """The ``meta`` record of a result file, or None when it is missing, truncated or not ours."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "pooled" not in data.files or "meta" not in data.files:
                return None
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def is_complete(path: PathLike, run_key: str | None = None) -> bool:
    """Whether ``path`` is a readable result file (made with ``run_key`` when given)."""
    meta = read_meta(path)
    return meta is not None and (run_key is None or meta.get("run_key") == run_key)


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (after a torn last line, on a line of its own)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (interrupted write) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# --------------------------------------------------------------------------------------------------
# Run identity.
# --------------------------------------------------------------------------------------------------


#: ``id(params) -> (weak reference, fingerprint)``: a Params pytree is immutable, so repeated calls with
#: the same object (a Ray actor calling run_directory once per batch) hash its weights once.
_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def params_fingerprint(params: Params) -> str:
    """A hash of the weights' names, shapes and bytes (identifies the model a result came from)."""
    cached = _FINGERPRINTS.get(id(params))
    if cached is not None and cached[0]() is params:
        return cached[1]
    digest = _params_fingerprint(params)
    for key in [k for k, (ref, _) in _FINGERPRINTS.items() if ref() is None]:
        del _FINGERPRINTS[key]
    try:
        _FINGERPRINTS[id(params)] = (weakref.ref(params), digest)
    except TypeError:  # not weak-referenceable: not cached
        pass
    return digest


def _params_fingerprint(params: Params) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(params.config.to_dict(), sort_keys=True).encode())
    hash_tree(h, params.tree)
    return h.hexdigest()


def hash_tree(h: Any, tree: Any) -> None:
    """Feed every leaf of ``tree`` (its path, shape, dtype and bytes, in path order) to the hash ``h``."""
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: str(kv[0])):
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())


def run_settings(
    params: Params, spec: Preprocessing, r: Any, save_tokens: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Everything a result depends on, as a JSON-friendly dict (stored in ``run.json``)."""
    return {
        "format": FORMAT_VERSION,
        "params": params_fingerprint(params),
        "arch": params.config.name,
        "clip": clip_settings(spec),
        "r": jsonable(r),
        "save_tokens": bool(save_tokens),
        "options": jsonable(dict(sorted(options.items()))),
    }


def clip_settings(spec: Preprocessing) -> dict[str, Any]:
    """The preprocessing as JSON; ``trim_seconds`` only when set (so that results made before it
    existed keep their run key)."""
    clip = jsonable(dataclasses.asdict(spec))
    if clip.get("trim_seconds") is None:
        clip.pop("trim_seconds", None)
    return clip


def run_key(settings: dict[str, Any]) -> str:
    """Short hash of :func:`run_settings`."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def check_run_file(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output directory whose ``run.json`` records other settings (reads only)."""
    path = out_dir / RUN_FILE
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{out_dir} holds results made with other settings (differing: {', '.join(diff)}); "
                "use a new output directory, or overwrite=True to recompute everything."
            )


def reset_errors(out_dir: Path) -> None:
    """Start ``errors.jsonl`` afresh: every input without a result is retried and logged again if it
    fails, so the file lists the failures of the latest run, once each (reruns used to append
    duplicates)."""
    (out_dir / ERRORS).unlink(missing_ok=True)
