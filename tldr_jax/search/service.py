"""What ``tldr-jax serve`` answers, without the web framework: a long-lived, reloading search service.

:class:`SearchService` opens an index with its model once, warms up the query path (one ITC query and one
re-ranking, so the first user request is not the one that compiles), and answers searches, "more like
this" and metadata as JSON-ready dicts. Before each request it checks whether the index on disk changed
(:meth:`VideoIndex.changed`, a ``stat``) and switches to the new generation
(:meth:`VideoIndex.reload`; a request already running keeps the generation it started on), so a
re-index is picked up without a restart and without a failed query. Bad input raises ``ValueError`` /
``TypeError`` (one line), an unknown row :class:`NotFound`. :mod:`tldr_jax.search.server` serves it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.search.index import VideoIndex, load_index
from tldr_jax.search.query import SearchHit, candidates, check_counts, search
from tldr_jax.version import __version__
from tldr_jax.video.decode import VIDEO_EXTENSIONS

__all__ = ["Limits", "NotFound", "SearchService", "WarmingUp"]


class NotFound(LookupError):
    """No such video (row), or no file to serve for it."""


class WarmingUp(RuntimeError):
    """The model is still loading or compiling (or failed to: the message says)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for.

    Attributes:
      max_query_chars: characters of a query (longer: refused, not truncated).
      max_k: results per request. max_rerank: candidates re-ranked by the matching head per request.
    """

    max_query_chars: int = 1000
    max_k: int = 100
    max_rerank: int = 200


def _int_param(params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    """Query parameter ``name`` as an int in ``[lo, hi]`` (``default`` when absent or empty)."""
    text = params.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {text[:20]!r}.") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of bounds; give {lo} to {hi}.")
    return value


def _warm_query(index: VideoIndex) -> str:
    """A query every vocabulary can tokenise (a plain word of the model's vocabulary)."""
    tokens = index.model.vocab.tokens
    return "video" if "video" in tokens else next(
        (t for t in tokens if t.isalnum() and not t.startswith("[")), "a"
    )


class SearchService:
    """The state of a search server: one index (reloaded when re-indexed) and its model, loaded once.

    Args:
      path: the index directory. model: its model (object or directory; default: the one indexed with).
      rerank: default re-ranking depth of a search that does not say (None: ITC only).
      limits: request bounds (:class:`Limits`). say: receives the progress lines of the warm-up.
    """

    def __init__(self, path: str | Path, *, model: Any = None, rerank: int | None = None,
                 limits: Limits | None = None, say: Callable[[str], None] = lambda line: None):
        self.path = Path(path).expanduser().absolute()
        self.model = model
        self.rerank = rerank
        self.limits = limits or Limits()
        self.say = say
        self.error: str | None = None
        self._index: VideoIndex | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and the query path compiled."""
        return self._ready.is_set()

    def warm_up(self) -> None:
        """Open the index and its model, then compile the query path (one ITC query, one re-ranking).
        A failure is kept in :attr:`error` (one line) and re-raised."""
        try:
            t0 = time.perf_counter()
            self.say(f"loading the index {self.path} and its model")
            index = load_index(self.path, self.model)
            if self.rerank is not None and index.tokens is None:
                raise ValueError(
                    f"the index {self.path} holds no video tokens, which --rerank needs; rebuild it with "
                    "--keep-tokens, or serve without --rerank."
                )
            self.say(f"compiling the query path (ITC) on {len(index)} video{'s' * (len(index) != 1)}")
            query = _warm_query(index)
            search(index, query, k=1)
            if index.tokens is not None:
                depth = min(self.rerank or 10, len(index))
                self.say(f"compiling ITM re-ranking (top {depth})")
                search(index, query, k=1, rerank=depth)
            self._index = index
            self._ready.set()
            self.say(f"ready in {time.perf_counter() - t0:.1f} s")
        except Exception as err:
            self.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise

    def current(self) -> VideoIndex:
        """The index to answer with: the newest generation on disk (reloaded when it changed)."""
        if not self.ready or self._index is None:
            if self.error is not None:
                raise WarmingUp(f"the server could not start: {self.error}")
            raise WarmingUp("the server is warming up (loading and compiling the model); retry shortly.")
        with self._lock:
            index = self._index
            if index.changed():
                try:
                    index = index.reload()
                except ValueError:  # rebuilt with another model: open it anew (the model is loaded again)
                    index = load_index(self.path, self.model)
                self._index = index  # the previous one is released once no request uses it
            return index

    def _row(self, index: VideoIndex, row: int) -> int:
        if not 0 <= row < len(index):
            raise NotFound(f"no video {row}: the index holds rows 0 to {len(index) - 1}.")
        return row

    def search(self, params: Mapping[str, str]) -> dict[str, Any]:
        """``/api/search``: ``q`` (text), ``k`` (10), ``rerank`` (0: off; default: the server's).
        The hits are ``tldr-jax search --json``'s."""
        query = params.get("q", "")
        lim = self.limits
        if len(query) > lim.max_query_chars:
            raise ValueError(f"the query is {len(query)} characters long; at most {lim.max_query_chars}.")
        k = _int_param(params, "k", 10, 1, lim.max_k)
        rerank = _int_param(params, "rerank", self.rerank, 0, lim.max_rerank) or None
        k, rerank = check_counts(k, rerank)
        index = self.current()
        t0 = time.perf_counter()
        hits = search(index, query, k=k, rerank=rerank)
        return {
            "query": query, "k": k, "rerank": rerank, "videos": index.video_count, "windows": len(index),
            "generation": index.generation,
            "ms": round((time.perf_counter() - t0) * 1000, 2), "hits": [h.to_json() for h in hits],
        }

    def similar(self, row: int, params: Mapping[str, str]) -> dict[str, Any]:
        """``/api/similar/<row>``: the videos nearest to row ``row`` by its stored vector (ITC cosine),
        itself left out."""
        k = _int_param(params, "k", 10, 1, self.limits.max_k)
        index = self.current()
        self._row(index, row)
        rows, itc = candidates(index, np.asarray(index.vectors[row], np.float32), k + 1)
        keep = rows != row
        hits = [
            SearchHit(rank=i + 1, video=index.entries[int(r)].video, path=index.entries[int(r)].path,
                      score=float(s), itc=float(s), itm=None, row=int(r), start=index.entries[int(r)].start,
                      end=index.entries[int(r)].end).to_json()
            for i, (r, s) in enumerate(zip(rows[keep][:k], itc[keep][:k]))
        ]
        return {"row": row, "video": index.entries[row].video, "k": k, "generation": index.generation,
                "hits": hits}

    def video(self, row: int) -> dict[str, Any]:
        """``/api/videos/<row>``: the entry of row ``row`` (name, path, hash, size, frames; for a window its
        ``start``, ``end``, ``frame_range``) and its URLs (``play``: the media URL with the window as a
        media fragment, ``/media/3#t=20,30``)."""
        index = self.current()
        entry = index.entries[self._row(index, row)]
        window = entry.window
        return {
            **entry.to_json(), "row": row, "generation": index.generation,
            "playable": Path(entry.path).suffix.lower() in VIDEO_EXTENSIONS,
            "thumbnail": f"/api/thumbnails/{row}.jpg", "media": f"/media/{row}",
            "play": f"/media/{row}" + ("" if window is None else f"#t={window.label()}"),
            "tokens": f"/api/tokens/{row}.png",
        }

    def media_path(self, row: int) -> Path:
        """The file ``/media/<row>`` streams: a video file of the indexed collection, existing now."""
        index = self.current()
        self._row(index, row)
        try:
            path = index.video_path(row)
        except ValueError as err:
            raise NotFound(str(err)) from None
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise NotFound(f"video {row} ({index.entries[row].video}) is a {path.suffix} clip, not a "
                           "playable video file.")
        if not path.is_file():
            raise NotFound(f"video {row}: {index.entries[row].video} is no longer in the collection; "
                           "re-index it.")
        return path

    def info(self) -> dict[str, Any]:
        """``/api/info``: the index (size, generation, model settings), the defaults and the bounds."""
        index = self.current()
        s = index.settings
        return {
            "version": __version__, "index": str(self.path), "videos": index.video_count,
            "windows": len(index) if index.windowed else None,
            "generation": index.generation, "arch": s["arch"], "r": s["r"], "tokens": s["tokens"],
            "num_frames": s["num_frames"], "rerank_available": index.tokens is not None,
            "approximate": index.approximate, "rerank": self.rerank,
            "limits": dataclasses.asdict(self.limits),
        }
