"""Text-to-video search over a :class:`~tldr_jax.search.index.VideoIndex`: the official scores.

For a query the official UMT evaluation ranks the videos by ITC (the cosine of the unit ``text_proj`` and
``vision_proj`` features, no temperature), then re-scores the top ``k`` of that ranking with the fusion
layers and ``itm_head`` (the class-1 logit) and ranks those by it. :func:`search` does the same for one
query against a stored collection: candidates from the vector index (exact inner product, or HNSW when
the index was built with ``approximate=True``), their ITC scores recomputed from the stored vectors, and,
with ``rerank``, :func:`tldr_jax.retrieval.fusion.rerank` (the official pair scoring) on the top candidates.
The query is encoded by :func:`tldr_jax.retrieval.features.encode_texts`, as the evaluation encodes texts.

An index of windows (``build_index(window=...)``) ranks videos by their best window: ``k`` and ``rerank``
count videos; each hit is a video's best window (``start``, ``end``) and lists up to ``moments`` other
windows of that video (:class:`Moment`), best first, none overlapping the hit or each other, chosen among
the windows the ranking looked at (:func:`search`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
from usearch.index import search as exact_search

from tldr_jax.options import PRECISIONS, check_choice, check_int
from tldr_jax.retrieval.features import encode_texts
from tldr_jax.retrieval.fusion import rerank as official_rerank
from tldr_jax.search.index import TOKENS_FILE, VideoIndex, load_index
from tldr_jax.text.tokenizer import check_query, shorten

#: Extra candidates fetched from the vector index before the exact ITC re-sort (near-ties at the cut).
MARGIN = 16
#: Other moments listed per hit of an index of windows (``search(moments=...)``).
MOMENTS = 3

__all__ = [
    "MOMENTS", "Moment", "SearchHit", "candidates", "check_counts", "describe", "search", "search_vector",
]


@dataclasses.dataclass(frozen=True)
class Moment:
    """A window of a video that matched a query.

    Attributes:
      start: where the window starts in the video, in seconds.
      end: where it ends (exclusive), in seconds.
      score: the ranking score (as :attr:`SearchHit.score`).
      row: its row in the index.
    """

    start: float
    end: float
    score: float
    row: int

    def to_json(self) -> dict[str, Any]:
        """``{"start", "end", "score", "row"}``."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One ranked video.

    Attributes:
      rank: 1-based rank.
      video: the file name as indexed (relative to the indexed folder).
      path: the file's absolute path when indexed.
      score: what the ranking used: ``itm`` after re-ranking, else ``itc``.
      itc: the ITC cosine of the query and the video (official ``sim``).
      itm: the official matching score (class-1 logit of ``itm_head``), or None without re-ranking.
      row: the video's row in the index (``index.vectors[row]``); for an index of windows, the row of
        its best window.
      start: the best window's start in seconds, or None (an index of whole files).
      end: the best window's end (exclusive) in seconds, or None (an index of whole files).
      moments: the video's other matching windows, best first (empty for whole files).
    """

    rank: int
    video: str
    path: str
    score: float
    itc: float
    itm: float | None
    row: int
    start: float | None = None
    end: float | None = None
    moments: tuple[Moment, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (``itm`` left out when not re-ranked; ``start``, ``end`` and ``moments``,
        a list of ``{"start", "end", "score", "row"}``, only for a window)."""
        out = dataclasses.asdict(self)
        if out["itm"] is None:
            del out["itm"]
        if self.start is None:
            for key in ("start", "end", "moments"):
                del out[key]
        else:
            out["moments"] = [m.to_json() for m in self.moments]
        return out


def check_counts(k: Any, rerank: Any) -> tuple[int, int | None]:
    """``k`` and ``rerank`` (or None) as positive ints with ``k <= rerank``: only the re-ranked candidates
    get a matching score. ``TypeError`` / ``ValueError`` naming the bad value otherwise."""
    k = check_int("k", k, minimum=1)
    if rerank is None:
        return k, None
    rerank = check_int("rerank", rerank, minimum=1)
    if k > rerank:
        raise ValueError(
            f"k={k} exceeds rerank={rerank}: only the re-ranked candidates get a matching score; give "
            "rerank >= k."
        )
    return k, rerank


def describe(index: VideoIndex, query: str, rerank: int | None = None) -> str:
    """What a search does, in one line (the CLI's header): the query (shortened), the index's size and the
    ranking, with ``rerank`` clamped to the videos there are."""
    n = index.video_count
    videos = f"{n} video{'' if n == 1 else 's'}"
    if index.windowed:
        videos += f" in {len(index)} window{'' if len(index) == 1 else 's'}"
    if rerank is None:
        how = "ITC (cosine)"
    elif rerank >= n:
        how = f"ITM re-ranking of all {videos} (ITC candidates)"
    else:
        how = f"ITM re-ranking of the top {rerank} by ITC"
    return f"{shorten(query)!r}: {videos}, {how}"


def _checked_tokens(index: VideoIndex, rows: np.ndarray) -> np.ndarray:
    """The stored tokens of ``rows``, refused (naming the file and the videos) when not finite."""
    tokens = np.asarray(index.tokens[rows])
    bad = ~np.isfinite(tokens).reshape(len(rows), -1).all(axis=1)
    if bad.any():
        video = index.entries[int(rows[int(np.argmax(bad))])].video
        raise ValueError(
            f"{index.path / index.generation / TOKENS_FILE}: the tokens of {video} hold NaN or inf values; "
            "the index is damaged. Rebuild it (tldr-jax index ... --overwrite)."
        )
    return tokens


def candidates(index: VideoIndex, query_feat: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, itc)``: the ``count`` best rows by ITC, best first (ties: lower row first, as the official
    ``topk``), with ITC recomputed as ``vectors[rows] @ query_feat`` in float32.

    Args:
      index: the index. query_feat: ``(E,)`` unit text feature. count: rows wanted (at most ``len(index)``).
    """
    n = len(index)
    count = min(count, n)
    fetch = min(n, count + MARGIN)
    q = np.ascontiguousarray(query_feat, np.float32)
    if fetch == n:
        rows = np.arange(n)
    elif index.approximate:
        rows = np.asarray(index.hnsw.search(q, fetch).keys, np.int64)
    else:
        rows = np.asarray(exact_search(np.asarray(index.vectors), q, fetch, "ip", exact=True).keys, np.int64)
    itc = np.asarray(index.vectors[np.sort(rows)] @ q, np.float32)
    rows = np.sort(rows)
    order = np.lexsort((rows, -itc))[:count]
    return rows[order], itc[order]


def search(
    index: VideoIndex | str | os.PathLike,
    query: str,
    k: int = 10,
    rerank: int | None = None,
    *,
    max_length: int | None = None,
    clean: bool = True,
    model: Any = None,
    precision: str | None = "float32",
    moments: int = MOMENTS,
) -> list[SearchHit]:
    """Rank the indexed videos for a text query, as the official evaluation ranks them.

    Args:
      index: a :class:`VideoIndex` (:func:`~tldr_jax.search.index.load_index`, ``build_index``) or its path.
      query: the text.
      k: results returned.
      rerank: re-score the top ``rerank`` ITC candidates with the matching head (official ITM, the
        evaluation's ``k_test``) and rank them by it; needs an index built with ``keep_tokens=True``, and
        ``k <= rerank``. None: ITC ranking only.
      max_length: tokens of the query (default: MSR-VTT's 32, or the text tower's positions if fewer).
      clean: apply the official caption cleaning (:func:`~tldr_jax.text.tokenizer.pre_text`) to the query.
      model: with a path ``index``, the model to open it with (default: the one it was built from).
      precision: float32 matrix-product precision of the text tower and the matching head.
      moments: for an index of windows, the other windows listed per hit (0: none).

    Returns:
      ``min(k, videos)`` :class:`SearchHit` s, best first: ``score`` is the ITC cosine, or the ITM
      class-1 logit after re-ranking (``itc`` is kept on every hit).

    For an index of windows, ``k`` and ``rerank`` count videos. The windows are ranked by ITC, fetching
    ``want * (1 + moments) * (2 * ceil(window / stride) - 1)`` of them (``want`` = ``rerank`` or ``k``;
    room for the windows that overlap each listed one) and twice as many until they hold ``want``
    videos; a video's windows among them, best first and none overlapping an earlier one, give its hit
    (the best) and up to ``moments`` moments. With ``rerank``, those windows of the top ``rerank``
    videos are re-scored by ITM (at most ``rerank * (1 + moments)`` pairs) and re-ordered by it, and the
    videos ranked by their best window. An index of whole files ranks as before.

    Raises:
      ValueError: a query with nothing to search for after cleaning
        (:func:`~tldr_jax.text.tokenizer.check_query`), ``k`` / ``rerank`` below 1, ``k > rerank``, a
        precision not in :data:`tldr_jax.options.PRECISIONS`, re-ranking an index without tokens, an index
        of another model or a damaged one. TypeError: a query that is not a string, ``k`` / ``rerank``
        not an int. FileNotFoundError: a missing index.

    Warns:
      :class:`~tldr_jax.text.tokenizer.QueryTruncatedWarning`: the query holds more word pieces than
      ``max_length`` (how many were kept).
    """
    k, rerank = check_counts(k, rerank)
    moments = check_int("moments", moments, minimum=0)
    check_query(query, clean=clean)  # before the index and the model are opened
    check_choice("precision", precision, PRECISIONS)
    if not isinstance(index, VideoIndex):
        index = load_index(index, model)
    if index.model is None:
        raise ValueError("the index was opened without a model (model=False); load it with its model.")
    if rerank is not None and index.tokens is None:
        raise ValueError(
            f"the index {index.path} holds no video tokens, which re-ranking needs; rebuild it with "
            "keep_tokens=True (CLI: --keep-tokens), or search without rerank."
        )
    model = index.model
    if max_length is None:
        max_length = min(32, model.text_config.max_position_embeddings)
    cleaned = check_query(query, model, clean=clean, max_length=max_length)
    text = encode_texts(model, [cleaned], max_length=max_length, precision=precision)
    feat = np.asarray(text.feat[0], np.float32)
    if index.windowed:
        return _search_windows(index, feat, text, k, rerank, moments, precision)
    rows, itc = candidates(index, feat, rerank if rerank is not None else k)
    itm = None
    if rerank is not None:
        _, t2i, _ = official_rerank(
            model, itc[:, None], text, _checked_tokens(index, rows), len(rows), precision=precision,
            progress=False,
        )
        itm = t2i[0]
        order = np.argsort(-itm, kind="stable")[:k]
        rows, itc, itm = rows[order], itc[order], itm[order]
    hits = []
    for i in range(min(k, len(rows))):
        entry = index.entries[int(rows[i])]
        m = None if itm is None else float(itm[i])
        hits.append(SearchHit(
            rank=i + 1, video=entry.video, path=entry.path, score=float(itc[i]) if m is None else m,
            itc=float(itc[i]), itm=m, row=int(rows[i]),
        ))
    return hits


def search_vector(index: VideoIndex, vector: Any, k: int = 10, *, moments: int = MOMENTS) -> list[SearchHit]:
    """Rank the indexed videos by ITC cosine to a feature ``vector`` instead of a text (e.g. a clip's own
    stored vector: "more like this"), grouped into videos with their moments as :func:`search` does.

    Args:
      index: the index (a model is not needed).
      vector: ``(E,)`` feature, normalised here.
      k: videos returned.
      moments: other windows listed per hit (an index of windows).

    Returns:
      ``min(k, videos)`` :class:`SearchHit` s, best first (``score`` = ``itc``).

    Raises:
      ValueError: a vector of another width, or not finite; ``k`` < 1, ``moments`` < 0.
    """
    k = check_int("k", k, minimum=1)
    moments = check_int("moments", moments, minimum=0)
    q = np.asarray(vector, np.float32).reshape(-1)
    if q.shape != (index.vectors.shape[1],) or not np.isfinite(q).all() or not np.any(q):
        raise ValueError(
            f"vector must be {index.vectors.shape[1]} finite numbers, not all 0 (the index's feature width); "
            f"got shape {np.shape(vector)}."
        )
    q = q / np.linalg.norm(q)
    if index.windowed:
        return _search_windows(index, q, None, k, None, moments, None)
    rows, itc = candidates(index, q, k)
    return [
        SearchHit(rank=i + 1, video=index.entries[int(r)].video, path=index.entries[int(r)].path,
                  score=float(c), itc=float(c), itm=None, row=int(r))
        for i, (r, c) in enumerate(zip(rows, itc))
    ]


def _overlaps(a: Any, b: Any) -> bool:
    """Whether two entries' windows share time (a whole file, with no window, overlaps everything)."""
    if a.start is None or b.start is None:
        return True
    return a.start < b.end and b.start < a.end


def _video_windows(
    index: VideoIndex, rows: np.ndarray, itc: np.ndarray, want: int, per_video: int
) -> list[list[tuple[int, float]]]:
    """The first ``want`` videos of the ITC-ranked ``rows``, each as its list of ``(row, itc)`` windows
    (best first, none overlapping an earlier one, at most ``per_video``)."""
    picked: dict[int, list[tuple[int, float]]] = {}
    for row, score in zip(rows.tolist(), itc.tolist()):
        vid = int(index.video_ids[row])
        if vid not in picked:
            if len(picked) == want:
                continue
            picked[vid] = []
        kept = picked[vid]
        entry = index.entries[row]
        if len(kept) < per_video and not any(_overlaps(entry, index.entries[r]) for r, _ in kept):
            kept.append((row, score))
    return list(picked.values())


def _search_windows(
    index: VideoIndex, feat: np.ndarray, text: Any, k: int, rerank: int | None, moments: int,
    precision: str | None,
) -> list[SearchHit]:
    """:func:`search` on an index of windows: videos ranked by their best window (see :func:`search`)."""
    n = len(index)
    want = min(rerank if rerank is not None else k, index.video_count)
    s = index.settings
    overlap = math.ceil(s["window"] / s["stride"]) if s.get("window") and s.get("stride") else 1
    count = min(n, want * (1 + moments) * (2 * overlap - 1))  # a window overlaps 2 (overlap - 1) others
    while True:
        rows, itc = candidates(index, feat, count)
        if len(set(index.video_ids[rows].tolist())) >= want or count >= n:
            break
        count = min(n, 2 * count)
    groups = _video_windows(index, rows, itc, want, 1 + moments)
    if rerank is not None:
        flat = np.asarray([r for g in groups for r, _ in g], np.int64)
        flat_itc = np.asarray([c for g in groups for _, c in g], np.float32)
        _, t2i, _ = official_rerank(
            model=index.model, sim=flat_itc[:, None], text=text, video_tokens=_checked_tokens(index, flat),
            k=len(flat), precision=precision, progress=False,
        )
        itm = dict(zip(flat.tolist(), t2i[0].tolist()))
        groups = [sorted(g, key=lambda w: -itm[w[0]]) for g in groups]  # stable: ITC order on ties
        order = sorted(range(len(groups)), key=lambda i: -itm[groups[i][0][0]])
        groups = [groups[i] for i in order]
    else:
        itm = None
    hits = []
    for rank, group in enumerate(groups[:k], start=1):
        (row, cos), *rest = group
        entry = index.entries[row]
        m = None if itm is None else float(itm[row])
        listed = tuple(
            Moment(index.entries[r].start, index.entries[r].end, float(c if itm is None else itm[r]), int(r))
            for r, c in rest
        )
        hits.append(SearchHit(
            rank=rank, video=entry.video, path=entry.path, score=float(cos) if m is None else m,
            itc=float(cos), itm=m, row=int(row), start=entry.start, end=entry.end, moments=listed,
        ))
    return hits
