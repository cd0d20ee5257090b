"""Texts and videos into features: the two towers of the retrieval model, as the official code runs them.

The one encoding path of the multi-modal side: the evaluation (:func:`tldr_jax.retrieval.evaluate`), the
index (:func:`tldr_jax.search.build_index`) and search (:func:`tldr_jax.search.search`) all encode
through here, and read a video file into a clip with :func:`tldr_jax.video.load_clip` and the one
:func:`clip_preprocessing` (UMT's evaluation preprocessing, trimming included).

* :func:`encode_text` / :func:`encode_texts`: the text layers (official ``mode="text"``) and the unit
  ``text_proj`` feature of each text;
* :func:`encode_video` / :func:`encode_videos`: the video encoder with vid-TLDR merging, the merged tokens
  (what the fusion layers read) and the unit ``vision_proj`` feature of each clip.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm import tqdm

from tldr_jax.api import apply
from tldr_jax.numerics import matmul_precision
from tldr_jax.prefetch import prefetch
from tldr_jax.retrieval.model import RetrievalModel, check_model
from tldr_jax.text.bert import TextConfig, build_text, check_token_ids, normalize
from tldr_jax.text.tokenizer import tokenize
from tldr_jax.video import Preprocessing, load_clip, preprocessing_for
from tldr_jax.xla_options import tuned_jit

Array = jax.Array

__all__ = [
    "TextFeatures",
    "VideoFeatures",
    "clip_preprocessing",
    "encode_text",
    "encode_texts",
    "encode_video",
    "encode_videos",
    "text_hidden_states",
    "video_loader",
]


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


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str) -> Any:
    """A tqdm bar on stderr (``enabled`` None: only when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------------


@tuned_jit(static_argnames=("cfg", "precision"))
def _encode_text(tree: dict, ids: Array, mask: Array, *, cfg: TextConfig, precision: str | None) -> tuple:
    with matmul_precision(precision):
        tower = build_text(cfg, tree)
        embeds = tower.encode(ids, mask)
        proj = tower.text_proj(embeds[:, 0])
        return embeds, proj, normalize(proj)


#: The call that makes valid token inputs (named in their errors).
_MAKE_TOKENS = "tldr_jax.retrieval.tokenize(model, texts, max_length)"


def encode_text(
    model: RetrievalModel,
    ids: Any,
    mask: Any,
    *,
    precision: str | None = "float32",
    gpu_tuning: str = "heuristic",
) -> TextFeatures:
    """The text layers and ``text_proj`` for tokenised texts (official ``encode_text`` + ``text_proj``).

    Args:
      model: the retrieval model.
      ids: ``(n, L)`` token ids from :func:`~tldr_jax.text.tokenizer.tokenize`.
      mask: ``(n, L)`` their padding mask.
      precision: float32 matrix-product precision (``"float32"``: the official arithmetic; ``None``
        leaves JAX's setting in charge).
      gpu_tuning: XLA's GEMM settings on a GPU, as :func:`tldr_jax.apply`'s.

    Returns:
      :class:`TextFeatures`; ``embeds`` keep every position, padding included, as the official code does.
    """
    model = check_model(model)
    ids, mask = check_token_ids(ids, mask, model.text_config, make=_MAKE_TOKENS)
    embeds, proj, feat = _encode_text(
        model.text, jnp.asarray(ids), jnp.asarray(mask), cfg=model.text_config, precision=precision,
        gpu_tuning=gpu_tuning,
    )
    return TextFeatures(embeds=embeds, mask=jnp.asarray(mask), proj=proj, feat=feat)


def text_hidden_states(
    model: RetrievalModel, ids: Any, mask: Any, *, precision: str | None = "float32"
) -> Array:
    """``(fusion_layer + 1, n, L, H)``: the embedding output and every text layer's output (official
    ``output_hidden_states=True`` in ``mode="text"``)."""
    model = check_model(model)
    ids, mask = check_token_ids(ids, mask, model.text_config, make=_MAKE_TOKENS)
    with matmul_precision(precision):
        tower = build_text(model.text_config, model.text)
        return jnp.stack(tower.encode(jnp.asarray(ids), jnp.asarray(mask), hidden_states=True))


def encode_texts(
    model: RetrievalModel,
    texts: Sequence[str],
    *,
    max_length: int = 32,
    batch_size: int = 256,
    precision: str | None = "float32",
    gpu_tuning: str = "heuristic",
) -> TextFeatures:
    """Tokenise and encode many texts in batches of ``batch_size`` (the last one padded: one compile).

    ``max_length`` is the dataset's ``max_txt_l`` (:data:`~tldr_jax.retrieval.presets.DATASETS`).
    """
    model = check_model(model)
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
        out = encode_text(model, i, m, precision=precision, gpu_tuning=gpu_tuning)
        parts.append(jax.tree_util.tree_map(lambda a, keep=bs - fill: a[:keep], out))
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)


# --------------------------------------------------------------------------------------------------
# Video.
# --------------------------------------------------------------------------------------------------


def clip_preprocessing(
    model: RetrievalModel, num_frames: int | None = None, trim_seconds: float | None = None
) -> Preprocessing:
    """UMT's evaluation preprocessing for ``model``: how every video file becomes a clip, whether it is
    evaluated, indexed or searched.

    The middle frame of ``num_frames`` (default: the model's) equal segments, short videos repeating their
    last frame, frames resized to ``img_size x img_size`` (bicubic) and ImageNet-normalised, as the
    official test transform; with ``trim_seconds`` only the first seconds of each video (DiDeMo: 30).
    """
    vision = check_model(model).vision
    return preprocessing_for(
        vision, num_frames=num_frames, sampling="middle", pad=True, trim_seconds=trim_seconds
    )


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
    model = check_model(model)
    out = apply(model.vision, video, r, **apply_options)
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


def video_loader(videos: Any, prep: Preprocessing) -> tuple[int, Callable[[Sequence[int]], np.ndarray]]:
    """``(count, load(indices) -> (b, T, H, W, 3))`` for an ``(n, T, H, W, 3)`` array of clips or a list
    of files (decoded with ``prep``, the one clip path) / ``(T, H, W, 3)`` clips.

    Raises:
      ValueError: no videos (at load time: a list item that is neither a path nor a ``(T, H, W, 3)`` clip).
    """
    if hasattr(videos, "shape") and len(videos.shape) == 5:
        return int(videos.shape[0]), lambda idx: np.asarray(videos[np.asarray(idx)])
    items = list(videos)
    if not items:
        raise ValueError("no videos to encode; pass at least one video.")

    def one(i: int) -> np.ndarray:
        item = items[i]
        if isinstance(item, (str, Path)):
            return load_clip(item, prep)
        arr = np.asarray(item)
        if arr.ndim != 4:
            raise ValueError(f"video {i} has shape {arr.shape}; expected a (T, H, W, 3) clip or a file path.")
        return arr

    return len(items), lambda idx: np.stack([one(int(i)) for i in idx])


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
        ``.npy`` clips / ``(T, H, W, 3)`` arrays. Files are read by :func:`tldr_jax.video.load_clip` with
        :func:`clip_preprocessing` in ``workers`` background threads.
      r: merge schedule (``"msrvtt"``, a tuple, 0, ...), as :func:`tldr_jax.apply` takes it.
      batch_size: clips per encoder call; the last batch is padded (one compile per schedule).
      num_frames: frames per clip read from a file (default: the model's).
      trim_seconds: for files: sample only the first seconds (DiDeMo: 30).
      progress: show a progress bar (default: when stderr is a terminal).
      workers: background threads reading video files.
      **apply_options: other :func:`tldr_jax.apply` options.

    Returns:
      :class:`VideoFeatures` holding numpy arrays (the token cache stays in host memory).
    """
    n, load = video_loader(videos, clip_preprocessing(model, num_frames, trim_seconds))
    bs = max(1, min(int(batch_size), n))
    batches = [np.arange(s, min(s + bs, n)) for s in range(0, n, bs)]
    parts: list[VideoFeatures] = []
    with progress_bar(n, "encoding videos", progress, "video") as bar:
        for idx, clips in zip(batches, prefetch(load, batches, workers=workers, depth=workers + 1)):
            if len(clips) < bs:
                clips = np.concatenate([clips, np.repeat(clips[-1:], bs - len(clips), 0)])
            out = encode_video(model, jnp.asarray(clips), r, **apply_options)
            keep = len(idx)
            parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a[:keep]), out))  # noqa: B023 (used at once)
            bar.update(len(idx))
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *parts)
