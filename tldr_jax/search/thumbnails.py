"""Thumbnails of indexed videos: a representative frame as a small JPEG, made on first request and cached.

The frame is the middle one of the video (or ``.npy`` clip, or of the window for an index of windows),
never the first (often black in real footage); when the middle frame is dark too, the brightest of a few
frames spread over the clip (or window) is used. Thumbnails are cached in ``INDEX/thumbnails/<content
hash>.jpg`` (``<content hash>-<first>-<stop>.jpg`` for a window's frames): keyed by the file's content
like the feature cache, so a re-index keeps them and a changed file gets a new one. An index folder that
cannot be written still serves thumbnails (made again each time).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tldr_jax.files import cached_bytes
from tldr_jax.search.index import VideoIndex
from tldr_jax.video.clip import NPY_EXTENSIONS
from tldr_jax.video.decode import count_frames, decode_frames

THUMBNAIL_DIR = "thumbnails"
#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 320
#: Mean pixel value (0-255) below which a frame counts as dark.
DARK = 16.0
#: Fractions of the clip tried when the middle frame is dark.
FALLBACK_POSITIONS = (0.25, 0.75, 0.4, 0.6)

__all__ = ["THUMBNAIL_DIR", "representative_frame", "thumbnail"]


def _as_uint8(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` frames as uint8: floats (normalised ``.npy`` clips) are stretched to 0-255."""
    if frames.dtype == np.uint8:
        return frames
    f = np.nan_to_num(np.asarray(frames, np.float32))
    lo, hi = float(f.min()), float(f.max())
    return np.round((f - lo) * (255.0 / (hi - lo if hi > lo else 1.0))).astype(np.uint8)


def _pick(total: int, frame_at: Callable[[int], np.ndarray]) -> np.ndarray:
    """The middle frame, or the brightest of :data:`FALLBACK_POSITIONS` when it is dark."""
    middle = frame_at(total // 2)
    if middle.mean() >= DARK or total < 3:
        return middle
    tried = [middle] + [frame_at(min(total - 1, int(total * p))) for p in FALLBACK_POSITIONS]
    return max(tried, key=lambda f: float(f.mean()))


def representative_frame(path: Path, frames: tuple[int, int] | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8: the frame a thumbnail of the video or ``.npy`` clip at ``path`` shows; with
    ``frames=(first, stop)``, of those frames of the video (a window).

    Raises:
      VideoReadError / ValueError: the file cannot be read or holds no frames.
    """
    if path.suffix.lower() in NPY_EXTENSIONS:
        clip = np.load(path, mmap_mode="r", allow_pickle=False)
        if clip.ndim != 4 or len(clip) == 0:
            raise ValueError(f"{path}: a clip of shape {clip.shape}, not (T, H, W, 3); no thumbnail.")
        return _pick(len(clip), lambda i: _as_uint8(np.asarray(clip[i : i + 1]))[0])
    total = count_frames(path)
    if total <= 0:
        total = count_frames(path, exact=True)
    first = 0
    if frames is not None:
        first, total = frames[0], min(frames[1], max(total, 1)) - frames[0]

    def frame_at(i: int) -> np.ndarray:
        decoded, _ = decode_frames(path, [first + i])
        if len(decoded) == 0:  # the container over-reported its length
            decoded, _ = decode_frames(path, [0])
        return decoded[0]

    return _pick(max(total, 1), frame_at)


def _encode(frame: np.ndarray) -> bytes:
    img = Image.fromarray(frame)
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail(index: VideoIndex, row: int) -> bytes:
    """The JPEG thumbnail of row ``row``: read from the cache, or made from
    :func:`representative_frame` and cached (written atomically; skipped when the folder is read-only).

    Raises:
      IndexError: no such row. ValueError: the recorded path lies outside the collection root, or the
        file has no frames. VideoReadError: the file is missing or unreadable.
    """
    if not 0 <= row < len(index):
        raise IndexError(f"no video {row}: the index holds rows 0 to {len(index) - 1}.")
    entry = index.entries[row]
    cached = index.path / THUMBNAIL_DIR / f"{Path(entry.result_name).stem}.jpg"
    def make() -> bytes:
        return _encode(representative_frame(index.video_path(row), entry.frame_range))

    return cached_bytes(cached, make)
