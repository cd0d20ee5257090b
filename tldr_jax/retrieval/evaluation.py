"""Encoding, matching and the official retrieval evaluation (ITC ranking + ITM re-ranking).

The official ``tasks/retrieval_utils.evaluation`` in five steps, each a function here:

1. :func:`encode_texts`: tokenise and run the text layers once for every text (batches of static size);
2. :func:`encode_videos`: run the video encoder once for every video, vid-TLDR merging included,
   streaming the videos in batches and keeping the merged tokens (a host-side cache) and the unit
   ``vision_proj`` features;
3. ITC: ``video_feat @ text_feat.T`` (cosine, no temperature);
4. :func:`rerank`: for every video the top-``k`` texts and for every text the top-``k`` videos by ITC are
   re-scored by the fusion layers and ``itm_head`` (class-1 logit); everything else is ``-100``;
5. :func:`~tldr_jax.retrieval.metrics.retrieval_metrics` on both pairs of matrices.

Re-ranking computes each needed (video, text) pair once: the pairs of both directions are grouped by
video, in fixed-size groups of texts (static shapes: one compile per token count). The official loop
recomputes, for every pair, the cross-attention keys and values of the video (the bulk of its cost: the
video has far more tokens than the text) and runs every text row through the last layer; here each
video's keys and values are computed once per group, the first fusion layer's self-attention (which does
not see the video) once per text, and the last layer for the CLS row only. The scores are those of the
official per-pair computation (float64: to ~1e-15).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import tldr_jax
from tldr_jax.retrieval import metrics as _metrics
from tldr_jax.retrieval.model import RetrievalModel, build_text
from tldr_jax.retrieval.text import TextConfig, normalize
from tldr_jax.retrieval.tokenizer import tokenize

Array = jax.Array

#: The score the official evaluation gives to pairs outside the re-ranked top-k.
UNSCORED = -100.0


@struct.dataclass
class TextFeatures:
    """Encoded texts.

    Attributes:
      embeds: ``(n, L, H)`` last hidden state of the text layers (official ``text_embeds``).
      mask: ``(n, L)`` attention mask (1 = token).
      proj: ``(n, E)`` ``text_proj`` of the CLS row, not normalised.
      feat: ``(n, E)`` ``proj`` L2-normalised (what ITC uses).
    """

    embeds: Array
    mask: Array
    proj: Array
    feat: Array

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


@struct.dataclass
class VideoFeatures:
    """Encoded videos.

    Attributes:
      tokens: ``(B, N', Dv)`` the merged tokens after the final LayerNorm (what the fusion layers read).
      pooled: ``(B, Dv)`` ``pool_norm(mean(tokens))``.
      proj: ``(B, E)`` ``vision_proj(pooled)``, not normalised.
      feat: ``(B, E)`` ``proj`` L2-normalised (what ITC uses).
      size: ``(B, N', 1)`` token sizes (diagnostic; not used by retrieval).
      schedule: the resolved merge schedule (static).
    """

    tokens: Array
    pooled: Array
    proj: Array
    feat: Array
    size: Array
    schedule: Any = struct.field(pytree_node=False, default=None)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _precision_ctx(precision: str | None) -> Any:
    return jax.default_matmul_precision(precision) if precision is not None else contextlib.nullcontext()


def _check_model(model: Any) -> RetrievalModel:
    if not isinstance(model, RetrievalModel):
        raise TypeError(
            "expected a tldr_jax.retrieval.RetrievalModel (tldr_jax.load of a converted UMT retrieval "
            "checkpoint, "
            f"or tldr_jax.retrieval.init); got {type(model).__name__}."
        )
    return model


# --------------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def _encode_text(tree: dict, ids: Array, mask: Array, *, cfg: TextConfig, precision: str | None) -> tuple:
    with _precision_ctx(precision):
        tower = build_text(cfg, tree)
        embeds = tower.encode(ids, mask)
        proj = tower.text_proj(embeds[:, 0])
        return embeds, proj, normalize(proj)


def _check_tokens(ids: Any, mask: Any, cfg: TextConfig) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"ids and mask must both be (n, L); got {ids.shape} and {mask.shape}. Make them with "
            "tldr_jax.retrieval.tokenize(model, texts, max_length)."
        )
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}); got {ids.min()}..{ids.max()}.")
    if ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"texts of {ids.shape[1]} tokens exceed the {cfg.max_position_embeddings} position embeddings."
        )
    return ids.astype(np.int32), mask.astype(np.int32)


def encode_text(
    model: RetrievalModel, ids: Any, mask: Any, *, precision: str | None = "float32"
) -> TextFeatures:
    """The text layers and ``text_proj`` for tokenised texts (official ``encode_text`` + ``text_proj``).

    Args:
      model: the retrieval model.
      ids, mask: ``(n, L)`` from :func:`~tldr_jax.retrieval.tokenize`.
      precision: float32 matrix-product precision (``"float32"``: the official arithmetic; ``None``
        leaves JAX's setting in charge).

    Returns:
      :class:`TextFeatures`; ``embeds`` keep every position, padding included, as the official code does.
    """
    model = _check_model(model)
    ids, mask = _check_tokens(ids, mask, model.text_config)
    embeds, proj, feat = _encode_text(
        model.text, jnp.asarray(ids), jnp.asarray(mask), cfg=model.text_config, precision=precision
    )
    return TextFeatures(embeds=embeds, mask=jnp.asarray(mask), proj=proj, feat=feat)


def text_hidden_states(
    model: RetrievalModel, ids: Any, mask: Any, *, precision: str | None = "float32"
) -> Array:
    """``(fusion_layer + 1, n, L, H)``: the embedding output and every text layer's output (official
    ``output_hidden_states=True`` in ``mode="text"``)."""
    model = _check_model(model)
    ids, mask = _check_tokens(ids, mask, model.text_config)
    with _precision_ctx(precision):
        tower = build_text(model.text_config, model.text)
        return jnp.stack(tower.encode(jnp.asarray(ids), jnp.asarray(mask), hidden_states=True))


def encode_texts(
    model: RetrievalModel,
    texts: Sequence[str],
    *,
    max_length: int = 32,
    batch_size: int = 256,
    precision: str | None = "float32",
) -> TextFeatures:
    """Tokenise and encode many texts in batches of ``batch_size`` (the last one padded: one compile).

    ``max_length`` is the dataset's ``max_txt_l`` (:data:`~tldr_jax.retrieval.presets.DATASETS`).
    """
    model = _check_model(model)
    ids, mask = tokenize(model, list(texts), max_length)
    n = len(ids)
    if n == 0:
        raise ValueError("no texts to encode; pass at least one caption.")
    bs = min(int(batch_size), n)
    parts = []
    for start in range(0, n, bs):
        i, m = ids[start : start + bs], mask[start : start + bs]
        fill = bs - len(i)
        if fill:
            i = np.concatenate([i, np.repeat(i[-1:], fill, 0)])
            m = np.concatenate([m, np.repeat(m[-1:], fill, 0)])
        out = encode_text(model, i, m, precision=precision)
        parts.append(jax.tree_util.tree_map(lambda a, keep=bs - fill: a[:keep], out))
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)


# --------------------------------------------------------------------------------------------------
# Video.
# --------------------------------------------------------------------------------------------------


def encode_video(model: RetrievalModel, video: Any, r: Any = 0, **apply_options: Any) -> VideoFeatures:
    """The video encoder with vid-TLDR merging, then ``vision_proj`` (official ``encode_vision(test=True)``).

    Args:
      model: the retrieval model.
      video: ``(B, T, H, W, 3)`` normalised frames (PyTorch ``(B, T, C, H, W)`` input needs
        ``.transpose(0, 1, 3, 4, 2)``).
      r: the merge schedule, as for :func:`tldr_jax.apply` (e.g. ``"msrvtt"``, ``(600, 200, 100)``, 0).
      **apply_options: other :func:`tldr_jax.apply` options (``method``, ``dtype``, ``precision``, ...).

    Returns:
      :class:`VideoFeatures`.
    """
    model = _check_model(model)
    out = tldr_jax.apply(model.vision, video, r, **apply_options)
    if out.embedding is None:
        raise ValueError("the vision encoder has no vision_proj; it is not a UMT retrieval model.")
    return VideoFeatures(
        tokens=out.tokens,
        pooled=out.pooled,
        proj=out.embedding,
        feat=normalize(out.embedding),
        size=out.size,
        schedule=out.schedule,
    )


@dataclasses.dataclass(frozen=True)
class ClipReader:
    """How :func:`encode_videos` turns a file into a clip: UMT's evaluation preprocessing.

    Attributes:
      prep: the :class:`tldr_jax.video.Preprocessing` (``preprocessing_for(model.vision, sampling="middle",
        pad=True)``: the middle frame of equal segments, short videos repeat their last frame, frames
        resized to ``img_size x img_size`` (bicubic) and ImageNet-normalised, as the official test transform).
      trim_seconds: sample only the first seconds of each video (DiDeMo: 30), or None.
    """

    prep: Any
    trim_seconds: float | None = None

    @classmethod
    def for_model(
        cls, model: RetrievalModel, num_frames: int | None = None, trim_seconds: float | None = None
    ) -> ClipReader:
        """UMT's evaluation preprocessing for ``model`` at ``num_frames`` (default: the model's)."""
        from tldr_jax.video import preprocessing_for

        return cls(
            preprocessing_for(model.vision, num_frames=num_frames, sampling="middle", pad=True), trim_seconds
        )

    def __call__(self, path: Any) -> np.ndarray:
        """``(num_frames, img_size, img_size, 3)`` float32 for a video file or a ``.npy`` clip."""
        from tldr_jax import video as tv

        if self.trim_seconds is None or Path(path).suffix.lower() == ".npy":
            return tv.load_clip(path, self.prep)
        total = min(tv.count_frames(path), _frames_within(path, self.trim_seconds))
        idx = tv.sample_indices(total, self.prep.num_frames, "middle", pad=True)
        frames, _ = tv.decode_frames(path, idx)
        if len(frames) != self.prep.num_frames:
            raise tv.VideoReadError(
                f"could only decode {len(frames)} of {self.prep.num_frames} frames of {path}."
            )
        return tv.preprocess(frames, self.prep.img_size, **self.prep.preprocess_kwargs())


def _frames_within(path: Any, seconds: float) -> int:
    """Frames in the first ``seconds`` of a video (the official ``trimmed30``: ``int(30 * fps)``)."""
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    if not rate:
        return sys.maxsize
    return max(1, int(seconds * float(rate)))


def _video_loader(videos: Any, reader: ClipReader) -> tuple[int, Callable[[Sequence[int]], np.ndarray]]:
    """``(count, load(indices) -> (b, T, H, W, 3))`` for an array of clips or a list of files / clips."""
    if hasattr(videos, "shape") and len(videos.shape) == 5:
        return int(videos.shape[0]), lambda idx: np.asarray(videos[np.asarray(idx)])
    items = list(videos)
    if not items:
        raise ValueError("no videos to encode; pass at least one video.")

    def one(i: int) -> np.ndarray:
        item = items[i]
        if isinstance(item, (str, Path)):
            return reader(item)
        arr = np.asarray(item)
        if arr.ndim != 4:
            raise ValueError(f"video {i} has shape {arr.shape}; expected a (T, H, W, 3) clip or a file path.")
        return arr

    return len(items), lambda idx: np.stack([one(int(i)) for i in idx])


def _prefetched(
    load: Callable[[Sequence[int]], np.ndarray], batches: list[np.ndarray], workers: int
) -> Iterator[np.ndarray]:
    """``load(batch)`` for each batch, the next ones loading in background threads while one is used."""
    if workers <= 0:
        for b in batches:
            yield load(b)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(load, b) for b in batches[: workers + 1]]
        nxt = len(pending)
        for _ in batches:
            result = pending.pop(0).result()
            if nxt < len(batches):
                pending.append(pool.submit(load, batches[nxt]))
                nxt += 1
            yield result


def _progress(total: int, desc: str, enabled: bool | None, unit: str) -> Any:
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def encode_videos(
    model: RetrievalModel,
    videos: Any,
    r: Any = 0,
    *,
    batch_size: int = 8,
    num_frames: int | None = None,
    trim_seconds: float | None = None,
    workers: int = 2,
    progress: bool | None = None,
    **apply_options: Any,
) -> VideoFeatures:
    """Encode every video once, streaming them in batches (a progress bar), into a host-side cache.

    Args:
      model: the retrieval model.
      videos: ``(n, T, H, W, 3)`` normalised clips (an array or ``np.memmap``), or a list of video files /
        ``.npy`` clips / ``(T, H, W, 3)`` arrays. Files are read with UMT's evaluation preprocessing
        (:class:`ClipReader`) in ``workers`` background threads.
      r: merge schedule (``"msrvtt"``, a tuple, 0, ...), as :func:`tldr_jax.apply` takes it.
      batch_size: clips per encoder call; the last batch is padded (one compile per schedule).
      num_frames: frames per clip read from a file (default: the model's).
      trim_seconds: for files: sample only the first seconds (DiDeMo: 30).
      progress: show a progress bar (default: when stderr is a terminal).
      **apply_options: other :func:`tldr_jax.apply` options.

    Returns:
      :class:`VideoFeatures` holding numpy arrays (the token cache stays in host memory).
    """
    model = _check_model(model)
    reader = ClipReader.for_model(model, num_frames, trim_seconds)
    n, load = _video_loader(videos, reader)
    bs = max(1, min(int(batch_size), n))
    batches = [np.arange(s, min(s + bs, n)) for s in range(0, n, bs)]
    parts: list[VideoFeatures] = []
    with _progress(n, "encoding videos", progress, "video") as bar:
        for idx, clips in zip(batches, _prefetched(load, batches, workers)):
            if len(clips) < bs:
                clips = np.concatenate([clips, np.repeat(clips[-1:], bs - len(clips), 0)])
            out = encode_video(model, jnp.asarray(clips), r, **apply_options)
            keep = len(idx)
            parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a[:keep]), out))  # noqa: B023 (used at once)
            bar.update(len(idx))
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *parts)


# --------------------------------------------------------------------------------------------------
# Matching (ITM).
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def _fuse_all(
    tree: dict, embeds: Array, mask: Array, tokens: Array, *, cfg: TextConfig, precision: str | None
) -> Array:
    """Every (text, video) pair, one video at a time: ``(B, n, H)`` CLS rows of the fusion layers."""
    with _precision_ctx(precision):
        tower = build_text(cfg, tree)
        return jax.lax.map(lambda video: tower.fuse(embeds[None], mask[None], video[None])[0], tokens)


def _pair_inputs(model: Any, text_embeds: Any, mask: Any, video_tokens: Any) -> tuple:
    model = _check_model(model)
    e, m, v = jnp.asarray(text_embeds), jnp.asarray(mask), jnp.asarray(video_tokens)
    cfg = model.text_config
    if e.ndim != 3 or m.shape != e.shape[:2] or e.shape[-1] != cfg.hidden_size:
        raise ValueError(
            f"text_embeds must be (n, L, {cfg.hidden_size}) with a (n, L) mask; got {e.shape} and {m.shape}. "
            "Use encode_text(...).embeds and the mask from tokenize."
        )
    if v.ndim != 3 or v.shape[-1] != cfg.encoder_width:
        raise ValueError(
            f"video_tokens must be (B, N, {cfg.encoder_width}); got {v.shape}. Use encode_video(...).tokens."
        )
    return model, e, m, v


def fusion_cls(
    model: RetrievalModel,
    text_embeds: Any,
    mask: Any,
    video_tokens: Any,
    *,
    precision: str | None = "float32",
) -> Array:
    """``(n, B, H)``: the fusion layers' CLS output of every (text, video) pair (official
    ``mode="fusion"``)."""
    model, e, m, v = _pair_inputs(model, text_embeds, mask, video_tokens)
    out = _fuse_all(model.text, e, m, v, cfg=model.text_config, precision=precision)
    return jnp.swapaxes(out, 0, 1)


def itm_logits(
    model: RetrievalModel,
    text_embeds: Any,
    mask: Any,
    video_tokens: Any,
    *,
    precision: str | None = "float32",
) -> Array:
    """``(n, B, 2)``: ``itm_head`` logits of every (text, video) pair."""
    cls = fusion_cls(model, text_embeds, mask, video_tokens, precision=precision)
    with _precision_ctx(precision):
        return build_text(model.text_config, model.text).itm_head(cls)


def itm_score(
    model: RetrievalModel,
    text_embeds: Any,
    mask: Any,
    video_tokens: Any,
    *,
    precision: str | None = "float32",
) -> Array:
    """``(n, B)``: the matching score (class-1 logit of ``itm_head``, what the evaluation ranks by) of
    every (text, video) pair. For many pairs use :func:`evaluate`, which scores only the top-k."""
    return itm_logits(model, text_embeds, mask, video_tokens, precision=precision)[..., 1]


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def _itm_groups(
    tree: dict, embeds: Array, mask: Array, video: Array, *, cfg: TextConfig, precision: str | None
) -> Array:
    """``(G, B)`` scores of ``B`` texts per group (``embeds (G, B, L, H)``, ``mask (G, B, L)``) against one
    video per group (``video (G, N, D)``). Only these fixed shapes reach the program: one compile per token
    count, whatever the number of texts and videos."""
    with _precision_ctx(precision):
        tower = build_text(cfg, tree)
        return tower.itm_head(tower.fuse(embeds, mask, video, self_attended=True))[..., 1]


@functools.partial(jax.jit, static_argnames=("cfg", "precision"))
def _fusion_self(tree: dict, embeds: Array, mask: Array, *, cfg: TextConfig, precision: str | None) -> Array:
    """``(b, L, H)``: the video-independent first sub-block of the fusion layers, once per text."""
    with _precision_ctx(precision):
        return build_text(cfg, tree).fusion_self_attention(embeds, mask)


def _fusion_inputs(
    model: RetrievalModel, text: TextFeatures, precision: str | None, batch: int = 256
) -> np.ndarray:
    """:func:`_fusion_self` of every text, in batches of static size (host array ``(n, L, H)``)."""
    n = len(text)
    bs = min(batch, n)
    out = []
    for s in range(0, n, bs):
        idx = np.minimum(np.arange(s, s + bs), n - 1)
        part = _fusion_self(
            model.text,
            jnp.asarray(text.embeds)[idx],
            jnp.asarray(text.mask)[idx],
            cfg=model.text_config,
            precision=precision,
        )
        out.append(np.asarray(part)[: min(bs, n - s)])
    return np.concatenate(out)


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """``(Q, k)`` column indices of the ``k`` largest scores of each row (ties: lower index first)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]


@dataclasses.dataclass(frozen=True)
class RerankPlan:
    """Which (video, text) pairs the matching head scores, grouped by video with static sizes.

    Attributes:
      top_i2t: ``(n_videos, k_t)`` texts re-ranked for each video.
      top_t2i: ``(n_texts, k_v)`` videos re-ranked for each text.
      video: ``(W,)`` the video of each work item.
      texts: ``(W, B)`` the texts of each item (padding repeats a valid index).
      valid: ``(W, B)`` False on padding.
    """

    top_i2t: np.ndarray
    top_t2i: np.ndarray
    video: np.ndarray
    texts: np.ndarray
    valid: np.ndarray

    @property
    def num_pairs(self) -> int:
        """Distinct pairs scored (the official loop scores ``n_videos * k_t + n_texts * k_v``)."""
        return int(self.valid.sum())


def plan_rerank(sim: np.ndarray, k: int, text_batch: int = 32) -> RerankPlan:
    """Top-k selections of both directions and the work items that cover them (each pair once).

    Args:
      sim: ``(n_videos, n_texts)`` ITC similarities.
      k: the official ``k_test``.
      text_batch: texts per work item (the last item of a video is padded).
    """
    sim = np.asarray(sim)
    n_v, n_t = sim.shape
    top_i2t = topk_rows(sim, min(n_t, k))
    top_t2i = topk_rows(sim.T, min(n_v, k))
    need = np.zeros((n_v, n_t), bool)
    need[np.arange(n_v)[:, None], top_i2t] = True
    need[top_t2i, np.arange(n_t)[:, None]] = True
    b = max(1, min(int(text_batch), n_t))
    vids, texts, valid = [], [], []
    for v in range(n_v):
        idx = np.flatnonzero(need[v])
        for s in range(0, len(idx), b):
            chunk = idx[s : s + b]
            pad = b - len(chunk)
            vids.append(v)
            texts.append(np.concatenate([chunk, np.full(pad, chunk[0])]))
            valid.append(np.arange(b) < len(chunk))
    return RerankPlan(
        top_i2t, top_t2i, np.asarray(vids, np.int64), np.stack(texts).astype(np.int64), np.stack(valid)
    )


def rerank(
    model: RetrievalModel,
    sim: np.ndarray,
    text: TextFeatures,
    video_tokens: Any,
    k: int = 128,
    *,
    text_batch: int = 32,
    group: int | None = None,
    precision: str | None = "float32",
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, RerankPlan]:
    """The official re-ranking: ITM class-1 logits at the top-``k`` ITC positions, ``-100`` elsewhere.

    Args:
      model: the retrieval model.
      sim: ``(n_videos, n_texts)`` ITC similarities.
      text: the encoded texts.
      video_tokens: ``(n_videos, N', Dv)`` merged video tokens (host or device array).
      k: ``k_test`` (the official 128).
      text_batch: texts per work item.
      group: work items per compiled call (default ``max(1, 64 // text_batch)``).

    Returns:
      ``i2t (n_videos, n_texts)``, ``t2i (n_texts, n_videos)`` and the :class:`RerankPlan`.
    """
    model = _check_model(model)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive int (the official k_test is 128); got {k!r}.")
    sim = np.asarray(sim)
    n_v, n_t = sim.shape
    if len(video_tokens) != n_v or len(text) != n_t:
        raise ValueError(
            f"sim is {sim.shape} but there are {len(video_tokens)} videos and {len(text)} texts; they must "
            "agree."
        )
    plan = plan_rerank(sim, int(k), text_batch)
    b = plan.texts.shape[1]
    g = max(1, int(group or max(1, 64 // b)))
    dtype = np.dtype(jnp.asarray(text.proj).dtype)
    scores = np.full((n_v, n_t), np.nan, dtype)
    items = len(plan.video)
    # Host-side caches: each call gathers its groups here, so the compiled program sees fixed shapes only.
    tokens, embeds, masks = (
        np.asarray(video_tokens),
        _fusion_inputs(model, text, precision),
        np.asarray(text.mask),
    )
    with _progress(items, "re-ranking (ITM)", progress, "group") as bar:
        for s in range(0, items, g):
            sl = np.arange(s, min(s + g, items))
            v_idx = np.concatenate([plan.video[sl], np.repeat(plan.video[sl[-1:]], g - len(sl))])
            t_idx = np.concatenate([plan.texts[sl], np.repeat(plan.texts[sl[-1:]], g - len(sl), 0)])
            out = _itm_groups(
                model.text,
                embeds[t_idx],
                masks[t_idx],
                tokens[v_idx],
                cfg=model.text_config,
                precision=precision,
            )
            out = np.asarray(out)[: len(sl)]
            ok = plan.valid[sl]
            scores[np.repeat(plan.video[sl][:, None], b, 1)[ok], plan.texts[sl][ok]] = out[ok]
            bar.update(len(sl))
    i2t = np.full((n_v, n_t), UNSCORED, dtype)
    rows_v = np.arange(n_v)[:, None]
    i2t[rows_v, plan.top_i2t] = scores[rows_v, plan.top_i2t]
    t2i = np.full((n_t, n_v), UNSCORED, dtype)
    rows_t = np.arange(n_t)[:, None]
    t2i[rows_t, plan.top_t2i] = scores[plan.top_t2i, rows_t]
    return i2t, t2i, plan


# --------------------------------------------------------------------------------------------------
# The evaluation.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
      i2t, t2i: the official re-ranked matrices ``(n_videos, n_texts)`` / ``(n_texts, n_videos)``: ITM
        class-1 logits at the top-k ITC positions of each row, ``-100`` elsewhere.
      i2t_emb, t2i_emb: the ITC (cosine) matrices.
      metrics: :func:`~tldr_jax.retrieval.metrics.retrieval_metrics` of ``i2t``/``t2i`` (official
        ``test/`` entry, plus median / mean rank).
      metrics_emb: the same for the ITC matrices (official ``test_emb/``).
      metrics_emb_dsl: only when ``dual_softmax`` was requested: the ITC matrices re-scored by dual softmax
        (not part of the official evaluation; labelled so).
      k: ``k_test``; schedule: the merge schedule used; num_pairs: ITM pairs computed.
      timing: seconds spent: ``text``, ``video``, ``itc``, ``rerank``, ``total``.
    """

    i2t: np.ndarray
    t2i: np.ndarray
    i2t_emb: np.ndarray
    t2i_emb: np.ndarray
    metrics: dict[str, float]
    metrics_emb: dict[str, float]
    k: int
    schedule: Any
    num_pairs: int
    timing: dict[str, float]
    metrics_emb_dsl: dict[str, float] | None = None

    def official(self, split: str = "test") -> dict[str, dict[str, float]]:
        """The metrics as the official ``evaluation_wrapper`` returns them: ``{"test/": ...,
        "test_emb/": ...}``."""
        return {
            f"{split}/": _metrics.official_only(self.metrics),
            f"{split}_emb/": _metrics.official_only(self.metrics_emb),
        }


def ground_truth(
    n_videos: int, n_texts: int, txt2vid: Any = None, vid2txt: Any = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Both ground-truth maps from either one (``txt2vid``: a video or list per text; ``vid2txt``: a text
    or list per video; ``-1`` entries are padding). Raises ``ValueError`` when neither is given."""
    if txt2vid is None and vid2txt is None:
        raise ValueError(
            "give txt2vid (the video of each text) or vid2txt (the texts of each video); e.g. for one "
            "caption per video in the same order: txt2vid=range(n)."
        )
    t2v = _metrics.as_lists(txt2vid, n_texts, "txt2vid") if txt2vid is not None else None
    v2t = _metrics.as_lists(vid2txt, n_videos, "vid2txt") if vid2txt is not None else None
    if t2v is None:
        t2v = [[] for _ in range(n_texts)]
        for v, ts in enumerate(v2t):
            for t in ts:
                t2v[t].append(v)
        _metrics.as_lists(t2v, n_texts, "txt2vid (derived from vid2txt)")
    if v2t is None:
        v2t = [[] for _ in range(n_videos)]
        for t, vs in enumerate(t2v):
            for v in vs:
                if not 0 <= v < n_videos:
                    raise ValueError(f"txt2vid[{t}] = {v} is not a video index in [0, {n_videos}).")
                v2t[v].append(t)
        _metrics.as_lists(v2t, n_videos, "vid2txt (derived from txt2vid)")
    return t2v, v2t


def evaluate(
    model: RetrievalModel,
    videos: Any,
    texts: Sequence[str] | TextFeatures,
    *,
    txt2vid: Any = None,
    vid2txt: Any = None,
    k: int = 128,
    r: Any = 0,
    max_length: int = 32,
    batch_size: int = 8,
    text_batch_size: int = 256,
    rerank_batch: int = 32,
    rerank_group: int | None = None,
    dual_softmax: float | None = None,
    progress: bool | None = None,
    precision: str | None = "float32",
    **video_options: Any,
) -> EvalResult:
    """The official UMT retrieval evaluation (ITC ranking, ITM re-ranking of the top-k, R@1/5/10).

    Args:
      model: the retrieval model (``tldr_jax.load`` of a converted checkpoint).
      videos: ``(n, T, H, W, 3)`` clips, a list of files / clips (see :func:`encode_videos`), or
        :class:`VideoFeatures` already computed (reused as they are; ``r`` is then ignored).
      texts: the captions (one entry per text) or :class:`TextFeatures` from :func:`encode_texts`.
      txt2vid / vid2txt: ground truth (either one): the video(s) of each text / the text(s) of each video.
      k: ``k_test`` (official: 128).
      r: the vid-TLDR schedule (``"msrvtt"``, ...; 0 = no merging).
      max_length: tokens per text (dataset presets: ``DATASETS[name].max_txt_l``).
      batch_size: videos per encoder call. text_batch_size: texts per text-encoder call.
      rerank_batch: texts per ITM work item (official: 32); rerank_group: work items per compiled call.
      dual_softmax: a temperature (e.g. 0.01) to also report ``metrics_emb_dsl``, the ITC matrices
        re-scored by dual softmax (not official; never applied unless given).
      progress: progress bars (default: when stderr is a terminal).
      precision: float32 matrix-product precision for every tower.
      **video_options: :func:`encode_videos` options (``num_frames``, ``trim_seconds``,
        ``workers``) and :func:`tldr_jax.apply` options.

    Returns:
      :class:`EvalResult`.
    """
    model = _check_model(model)
    t0 = time.perf_counter()
    if isinstance(texts, TextFeatures):
        text = texts
    else:
        text = encode_texts(
            model, texts, max_length=max_length, batch_size=text_batch_size, precision=precision
        )
    jax.block_until_ready(text.feat)
    t1 = time.perf_counter()
    if isinstance(videos, VideoFeatures):
        vid = videos
    else:
        video_options.setdefault("precision", precision)
        vid = encode_videos(model, videos, r, batch_size=batch_size, progress=progress, **video_options)
    t2 = time.perf_counter()
    t2v, v2t = ground_truth(len(vid), len(text), txt2vid, vid2txt)
    with _precision_ctx(precision):
        sim = np.asarray(jnp.asarray(vid.feat) @ jnp.asarray(text.feat).T)
    t3 = time.perf_counter()
    i2t, t2i, plan = rerank(
        model,
        sim,
        text,
        vid.tokens,
        k,
        text_batch=rerank_batch,
        group=rerank_group,
        precision=precision,
        progress=progress,
    )
    t4 = time.perf_counter()
    res = EvalResult(
        i2t=i2t,
        t2i=t2i,
        i2t_emb=sim,
        t2i_emb=np.ascontiguousarray(sim.T),
        metrics=_metrics.retrieval_metrics(i2t, t2i, t2v, v2t),
        metrics_emb=_metrics.retrieval_metrics(sim, sim.T, t2v, v2t),
        k=int(k),
        schedule=vid.schedule,
        num_pairs=plan.num_pairs,
        timing={"text": t1 - t0, "video": t2 - t1, "itc": t3 - t2, "rerank": t4 - t3, "total": t4 - t0},
    )
    if dual_softmax is not None:
        res.metrics_emb_dsl = _metrics.retrieval_metrics(
            _metrics.dual_softmax(sim, dual_softmax), _metrics.dual_softmax(sim.T, dual_softmax), t2v, v2t
        )
    return res
