"""From a file to a model input: :func:`load_clip`, the one path the command line, batch inference and
the fine-tuning datasets take."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.video.decode import VIDEO_EXTENSIONS, read_video
from tldr_jax.video.preprocess import Preprocessing, preprocess
from tldr_jax.video.sampling import Sampling, sample_indices
from tldr_jax.video.synthetic import default_clip_frames
from tldr_jax.video.windows import Segment

PathLike = str | os.PathLike
#: Suffixes read as stored frame arrays rather than decoded.
NPY_EXTENSIONS: tuple[str, ...] = (".npy",)
#: File suffixes :func:`load_clip` reads: videos and ``.npy`` clips.
CLIP_EXTENSIONS: tuple[str, ...] = VIDEO_EXTENSIONS + NPY_EXTENSIONS

__all__ = ["CLIP_EXTENSIONS", "NPY_EXTENSIONS", "load_clip", "load_video"]


def load_video(
    path: PathLike,
    num_frames: int,
    img_size: int = 224,
    *,
    sampling: Sampling = "middle",
    pad: bool = False,
    trim_seconds: float | None = None,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
    frames: tuple[int, int] | None = None,
    **preprocess_kwargs: Any,
) -> np.ndarray:
    """Read, sample, resize/crop and normalise a video file (:func:`read_video`, then :func:`preprocess`).

    Args:
      path: a video file (anything FFmpeg reads: mp4, avi, webm, mkv, gif, ...).
      num_frames: frames to sample.
      img_size: output height and width.
      sampling: see :func:`sample_indices` (``"middle"``: UMT / vid-TLDR; ``"uniform"``: VideoMAE).
      pad: repeat the last frame when the video is too short (UMT behaviour) instead of raising.
      trim_seconds: sample only the first seconds of the video (DiDeMo: 30), or None.
      progress: show a tqdm progress bar while decoding.
      on_warning: receives the message about a truncated file (default: a :class:`VideoReadWarning`).
      frames: sample only the frames ``[first, stop)`` (a window, :mod:`tldr_jax.video.windows`), or None.
      **preprocess_kwargs: ``mean``, ``std``, ``short_side``, ``resize``, ``interpolation`` of
        :func:`preprocess` (default: ImageNet mean/std, shorter side resized to ``img_size``, centre crop).

    Returns:
      ``(T, img_size, img_size, 3)`` float32 normalised frames; add a batch axis with ``[None]``.

    Raises:
      VideoReadError: missing, unreadable or too-short file (the message says how to fix it).
    """
    decoded = read_video(
        path, num_frames, sampling=sampling, pad=pad, trim_seconds=trim_seconds, progress=progress,
        on_warning=on_warning, frames=frames,
    )
    return preprocess(decoded, img_size, **preprocess_kwargs)


def load_clip(
    path: PathLike | Segment | None,
    prep: Preprocessing,
    *,
    on_warning: Callable[[str], None] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """One model input, ``prep.shape`` float32, from a video file, a ``.npy`` clip or the embedded clip.

    Args:
      path: a video file (decoded with :func:`load_video`), a ``.npy`` clip ``(T, H, W, 3)`` (``uint8``
        pixels are sampled and preprocessed like video frames; floats are taken as already normalised,
        only the frames are sampled), or None / ``"default"`` for the embedded synthetic clip. A video
        is trimmed to ``prep.trim_seconds`` when set; a ``.npy`` clip or the embedded clip never is.
        A :class:`~tldr_jax.video.windows.Segment` (a video file and a window of it) is read as that
        window alone: the frames are sampled within it as ``prep.sampling`` samples a whole video.
      prep: the model's :class:`~tldr_jax.video.preprocess.Preprocessing`
        (:func:`~tldr_jax.video.preprocess.preprocessing_for`).
      on_warning: receives the message about a truncated video (default: a ``VideoReadWarning``).
      progress: show a progress bar while decoding a video.

    Raises:
      VideoReadError: an unreadable or too-short video.
      ValueError: a clip of the wrong shape or dtype, or with NaN / infinite values.
    """
    if path is None or str(path) == "default":
        return preprocess(default_clip_frames(prep.num_frames), prep.img_size, **prep.preprocess_kwargs())
    window = None
    if isinstance(path, Segment):
        path, window = path.path, (path.window.first, path.window.stop)
    path = Path(path)
    if path.suffix.lower() in NPY_EXTENSIONS:
        if window is not None:
            raise ValueError(f"{path.name}: a .npy clip has no frame rate, so no time window; read it whole.")
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"a .npy clip must be (T, H, W, 3); got shape {arr.shape}.")
        if len(arr) == 0:
            raise ValueError(f"the .npy clip {path.name!r} has no frames (shape {arr.shape}).")
        arr = np.asarray(arr[sample_indices(len(arr), prep.num_frames, prep.sampling, pad=prep.pad)])
        if arr.dtype == np.uint8:
            clip = preprocess(arr, prep.img_size, **prep.preprocess_kwargs())
        elif np.issubdtype(arr.dtype, np.floating):
            clip = arr.astype(np.float32)
        else:
            raise ValueError(
                f"a .npy clip must hold uint8 pixels or normalised floats; got dtype {arr.dtype}."
            )
    else:
        clip = load_video(
            path, prep.num_frames, sampling=prep.sampling, img_size=prep.img_size, pad=prep.pad,
            trim_seconds=prep.trim_seconds, progress=progress, on_warning=on_warning, frames=window,
            **prep.preprocess_kwargs(),
        )
    if clip.shape != prep.shape:
        raise ValueError(f"clip has shape {clip.shape}; the model needs {prep.shape}.")
    if not np.isfinite(clip).all():
        raise ValueError(f"clip {path.name!r} holds NaN or infinite values; it would give NaN features.")
    return clip
