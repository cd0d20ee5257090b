"""Synthetic clips: a procedural test video, and the small clip embedded in the package.

The embedded clip (``assets/default_clip.npz``) is what ``tldr-jax run`` uses without a video and what
the tests and offline notebooks run on. Regenerate it with ``python -m tldr_jax.video``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.video.decode import write_video
from tldr_jax.video.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from tldr_jax.video.sampling import sample_indices

PathLike = str | os.PathLike
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
#: The small clip shipped in the package (``load_video("default")``, offline notebooks and tests).
DEFAULT_CLIP_PATH = ASSET_DIR / "default_clip.npz"

__all__ = [
    "DEFAULT_CLIP_PATH",
    "build_default_clip",
    "decode_frames_delta",
    "default_clip",
    "default_clip_frames",
    "encode_frames_delta",
    "make_test_video",
    "synthetic_frames",
]


def synthetic_frames(num_frames: int = 32, height: int = 224, width: int | None = None) -> np.ndarray:
    """A deterministic synthetic clip: a red ball and a blue square moving over a soft gradient.

    The ball crosses the frame left to right on an arc, the square moves diagonally, the background is
    a smooth diagonal gradient with faint stripes: salient, moving foreground on a redundant
    background, which is what token merging exploits. Entirely procedural (freely redistributable).

    Returns:
      ``(num_frames, height, width, 3)`` uint8.
    """
    width = int(width or height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    bg = np.stack([0.25 + 0.35 * v, 0.55 + 0.25 * u, 0.35 + 0.3 * (1 - u)], axis=-1)
    bg += 0.04 * np.sin(2 * np.pi * 6 * (u + v))[..., None]
    out = np.empty((num_frames, height, width, 3), np.float32)
    for t in range(num_frames):
        s = t / max(num_frames - 1, 1)
        frame = bg.copy()
        cx, cy = (0.15 + 0.7 * s) * width, (0.35 + 0.2 * np.sin(np.pi * s)) * height
        rad = 0.12 * min(height, width)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        ball = np.clip(rad - d + 0.5, 0.0, 1.0)[..., None]
        glow = np.sqrt((xx - cx + rad / 3) ** 2 + (yy - cy + rad / 3) ** 2) / rad
        shade = np.clip(1.1 - 0.5 * glow, 0.4, 1.0)
        frame = frame * (1 - ball) + ball * np.stack([0.9 * shade, 0.15 * shade, 0.1 * shade], -1)
        sx, sy = (0.75 - 0.45 * s) * width, (0.55 + 0.25 * s) * height
        half = 0.09 * min(height, width)
        sq = np.clip(half - np.abs(xx - sx) + 0.5, 0, 1) * np.clip(half - np.abs(yy - sy) + 0.5, 0, 1)
        sq = sq[..., None]
        frame = frame * (1 - sq) + sq * np.array([0.1, 0.2, 0.85], np.float32)
        out[t] = frame
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def make_test_video(
    path: PathLike, num_frames: int = 24, height: int = 96, width: int = 128, fps: float = 8.0
) -> Path:
    """Write a small synthetic video file (see :func:`synthetic_frames`) for tests and demos."""
    return write_video(path, synthetic_frames(num_frames, height, width), fps)


def encode_frames_delta(frames: np.ndarray) -> np.ndarray:
    """Lossless delta filter for compact storage: temporal, then horizontal differences mod 256."""
    f = np.asarray(frames, np.uint8).astype(np.int16)
    d = np.diff(f, axis=0, prepend=0)
    return np.diff(d, axis=2, prepend=0).astype(np.uint8)


def decode_frames_delta(delta: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_frames_delta` (cumulative sums mod 256)."""
    d = np.cumsum(np.asarray(delta, np.uint8), axis=2, dtype=np.uint8)
    return np.cumsum(d, axis=0, dtype=np.uint8)


def build_default_clip(path: PathLike = DEFAULT_CLIP_PATH, num_frames: int = 32, size: int = 224) -> Path:
    """(Re)generate the embedded default clip asset.

    The asset is a compressed ``.npz`` with ``delta`` (the :func:`encode_frames_delta` of the uint8
    :func:`synthetic_frames`, about 200 KB for 32 frames of 224x224) and ``fps``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    delta = encode_frames_delta(synthetic_frames(num_frames, size, size))
    np.savez_compressed(p, delta=delta, fps=np.float32(8.0))
    return p


@functools.lru_cache(maxsize=1)
def _stored_clip() -> np.ndarray:
    """The decoded asset (cached; callers index it, which copies)."""
    try:
        with np.load(DEFAULT_CLIP_PATH) as data:
            return decode_frames_delta(data["delta"])
    except (OSError, KeyError, ValueError):
        return synthetic_frames(32, 224, 224)


def default_clip_frames(num_frames: int = 16) -> np.ndarray:
    """``num_frames`` uint8 ``(T, 224, 224, 3)`` frames of the embedded 32-frame synthetic clip.

    Up to 32 frames are "middle"-sampled; more are spread evenly over the clip (frames repeat).
    Falls back to regenerating the clip when the asset is missing (a checkout without package data).
    """
    frames = _stored_clip()
    if num_frames <= len(frames):
        idx = sample_indices(len(frames), num_frames, "middle")
    else:
        idx = np.floor(np.arange(num_frames) * len(frames) / num_frames).astype(np.int64)
    return frames[idx]


def default_clip(
    num_frames: int = 16,
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **preprocess_kwargs: Any,
) -> np.ndarray:
    """The embedded synthetic clip, preprocessed: ``(num_frames, img_size, img_size, 3)`` float32.

    The clip has 32 frames; fewer are "middle"-sampled, more repeat the last frame.
    """
    return preprocess(default_clip_frames(num_frames), img_size, mean, std, **preprocess_kwargs)
