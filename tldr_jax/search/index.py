"""The video index on disk: its format, its records, and opening it (:func:`load_index`).

An index directory holds

* ``index.json``: the settings the features depend on (model fingerprint, schedule, frames, options), one
  entry per video (name as indexed, absolute path, sha256 of the content, size, frames sampled, tokens
  kept), the sizes on disk and the name of the data directory. It is written last (atomically): an index
  is whatever ``index.json`` points to, so an interrupted build leaves the previous index intact;
* ``data-<id>/``: ``vectors.npy`` ``(n, E)`` float32 unit-norm ``vision_proj`` features (the ITC side of
  the official evaluation), optionally ``tokens.npy`` ``(n, N', D)`` float32 merged video tokens (for ITM
  re-ranking) and ``hnsw.usearch`` (the approximate index). Written to a temporary directory and renamed;
* ``cache/``: the per-file results of :func:`tldr_jax.batch.run_directory` (``<content hash>.npz``,
  ``manifest.jsonl``, ``errors.jsonl``, ``run.json``). Re-indexing reuses every result whose file
  content, model and settings are unchanged, so adding or changing files computes only those files.

Search is exact inner product by default (``usearch``'s brute-force kernel over ``vectors.npy``;
memory-mapped); ``approximate=True`` adds an HNSW graph (``usearch.Index``, metric ``ip``) for large
collections. :mod:`tldr_jax.search.build` writes indexes, :mod:`tldr_jax.search.query` searches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from usearch.index import Index

from tldr_jax.batch import hash_tree, params_fingerprint
from tldr_jax.retrieval.checkpoint import load_retrieval_model
from tldr_jax.retrieval.model import RetrievalModel

if TYPE_CHECKING:  # build.py imports this module; the report type is only annotated here
    from tldr_jax.search.build import BuildReport

PathLike = str | os.PathLike

INDEX_FILE = "index.json"
CACHE_DIR = "cache"
VECTORS_FILE = "vectors.npy"
TOKENS_FILE = "tokens.npy"
HNSW_FILE = "hnsw.usearch"
INDEX_KIND = "tldr_jax.video_index"
FORMAT_VERSION = 1
#: HNSW candidate list sizes (usearch's ``expansion_add`` / ``expansion_search``; its defaults, 128 / 64,
#: find 43 % of the true top 10 among 10k random 512-d unit vectors, 256 at search time 78 %).
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 256
#: Settings an index's features depend on: an index built with other values is refused.
IDENTITY_KEYS: tuple[str, ...] = (
    "model", "arch", "r", "tokens", "num_frames", "trim_seconds", "keep_tokens", "options",
)

__all__ = [
    "IndexEntry",
    "VideoIndex",
    "check_identity",
    "load_index",
    "model_fingerprint",
    "read_info",
    "resolve_model",
]


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One indexed video.

    Attributes:
      video: the name as indexed (path relative to the indexed folder, ``/``-separated).
      path: the absolute path when indexed.
      sha256: hash of the file's content (the key of its features in ``cache/``).
      size, mtime_ns: file size and modification time when hashed (an unchanged pair skips re-hashing).
      frames: frames sampled from the file.
      warnings: problems of a file that was still used (e.g. a truncated video).
    """

    video: str
    path: str
    sha256: str
    size: int
    mtime_ns: int
    frames: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def result_name(self) -> str:
        """The file name of this video's features in ``cache/`` (content-keyed)."""
        return f"{self.sha256[:32]}.npz"

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (``warnings`` only when there are some)."""
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        if not out["warnings"]:
            del out["warnings"]
        return out

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> IndexEntry:
        """The inverse of :meth:`to_json`."""
        return cls(
            video=str(rec["video"]), path=str(rec["path"]), sha256=str(rec["sha256"]), size=int(rec["size"]),
            mtime_ns=int(rec["mtime_ns"]), frames=int(rec.get("frames", 0)),
            warnings=tuple(rec.get("warnings", ())),
        )


class VideoIndex:
    """A loaded index (:func:`load_index`, :func:`~tldr_jax.search.build.build_index`); search it with
    :func:`tldr_jax.search.search`.

    Attributes:
      path: the index directory. info: the parsed ``index.json``. entries: one :class:`IndexEntry` per row.
      vectors: ``(n, E)`` float32 unit-norm video features (memory-mapped).
      tokens: ``(n, N', D)`` float32 merged video tokens (memory-mapped), or None (built without
        ``keep_tokens``).
      model: the :class:`RetrievalModel` the index was built with (checked by fingerprint), or None when
        loaded with ``model=False``.
      build: the :class:`~tldr_jax.search.build.BuildReport` when returned by ``build_index``.
    """

    def __init__(self, path: Path, info: dict[str, Any], model: RetrievalModel | None):
        self.path = path
        self.info = info
        self.entries = [IndexEntry.from_json(e) for e in info["entries"]]
        data = path / info["data"]
        self.vectors: np.ndarray = np.load(data / VECTORS_FILE, mmap_mode="r")
        self.tokens: np.ndarray | None = (
            np.load(data / TOKENS_FILE, mmap_mode="r") if info["settings"]["keep_tokens"] else None
        )
        self.model = model
        self.build: BuildReport | None = None  # set by build_index
        self._hnsw: Any = None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        s = self.info["settings"]
        return (
            f"VideoIndex({self.path}, {len(self)} videos, {s['arch']}, r={s['r']} -> "
            f"{s['tokens'][-1]} tokens, "
            f"{'tokens kept' if self.tokens is not None else 'no tokens'}, "
            f"{'approximate' if self.approximate else 'exact'} search)"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What the features depend on (model fingerprint, arch, r, token counts, frames, options)."""
        return self.info["settings"]

    @property
    def approximate(self) -> bool:
        """Whether searches use the HNSW graph (else exact inner product over every vector)."""
        return bool(self.info.get("approximate"))

    @property
    def hnsw(self) -> Any:
        """The ``usearch.Index`` (HNSW, metric ``ip``), memory-mapped on first use; None for exact indexes."""
        if self.approximate and self._hnsw is None:
            self._hnsw = Index.restore(str(self.path / self.info["data"] / HNSW_FILE), view=True)
            self._hnsw.expansion_search = HNSW_EXPANSION_SEARCH
        return self._hnsw

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: ``vectors``, ``tokens``, ``hnsw``, ``cache`` and ``tokens_unmerged`` (what the
        tokens would take without merging)."""
        return dict(self.info["bytes"])


def model_fingerprint(model: RetrievalModel) -> str:
    """A hash of both towers' weights, the text config and the vocabulary (identifies the model)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(params_fingerprint(model.vision).encode())
    h.update(json.dumps(dataclasses.asdict(model.text_config), sort_keys=True, default=str).encode())
    h.update(model.vocab.digest.encode())
    hash_tree(h, model.text)
    return h.hexdigest()


def check_identity(old: dict[str, Any], new: dict[str, Any], where: Path, fix: str) -> None:
    """Refuse an index whose identity settings (:data:`IDENTITY_KEYS`) differ from ``new`` (a
    ``ValueError`` naming each difference, then ``fix``)."""
    diff = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if diff:
        detail = "; ".join(f"{k}: {_short(old.get(k))} in the index, {_short(new.get(k))} now" for k in diff)
        raise ValueError(f"the index {where} was built with another model or settings ({detail}); {fix}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:16] + "..."


def read_info(path: PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of an index directory (``FileNotFoundError`` / ``ValueError`` when it is
    missing or not an index)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"no index at {p}; build one with `tldr-jax index VIDEOS --model DIR --out {p}`."
        )
    f = p / INDEX_FILE
    if not f.is_file():
        hint = (" (an interrupted build: rerun the same `tldr-jax index` command to finish it)"
                if (p / CACHE_DIR).is_dir() else "")
        raise FileNotFoundError(f"{p} holds no {INDEX_FILE}: it is not a video index{hint}.")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{f} is not readable JSON ({err}); rebuild the index.") from None
    if not isinstance(info, dict) or info.get("kind") != INDEX_KIND:
        raise ValueError(f"{f} is not a tldr_jax video index; rebuild it with `tldr-jax index`.")
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{f} has format {info.get('format')!r}; this tldr_jax reads {FORMAT_VERSION}. Rebuild the index."
        )
    if not (p / info["data"] / VECTORS_FILE).is_file():
        raise ValueError(f"{p / info['data']} is missing; the index is damaged. Rebuild it.")
    return info


def resolve_model(model: Any) -> tuple[RetrievalModel, str | None]:
    """A RetrievalModel and its directory (None for an object); ``model`` is either, or a directory path."""
    if isinstance(model, RetrievalModel):
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a RetrievalModel or the path of a retrieval model directory; got "
            f"{type(model).__name__}."
        )
    path = Path(model).expanduser().absolute()
    return load_retrieval_model(path, what=f"model {path}"), str(path)


def load_index(path: PathLike, model: Any = None) -> VideoIndex:
    """Open an index directory for :func:`~tldr_jax.search.query.search`.

    Args:
      path: the index directory (``build_index``'s ``out``).
      model: the :class:`RetrievalModel` or model directory to encode queries with; default: the directory
        the index was built from. It must be the model the index was built with (checked by fingerprint:
        ``ValueError`` otherwise). ``False``: open without a model (vectors and metadata only).

    Returns:
      :class:`VideoIndex`.
    """
    p = Path(path).expanduser().absolute()
    info = read_info(p)
    if model is False:
        return VideoIndex(p, info, None)
    if model is None:
        model = info.get("model_dir")
        if model is None:
            raise ValueError(
                f"the index {p} was built from a model object, not a directory; pass model=... "
                "(CLI: --model)."
            )
    loaded, _ = resolve_model(model)
    check_identity(
        info["settings"], {**info["settings"], "model": model_fingerprint(loaded)}, p,
        "search it with the model it was built with, or rebuild it with this model (--overwrite).",
    )
    return VideoIndex(p, info, loaded)
