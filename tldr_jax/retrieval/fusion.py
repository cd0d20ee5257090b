"""Matching a text with a video: the fusion layers, the ITM head, and the official top-k re-ranking.

The official evaluation re-scores, for every video, the top-``k`` texts by ITC and, for every text, the
top-``k`` videos, with the fusion layers (the text cross-attending to the merged video tokens) and
``itm_head`` (class-1 logit); everything else scores :data:`UNSCORED`. :func:`rerank` does the same and
computes each needed (video, text) pair once: :func:`plan_rerank` groups the pairs of both directions by
video, in fixed-size groups of texts (static shapes: one compile per token count). The official loop
recomputes, for every pair, the cross-attention keys and values of the video (the bulk of its cost: the
video has far more tokens than the text) and runs every text row through the last layer; here each
video's keys and values are computed once per group, the first fusion layer's self-attention (which does
not see the video) once per text, and the last layer for the CLS row only. The scores are those of the
official per-pair computation (float64: to round-off).

:func:`fusion_cls`, :func:`itm_logits` and :func:`itm_score` score every pair of small sets directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.numerics import matmul_precision
from tldr_jax.retrieval.features import TextFeatures, progress_bar
from tldr_jax.retrieval.model import RetrievalModel, check_model
from tldr_jax.text.bert import TextConfig, build_text
from tldr_jax.xla_options import tuned_jit

Array = jax.Array

#: The score the official evaluation gives to pairs outside the re-ranked top-k.
UNSCORED = -100.0

__all__ = [
    "UNSCORED",
    "RerankPlan",
    "fusion_cls",
    "itm_logits",
    "itm_score",
    "plan_rerank",
    "rerank",
    "topk_rows",
]


@tuned_jit(static_argnames=("cfg", "precision"))
def _fuse_all(
    tree: dict, embeds: Array, mask: Array, tokens: Array, *, cfg: TextConfig, precision: str | None
) -> Array:
    """Every (text, video) pair, one video at a time: ``(B, n, H)`` CLS rows of the fusion layers."""
    with matmul_precision(precision):
        tower = build_text(cfg, tree)
        return jax.lax.map(lambda video: tower.fuse(embeds[None], mask[None], video[None])[0], tokens)


def _pair_inputs(model: Any, text_embeds: Any, mask: Any, video_tokens: Any) -> tuple:
    model = check_model(model)
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
    with matmul_precision(precision):
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


@tuned_jit(static_argnames=("cfg", "precision"))
def _itm_groups(
    tree: dict, embeds: Array, mask: Array, video: Array, *, cfg: TextConfig, precision: str | None
) -> Array:
    """``(G, B)`` scores of ``B`` texts per group (``embeds (G, B, L, H)``, ``mask (G, B, L)``) against one
    video per group (``video (G, N, D)``). Only these fixed shapes reach the program: one compile per token
    count, whatever the number of texts and videos."""
    with matmul_precision(precision):
        tower = build_text(cfg, tree)
        return tower.itm_head(tower.fuse(embeds, mask, video, self_attended=True))[..., 1]


@tuned_jit(static_argnames=("cfg", "precision"))
def _fusion_self(tree: dict, embeds: Array, mask: Array, *, cfg: TextConfig, precision: str | None) -> Array:
    """``(b, L, H)``: the video-independent first sub-block of the fusion layers, once per text."""
    with matmul_precision(precision):
        return build_text(cfg, tree).fusion_self_attention(embeds, mask)


def _fusion_inputs(
    model: RetrievalModel,
    text: TextFeatures,
    precision: str | None,
    batch: int = 256,
    gpu_tuning: str = "heuristic",
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
            gpu_tuning=gpu_tuning,
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
    gpu_tuning: str = "heuristic",
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
      gpu_tuning: XLA's GEMM settings on a GPU, as :func:`tldr_jax.apply`'s.

    Returns:
      ``i2t (n_videos, n_texts)``, ``t2i (n_texts, n_videos)`` and the :class:`RerankPlan`.
    """
    model = check_model(model)
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
        _fusion_inputs(model, text, precision, gpu_tuning=gpu_tuning),
        np.asarray(text.mask),
    )
    with progress_bar(items, "re-ranking (ITM)", progress, "group") as bar:
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
                gpu_tuning=gpu_tuning,
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
