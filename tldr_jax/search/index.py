"""The video index on disk: its format, its records, and opening it (:func:`load_index`).

An index directory holds

* ``index.json``: the settings the features depend on (model fingerprint, schedule, frames, options), one
  entry per video (name as indexed, absolute path, sha256 of the content, size, frames sampled, tokens
  kept; with ``--window``, one entry per window of each video, with its ``start`` / ``end`` seconds and
  ``frame_range``), the sizes on disk and the name of the data directory. It is written last
  (atomically): an index is whatever ``index.json`` points to, so an interrupted build leaves the
  previous index intact;
* ``data-<id>/`` (a *generation*): ``vectors.npy`` ``(n, E)`` float32 unit-norm ``vision_proj`` features
  (the ITC side of the official evaluation), optionally ``tokens.npy`` ``(n, N', D)`` float32 merged video
  tokens (for ITM re-ranking) and ``hnsw.usearch`` (the approximate index), and ``readers.lock``. Written
  to a temporary directory and renamed; a re-index that changes nothing writes no new generation;
* ``cache/``: the per-file results of :func:`tldr_jax.batch.run_directory` (``<content hash>.npz``,
  ``manifest.jsonl``, ``errors.jsonl``, ``run.json``). Re-indexing reuses every result whose file
  content, model and settings are unchanged, so adding or changing files computes only those files.

Concurrent use (:mod:`tldr_jax.search.locks`): one writer at a time (``.writer.lock``); a reader
(:class:`VideoIndex`) holds a shared lock on the generation it reads, and a writer removes an old
generation only once no reader holds it, so a search that started on one generation finishes on it,
or (when its generation went away before it was opened) moves to the new one; it never fails because of
a writer. A long-running reader checks :meth:`VideoIndex.changed` and switches with
:meth:`VideoIndex.reload`. Everything read is checked first (:mod:`tldr_jax.search.validate`).

Search is exact inner product by default (``usearch``'s brute-force kernel over ``vectors.npy``;
memory-mapped); ``approximate=True`` adds an HNSW graph (``usearch.Index``, metric ``ip``) for large
collections. :mod:`tldr_jax.search.build` writes indexes, :mod:`tldr_jax.search.query` searches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from usearch.index import Index

from tldr_jax.results import hash_tree, params_fingerprint
from tldr_jax.retrieval.checkpoint import load_retrieval_model
from tldr_jax.retrieval.model import RetrievalModel
from tldr_jax.search.entries import IndexEntry
from tldr_jax.search.locks import ReaderLock
from tldr_jax.search.validate import check_arrays, check_info
from tldr_jax.video.windows import Segment

if TYPE_CHECKING:  # build.py imports this module; the report type is only annotated here
    from tldr_jax.search.build import BuildReport

PathLike = str | os.PathLike

INDEX_FILE = "index.json"
CACHE_DIR = "cache"
VECTORS_FILE = "vectors.npy"
TOKENS_FILE = "tokens.npy"
HNSW_FILE = "hnsw.usearch"
INDEX_KIND = "tldr_jax.video_index"
#: ``index.json``'s format: 1 (one entry per file), 2 (entries may be windows: ``start``, ``end``,
#: ``frame_range``). A build writes 1 unless it indexes windows, so an index without windows stays
#: readable by versions that read only 1; this version reads both (:data:`READ_FORMATS`).
FORMAT_VERSION = 1
WINDOWS_FORMAT = 2
READ_FORMATS: tuple[int, ...] = (FORMAT_VERSION, WINDOWS_FORMAT)
#: HNSW candidate list sizes (usearch's ``expansion_add`` / ``expansion_search``; its defaults, 128 / 64,
#: find 43 % of the true top 10 among 10k random 512-d unit vectors, 256 at search time 78 %).
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 256
#: Settings an index's features depend on: an index built with other values is refused.
IDENTITY_KEYS: tuple[str, ...] = (
    "model", "arch", "r", "tokens", "num_frames", "trim_seconds", "window", "stride", "keep_tokens",
    "options",
)
#: Times a reader re-reads ``index.json`` when the generation it named was replaced before it was opened.
OPEN_ATTEMPTS = 20

__all__ = [
    "IndexEntry",
    "VideoIndex",
    "index_stamp",
    "check_identity",
    "load_index",
    "model_fingerprint",
    "read_info",
    "resolve_model",
]


def index_stamp(path: Path) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, size)`` of an index's ``index.json`` (None when absent): it changes whenever a
    build writes a new generation (``index.json`` is replaced, never edited in place)."""
    try:
        st = (path / INDEX_FILE).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclasses.dataclass
class _Generation:
    """One opened generation: its ``index.json``, its arrays (memory-mapped) and the reader lock."""

    info: dict[str, Any]
    vectors: np.ndarray
    tokens: np.ndarray | None
    hnsw: Any
    lock: ReaderLock
    stamp: tuple[int, int, int] | None


def _load_array(f: Path) -> np.ndarray:
    """A memory-mapped ``.npy`` (never with pickle); ``FileNotFoundError`` passes (a removed generation)."""
    try:
        return np.load(f, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(
            f"{f}: not a readable float32 array ({err}); the index is damaged. Rebuild it "
            "(tldr-jax index ... --overwrite)."
        ) from None


def _open_data(p: Path, info: dict[str, Any], stamp: tuple[int, int, int] | None) -> _Generation:
    """Lock and open the generation ``info`` names (``FileNotFoundError`` when it is gone)."""
    data = p / info["data"]
    lock = ReaderLock(data)
    try:
        vectors = _load_array(data / VECTORS_FILE)
        tokens = _load_array(data / TOKENS_FILE) if info["settings"]["keep_tokens"] else None
        check_arrays(vectors, tokens, info, (data / VECTORS_FILE, data / TOKENS_FILE))
        hnsw = None
        if info.get("approximate"):
            if not (data / HNSW_FILE).is_file():
                raise FileNotFoundError(data / HNSW_FILE)
            hnsw = Index.restore(str(data / HNSW_FILE), view=True)  # memory-mapped: survives removal
            hnsw.expansion_search = HNSW_EXPANSION_SEARCH
    except BaseException:
        lock.close()
        raise
    return _Generation(info, vectors, tokens, hnsw, lock, stamp)


def open_generation(path: Path) -> _Generation:
    """The current generation of the index at ``path``, locked for reading.

    When a writer replaced the generation between reading ``index.json`` and opening its files, the new
    ``index.json`` is read and its generation opened (up to :data:`OPEN_ATTEMPTS` times); a data file
    missing while ``index.json`` stayed the same is damage (``ValueError`` naming it).
    """
    for _ in range(OPEN_ATTEMPTS):
        stamp = index_stamp(path)
        info = read_info(path)
        try:
            return _open_data(path, info, stamp)
        except FileNotFoundError as err:
            if index_stamp(path) == stamp:
                missing = err.filename or str(err)
                raise ValueError(
                    f"{missing} is missing; the index is damaged. Rebuild it "
                    "(tldr-jax index ... --overwrite)."
                ) from None
    raise ValueError(
        f"the index {path} was replaced {OPEN_ATTEMPTS} times while it was being opened; try again."
    )


class VideoIndex:
    """A loaded index (:func:`load_index`, :func:`~tldr_jax.search.build.build_index`); search it with
    :func:`tldr_jax.search.search`.

    It reads one generation of the index (:attr:`generation`) and holds a reader lock on it until
    :meth:`close` (or garbage collection), so re-indexing meanwhile never removes what it reads. A
    long-running reader (a server) asks :meth:`changed` and switches with :meth:`reload`.

    Attributes:
      path: the index directory. info: the parsed ``index.json``. entries: one :class:`IndexEntry` per row.
      vectors: ``(n, E)`` float32 unit-norm video features (memory-mapped).
      tokens: ``(n, N', D)`` float32 merged video tokens (memory-mapped), or None (built without
        ``keep_tokens``).
      model: the :class:`RetrievalModel` the index was built with (checked by fingerprint), or None when
        loaded with ``model=False``.
      build: the :class:`~tldr_jax.search.build.BuildReport` when returned by ``build_index``.
    """

    def __init__(self, path: Path, generation: _Generation, model: RetrievalModel | None,
                 fingerprint: str | None = None):
        self.path = path
        self.info = generation.info
        self.entries = [IndexEntry.from_json(e) for e in self.info["entries"]]
        ids: dict[str, int] = {}
        #: ``(n,)`` int: the video (file) of each row, numbered in order of first appearance.
        self.video_ids = np.asarray([ids.setdefault(e.path, len(ids)) for e in self.entries], np.int64)
        #: Whether rows are windows of videos (``build_index(window=...)``); else one row per file.
        self.windowed = any(e.frame_range is not None for e in self.entries)
        self.vectors: np.ndarray = generation.vectors
        self.tokens: np.ndarray | None = generation.tokens
        self.model = model
        self.build: BuildReport | None = None  # set by build_index
        self._hnsw = generation.hnsw
        self._stamp = generation.stamp
        self._fingerprint = fingerprint
        self._release = weakref.finalize(self, generation.lock.close)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def video_count(self) -> int:
        """The number of videos (files) indexed; ``len(index)`` counts rows, one per window for an index
        of windows."""
        return int(self.video_ids.max()) + 1 if len(self.video_ids) else 0

    def __repr__(self) -> str:
        s = self.info["settings"]
        windows = f" in {len(self)} windows" if self.windowed else ""
        return (
            f"VideoIndex({self.path}, {self.video_count} video{'' if self.video_count == 1 else 's'}"
            f"{windows}, {s['arch']}, r={s['r']} -> "
            f"{s['tokens'][-1]} tokens, "
            f"{'tokens kept' if self.tokens is not None else 'no tokens'}, "
            f"{'approximate' if self.approximate else 'exact'} search)"
        )

    def __enter__(self) -> VideoIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the reader lock (the arrays stay readable here; a later build may remove the files)."""
        self._release()

    @property
    def generation(self) -> str:
        """The data directory this object reads (``data-<id>``; a new one after each changing build)."""
        return str(self.info["data"])

    def changed(self) -> bool:
        """Whether the index on disk is no longer the generation read here (a cheap ``stat``)."""
        return index_stamp(self.path) != self._stamp

    def reload(self) -> VideoIndex:
        """The current generation of the index, opened with this object's model (not loaded again); this
        object stays usable until closed. ``if index.changed(): index = index.reload()``."""
        return _open_index(self.path, self.model if self.model is not None else False, self._fingerprint)

    def video_path(self, row: int) -> Path:
        """The file of row ``row`` (e.g. to play a hit): its recorded path, when it lies inside the
        collection root the index records; ``ValueError`` otherwise (such a path is shown, never opened)."""
        entry = self.entries[row]
        root = self.info.get("root")
        path = os.path.normpath(entry.path)
        inside = root is not None and os.path.isabs(path) and path.startswith(
            os.path.normpath(root).rstrip(os.sep) + os.sep
        )
        if not inside:
            raise ValueError(
                f"entry {row} of {self.path / INDEX_FILE} records the path {entry.path!r}, which is not "
                f"inside the collection root {root!r}; it is not opened. Rebuild the index."
            )
        return Path(path)

    def clip(self, row: int) -> np.ndarray:
        """The model input of row ``row`` as the build read it: ``(T, H, W, 3)`` float32 normalised frames.

        The file (:meth:`video_path`), or for a window entry that window of it (a
        :class:`~tldr_jax.video.Segment`), goes through :func:`tldr_jax.video.load_clip` with the index's
        preprocessing (:func:`~tldr_jax.retrieval.features.clip_preprocessing` with its frame count and
        trimming), so it is the clip the stored vector was computed from.

        Raises:
          IndexError: no such row. ValueError: no model (opened with ``model=False``), a path outside the
            collection root, or a clip of the wrong shape. VideoReadError: the file is missing or unreadable.
        """
        from tldr_jax.retrieval.features import clip_preprocessing
        from tldr_jax.video.clip import load_clip

        if not 0 <= row < len(self):
            raise IndexError(f"no video {row}: the index holds rows 0 to {len(self) - 1}.")
        if self.model is None:
            raise ValueError(
                f"the index {self.path} was opened without a model (model=False); its clips are read with "
                "the model's preprocessing: load_index(path) or load_index(path, model)."
            )
        s = self.settings
        prep = clip_preprocessing(self.model, int(s["num_frames"]), s.get("trim_seconds"))
        # A truncated file's warning is recorded in its entry at build time; not repeated here.
        path, window = self.video_path(row), self.entries[row].window
        source = path if window is None else Segment(path, window)
        return load_clip(source, prep, on_warning=lambda message: None)

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
        """The ``usearch.Index`` (HNSW, metric ``ip``, memory-mapped); None for exact indexes."""
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
    if info.get("format") not in READ_FORMATS:
        raise ValueError(
            f"{f} has format {info.get('format')!r}; this tldr_jax reads "
            f"{' and '.join(map(str, READ_FORMATS))}. Rebuild the index."
        )
    check_info(info, f)
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
      :class:`VideoIndex`, holding a reader lock on the generation it read until closed.

    Raises:
      FileNotFoundError: no index there. ValueError: a damaged index (one line naming the file), or one
        built with another model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be the index directory (a str or path); got {type(path).__name__}.")
    return _open_index(Path(path).expanduser().absolute(), model, None)


def _open_index(p: Path, model: Any, fingerprint: str | None) -> VideoIndex:
    """Open the current generation, then the model, and check that they belong together."""
    gen = open_generation(p)
    try:
        if model is False:
            return VideoIndex(p, gen, None)
        info = gen.info
        if model is None:
            model = info.get("model_dir")
            if model is None:
                raise ValueError(
                    f"the index {p} was built from a model object, not a directory; pass model=... "
                    "(CLI: --model)."
                )
        loaded, _ = resolve_model(model)
        fingerprint = fingerprint or model_fingerprint(loaded)
        check_identity(
            info["settings"], {**info["settings"], "model": fingerprint}, p,
            "search it with the model it was built with, or rebuild it with this model (--overwrite).",
        )
        if info["dim"] != loaded.text_config.embed_dim:
            raise ValueError(
                f"{p / info['data'] / VECTORS_FILE}: vectors of width {info['dim']}, but the model's "
                f"features have {loaded.text_config.embed_dim}; the index is damaged. Rebuild it "
                "(--overwrite)."
            )
    except BaseException:
        gen.lock.close()
        raise
    return VideoIndex(p, gen, loaded, fingerprint)
