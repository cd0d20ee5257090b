"""Writing an index's files (with the writer lock held): the cached per-video results checked and
stacked, a new generation (``data-<id>/``) when the data changed, ``index.json`` (atomically, last), and
the removal of what nothing needs any more (generations no reader holds, results no entry refers to).

:mod:`tldr_jax.search.index` describes the files; :mod:`tldr_jax.search.build` decides what to write.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from usearch.index import Index

from tldr_jax.files import atomic_directory, write_text_atomic
from tldr_jax.results import read_meta
from tldr_jax.search.index import (
    HNSW_EXPANSION_ADD,
    HNSW_FILE,
    INDEX_FILE,
    TOKENS_FILE,
    VECTORS_FILE,
    IndexEntry,
)
from tldr_jax.search.locks import READERS_LOCK, retire_generations
from tldr_jax.search.validate import check_cached
from tldr_jax.text.bert import normalize

#: ``index.json`` fields that say when, not what: an index that differs only in them is not rewritten.
VOLATILE_KEYS: tuple[str, ...] = ("created", "bytes")

__all__ = ["check_cache", "commit_index", "prune_cache", "stacked", "write_generation"]


def check_cache(
    cache: Path, entries: list[IndexEntry], key: str, dim: int, tokens_shape: tuple[int, int] | None,
    overwrite: bool,
) -> list[str]:
    """Check the cached results the build would reuse (made with run key ``key``); an unusable one
    (object dtype, wrong shape, NaN: :func:`~tldr_jax.search.validate.check_cached`) is removed with
    ``overwrite`` (then encoded again), else a ``ValueError`` names it. Returns the names removed."""
    bad = []
    for e in entries:
        f = cache / e.result_name
        meta = read_meta(f)
        if meta is not None and meta.get("run_key") == key:
            reason = check_cached(f, dim, tokens_shape)
            if reason is not None:
                bad.append((e, f, reason))
    if bad and not overwrite:
        e, f, reason = bad[0]
        raise ValueError(
            f"{len(bad)} cached result(s) cannot be used, e.g. {f} (the features of {e.video}): {reason}; "
            "pass overwrite=True (CLI: --overwrite) to encode them again, or delete the file."
        )
    for _, f, _ in bad:
        f.unlink(missing_ok=True)
    return [e.video for e, _, _ in bad]


def _finite(arr: np.ndarray, f: Path, video: str, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        f.unlink(missing_ok=True)
        raise ValueError(
            f"the cached {what} of {video} ({f}) hold NaN or inf values; the file was removed and the index "
            "left as it was: run the same build again to encode it anew."
        )
    return arr


def stacked(
    cache: Path, entries: list[IndexEntry], keep_tokens: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(n, E)`` float32 unit vectors and ``(n, N', D)`` float32 tokens (or None) from the cache (never
    with pickle; a non-finite result is refused, naming the video)."""
    emb, toks = [], []
    for e in entries:
        f = cache / e.result_name
        with np.load(f, allow_pickle=False) as z:
            emb.append(_finite(z["embedding"], f, e.video, "features"))
            if keep_tokens:
                toks.append(_finite(z["tokens"], f, e.video, "tokens"))
    # The same normalisation as encode_video (official F.normalize of vision_proj), in float32.
    vectors = np.asarray(normalize(jnp.asarray(np.stack(emb), jnp.float32)), np.float32)
    return vectors, (np.stack(toks).astype(np.float32) if keep_tokens else None)


def write_generation(
    out: Path, vectors: np.ndarray, tokens: np.ndarray | None, approximate: bool
) -> tuple[str, dict[str, int]]:
    """``data-<id>/`` (a temporary directory, renamed), with its ``readers.lock``: its name and the bytes
    of each file."""
    data_name = f"data-{uuid.uuid4().hex[:12]}"
    nbytes = {"vectors": int(vectors.nbytes), "tokens": 0, "hnsw": 0}
    with atomic_directory(out / data_name) as tmp:
        (tmp / READERS_LOCK).touch()
        np.save(tmp / VECTORS_FILE, vectors)
        if tokens is not None:
            np.save(tmp / TOKENS_FILE, tokens)
            nbytes["tokens"] = int(tokens.nbytes)
        if approximate:
            ann = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", expansion_add=HNSW_EXPANSION_ADD)
            ann.add(np.arange(len(vectors), dtype=np.uint64), vectors)
            ann.save(str(tmp / HNSW_FILE))
            nbytes["hnsw"] = (tmp / HNSW_FILE).stat().st_size
    return data_name, nbytes


def _stable(info: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if info is None else {k: v for k, v in info.items() if k not in VOLATILE_KEYS}


def commit_index(out: Path, info: dict[str, Any], previous: dict[str, Any] | None) -> bool:
    """Write ``index.json`` (atomically) unless it would say what ``previous`` says, then remove the
    generations other than ``info["data"]`` that no reader holds. Whether ``index.json`` was written."""
    changed = _stable(info) != _stable(previous)
    if changed:
        write_text_atomic(out / INDEX_FILE, json.dumps(info, indent=1) + "\n")
    retire_generations(out, keep=info["data"])
    return changed


def prune_cache(cache: Path, keep: set[str]) -> None:
    """Remove cached results no entry refers to (files removed from or changed in the collection); call
    with the writer lock held exclusively (no other run is using the cache)."""
    for f in cache.glob("*.npz"):
        if f.name not in keep:
            f.unlink(missing_ok=True)
