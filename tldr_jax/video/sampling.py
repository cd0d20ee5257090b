"""Frame sampling: which frames of a ``total``-frame video become the model's ``num_frames``.

* ``"middle"`` -- UMT / vid-TLDR evaluation (``get_frame_indices(..., sample="middle")`` in the UMT
  code): split ``[0, total)`` into ``num_frames`` equal segments (boundaries
  ``linspace(0, total, num_frames + 1)`` truncated to ints) and take the middle frame
  ``(start + end - 1) // 2`` of each.
* ``"uniform"`` -- VideoMAE single-clip sampling: ``num_frames`` frames ``frame_stride`` apart (the
  Kinetics fine-tuning stride is 4, i.e. a 64-frame window for 16 frames), the window centred in the
  video (VideoMAE's single-view test crop; the Hugging Face example draws the window at random). When
  the video is shorter than the window, the window shrinks to the whole video
  (``linspace(start, end, num_frames)`` as the Hugging Face ``sample_frame_indices`` example does).
* ``"linspace"`` -- evenly spaced over the whole video, both ends included.
* ``"first"`` -- the first ``num_frames`` consecutive frames.

Every mode needs ``total >= num_frames`` unless ``pad=True``, which repeats the last sampled frame as
the UMT code does for short videos.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["middle", "uniform", "linspace", "first"]
#: The frame sampling modes :func:`sample_indices` accepts.
SAMPLING_MODES: tuple[str, ...] = ("middle", "uniform", "linspace", "first")

__all__ = ["SAMPLING_MODES", "Sampling", "sample_indices"]


def _pad_to(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """Repeat the last index until there are ``num_frames`` (UMT's padding of short videos)."""
    if len(indices) >= num_frames:
        return indices[:num_frames]
    pad = np.full(num_frames - len(indices), indices[-1], dtype=indices.dtype)
    return np.concatenate([indices, pad])


def _middle(total: int, n: int) -> np.ndarray:
    bounds = np.linspace(0, total, n + 1).astype(np.int64)
    return (bounds[:-1] + bounds[1:] - 1) // 2


def _uniform(total: int, n: int, stride: int) -> np.ndarray:
    span = n * stride
    if span <= total:
        start = (total - span) // 2
        return start + stride * np.arange(n, dtype=np.int64)
    return np.linspace(0, total - 1, n).round().astype(np.int64)


def sample_indices(
    total: int,
    num_frames: int,
    mode: Sampling = "middle",
    *,
    frame_stride: int = 4,
    pad: bool = False,
) -> np.ndarray:
    """Indices of the frames to read from a video of ``total`` frames.

    Args:
      total: number of frames in the video.
      num_frames: number of frames wanted.
      mode: ``"middle"`` (UMT / vid-TLDR), ``"uniform"`` (VideoMAE single clip), ``"linspace"`` or
        ``"first"``; see the module docstring.
      frame_stride: the stride of ``"uniform"`` sampling (VideoMAE Kinetics: 4).
      pad: allow ``total < num_frames`` by repeating the last frame (UMT behaviour).

    Returns:
      ``(num_frames,)`` int64 indices, non-decreasing, in ``[0, total)``.

    Example: ``sample_indices(100, 4, "middle") -> [12, 37, 62, 87]``.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}.")
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int; got {num_frames!r}.")
    if int(frame_stride) != frame_stride or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive int; got {frame_stride!r}.")
    total, num_frames = int(total), int(num_frames)
    if total < 1:
        raise ValueError("the video has no frames.")
    if total < num_frames and not pad:
        raise ValueError(
            f"the video has {total} frames but {num_frames} are needed; sample fewer frames or pass "
            "pad=True to repeat the last frame."
        )
    n = min(total, num_frames)
    if mode == "middle":
        idx = _middle(total, n)
    elif mode == "uniform":
        idx = _uniform(total, n, int(frame_stride))
    elif mode == "linspace":
        idx = np.linspace(0, total - 1, n).round().astype(np.int64)
    else:
        idx = np.arange(n, dtype=np.int64)
    return _pad_to(idx, num_frames)
