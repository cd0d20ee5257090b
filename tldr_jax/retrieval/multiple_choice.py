"""Multiple-choice video-text matching (MSR-VTT-MC), as the official ``tasks/retrieval_mc.py`` scores it.

Each item is one video and a fixed number of candidate captions (five in MSR-VTT-MC), one of them right.
The retrieval model scores every caption of an item against the item's video:

* ITM: the fusion layers over all the merged video tokens, ``softmax(itm_head(CLS))[:, 1]``;
* ITC: the unit ``vision_proj`` feature against the captions' unit ``text_proj`` features, divided by
  the stored ``temp`` and softmaxed over the item's captions;
* score = ``0.7 * ITM + 0.3 * ITC``; the prediction is the best caption (ties: the first), the accuracy the
  percentage of items whose prediction is the answer, rounded to two decimals.

Captions are cleaned with ``pre_text`` first, as the official MC dataset does. Every video is encoded once
and every caption once (the official loader works item by item); the fusion layers read each video's keys
and values once for all its captions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.numerics import matmul_precision
from tldr_jax.retrieval.features import encode_texts, encode_videos
from tldr_jax.retrieval.model import RetrievalModel, check_model
from tldr_jax.text.bert import TextConfig, build_text
from tldr_jax.text.tokenizer import pre_text
from tldr_jax.xla_options import tuned_jit

Array = jax.Array

#: The official ensemble: weight of the matching head's probability (ITC gets the rest).
ITM_WEIGHT = 0.7

__all__ = ["ITM_WEIGHT", "MCResult", "multiple_choice"]


@dataclasses.dataclass
class MCResult:
    """Multiple-choice scores.

    Attributes:
      scores: ``(n, C)`` the ensemble score of each caption of each item.
      pred: ``(n,)`` the index of the best caption (the first of equal scores).
      accuracy: percent of items whose ``pred`` is the answer, rounded to two decimals (None without
        answers).
    """

    scores: np.ndarray
    pred: np.ndarray
    accuracy: float | None = None


@tuned_jit(static_argnames=("cfg", "precision"))
def _mc_scores(
    tree: dict, embeds: Array, mask: Array, text_feat: Array, tokens: Array, video_feat: Array, *,
    cfg: TextConfig, precision: str | None,
) -> Array:
    """``(b, C)`` ensemble scores of ``C`` captions (``embeds (b, C, L, H)``, ``mask (b, C, L)``, ``text_feat
    (b, C, E)``) against one video each (``tokens (b, N, D)``, ``video_feat (b, E)``)."""
    with matmul_precision(precision):
        tower = build_text(cfg, tree)
        itm = jax.nn.softmax(tower.itm_head(tower.fuse(embeds, mask, tokens)), axis=-1)[..., 1]
        itc = jax.nn.softmax(jnp.einsum("be,bce->bc", video_feat, text_feat) / tree["temp"], axis=-1)
        return ITM_WEIGHT * itm + (1.0 - ITM_WEIGHT) * itc


def _check_captions(captions: Any) -> tuple[list[str], int, int]:
    rows = [list(row) for row in captions]
    if not rows:
        raise ValueError("no multiple-choice items; pass one row of captions per video.")
    width = len(rows[0])
    if width < 2 or any(len(row) != width for row in rows):
        raise ValueError(
            "every item needs the same number (>= 2) of candidate captions; got "
            f"{sorted({len(r) for r in rows})}."
        )
    flat = [c for row in rows for c in row]
    bad = next((i for i, c in enumerate(flat) if not isinstance(c, str)), None)
    if bad is not None:
        raise TypeError(f"captions must be strings; item {bad // width}, option {bad % width} is not.")
    return flat, len(rows), width


def multiple_choice(
    model: RetrievalModel,
    videos: Any,
    captions: Sequence[Sequence[str]],
    *,
    answers: Any = None,
    r: Any = 0,
    max_length: int = 32,
    batch_size: int = 8,
    num_frames: int | None = None,
    workers: int = 2,
    progress: bool | None = None,
    precision: str | None = "float32",
    **apply_options: Any,
) -> MCResult:
    """Score each item's candidate captions against its video (official ``main_with_ensemble``).

    Args:
      model: the retrieval model (MSR-VTT-MC uses the MSR-VTT retrieval checkpoint).
      videos: one clip per item: ``(n, T, H, W, 3)`` normalised clips, or a list of video files / ``.npy``
        clips / arrays (files read with UMT's evaluation preprocessing).
      captions: ``n`` rows of ``C`` raw captions (cleaned with ``pre_text`` here).
      answers: ``(n,)`` the index of the right caption of each item, for the accuracy.
      r: the vid-TLDR schedule (``"msrvtt"``, a tuple, 0, ...).
      max_length: tokens per caption (``max_txt_l``: 32 for MSR-VTT-MC).
      batch_size: items per encoder and scoring call (the last batch is padded: one compile).
      num_frames: frames per clip read from a file, as in :func:`~tldr_jax.retrieval.encode_videos`.
      workers: threads reading video files ahead, as there.
      progress: progress bars, as there.
      precision: float32 matrix-product precision.
      **apply_options: other :func:`tldr_jax.apply` options.

    Returns:
      :class:`MCResult`.
    """
    model = check_model(model)
    flat, n, width = _check_captions(captions)
    if answers is not None:
        answers = np.asarray(answers)
        if answers.shape != (n,) or not np.issubdtype(answers.dtype, np.integer):
            raise ValueError(
                f"answers must be {n} caption indices (one per item); got shape {answers.shape}."
            )
    gpu_tuning = apply_options.get("gpu_tuning", "heuristic")  # the text side's programs too
    text = encode_texts(
        model, [pre_text(c) for c in flat], max_length=max_length, precision=precision, gpu_tuning=gpu_tuning
    )
    vid = encode_videos(
        model, videos, r, batch_size=batch_size, num_frames=num_frames, workers=workers, progress=progress,
        precision=precision, **apply_options,
    )
    if len(vid) != n:
        raise ValueError(f"{n} items of captions but {len(vid)} videos; pass one video per item.")
    embeds = jnp.asarray(text.embeds).reshape(n, width, *text.embeds.shape[1:])
    mask = jnp.asarray(text.mask).reshape(n, width, -1)
    feats = jnp.asarray(text.feat).reshape(n, width, -1)
    bs = max(1, min(int(batch_size), n))
    scores = []
    for s in range(0, n, bs):
        idx = np.minimum(np.arange(s, s + bs), n - 1)
        part = _mc_scores(
            model.text, embeds[idx], mask[idx], feats[idx], jnp.asarray(vid.tokens[idx]),
            jnp.asarray(vid.feat[idx]), cfg=model.text_config, precision=precision, gpu_tuning=gpu_tuning,
        )
        scores.append(np.asarray(part)[: min(bs, n - s)])
    scores = np.concatenate(scores)
    pred = np.argmax(scores, axis=1)
    accuracy = None if answers is None else round(100.0 * float(np.mean(pred == answers)), 2)
    return MCResult(scores=scores, pred=pred, accuracy=accuracy)
