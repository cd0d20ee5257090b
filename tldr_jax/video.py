"""Video input: decoding, frame sampling, resizing/cropping, normalisation, and a synthetic test clip.

Decoding uses PyAV (``pip install av``: a wheel that bundles FFmpeg); it is imported lazily, so the
rest of this module (sampling, :func:`preprocess`, :func:`default_clip`) needs only numpy and jax.

Frame sampling (:func:`sample_indices`), for a video of ``total`` frames and ``num_frames`` wanted:

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

Normalisation constants (:data:`NORMALIZATION`), all on the ``[0, 1]`` pixel scale:

* ``"umt"`` -- ImageNet mean/std ``(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)`` (UMT's
  ``transforms.Normalize`` after ``div(255)``).
* ``"videomae"`` -- ImageNet mean/std as well (the original VideoMAE code and the ``MCG-NJU/videomae-*``
  ``preprocessor_config.json``; note that the bare ``VideoMAEImageProcessor()`` class default is
  0.5/0.5, which the hub configs override).
* ``"vivit"`` -- mean = std = 0.5, i.e. pixels mapped to ``[-1, 1]``, the range the original Scenic
  ViViT was trained on.
* ``"vivit_hf"`` -- what ``transformers.VivitImageProcessor`` (defaults and the ``google/vivit-*``
  hub config) actually produces: it rescales to ``[-1, 1]`` (``offset=True``, ``rescale_factor=1/127.5``)
  and then normalises again with mean = std = 0.5, giving ``[-3, 1]``; on the ``[0, 1]`` scale that is
  mean 0.75, std 0.25. Use it to reproduce Hugging Face ViViT numbers exactly.

Resizing (:data:`RESIZE`): UMT's test transform squashes frames to ``img_size x img_size`` (bicubic);
VideoMAE resizes the shorter side to 224 and centre-crops 224; ViViT resizes the shorter side to 256
and centre-crops 224. :func:`preprocessing_for` returns these per-family settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import functools
import math
import numbers
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

PathLike = str | os.PathLike

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Per-family ``(mean, std)`` on the ``[0, 1]`` pixel scale (see the module docstring).
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "umt": (IMAGENET_MEAN, IMAGENET_STD),
    "videomae": (IMAGENET_MEAN, IMAGENET_STD),
    "vivit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vivit_hf": ((0.75, 0.75, 0.75), (0.25, 0.25, 0.25)),
}

Sampling = Literal["middle", "uniform", "linspace", "first"]
SAMPLING_MODES: tuple[str, ...] = ("middle", "uniform", "linspace", "first")

ResizeMode = Literal["crop", "squash"]
RESIZE_MODES: tuple[str, ...] = ("crop", "squash")
INTERPOLATIONS: tuple[str, ...] = ("linear", "cubic", "lanczos3", "nearest")

#: Per-family resize: ``(mode, shorter side / img_size, interpolation)``.
RESIZE: dict[str, tuple[str, float, str]] = {
    "umt": ("squash", 1.0, "cubic"),
    "videomae": ("crop", 1.0, "linear"),
    "vivit": ("crop", 256 / 224, "linear"),
}

#: Per-family default frame sampling.
DEFAULT_SAMPLING: dict[str, str] = {"umt": "middle", "videomae": "uniform", "vivit": "uniform"}

#: Codecs :func:`write_video` tries, by file suffix ("" for any other).
CODECS: dict[str, tuple[str, ...]] = {
    "": ("libx264", "h264", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mpeg4", "libx264"),
}

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg")
NPY_EXTENSIONS: tuple[str, ...] = (".npy",)
#: File suffixes :func:`load_clip` reads: videos and ``.npy`` clips.
CLIP_EXTENSIONS: tuple[str, ...] = VIDEO_EXTENSIONS + NPY_EXTENSIONS

ASSET_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_CLIP_PATH = ASSET_DIR / "default_clip.npz"

__all__ = [
    "NORMALIZATION",
    "RESIZE",
    "SAMPLING_MODES",
    "VideoReadError",
    "VideoReadWarning",
    "count_frames",
    "decode_frames",
    "default_clip",
    "default_clip_frames",
    "load_video",
    "load_video_for",
    "make_test_video",
    "preprocess",
    "preprocessing_for",
    "read_video",
    "sample_indices",
    "synthetic_frames",
    "write_video",
]


class VideoReadError(ValueError):
    """A video file could not be used: missing, unreadable, or with too few frames.

    The message names the file, what was found, what was needed, and how to fix it.
    """


class VideoReadWarning(UserWarning):
    """A video file was usable but suspicious (e.g. truncated: fewer frames decode than it lists)."""


# --------------------------------------------------------------------------------------------------
# Frame sampling.
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Resizing, cropping, normalisation.
# --------------------------------------------------------------------------------------------------


def _as_rgb_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"frames must be a (T, H, W, 3) RGB array; got shape {arr.shape}. Channels-first input needs "
            "frames.transpose(0, 2, 3, 1)."
        )
    return arr


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side scaled to ``short_side``, aspect kept (Hugging Face rounding)."""
    if height <= width:
        return short_side, max(1, int(short_side * width / height))
    return max(1, int(short_side * height / width)), short_side


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre crop ``(T, H, W, C)`` frames to ``size x size`` (top/left offset ``(H - size) // 2``)."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"cannot crop {h}x{w} frames to {size}x{size}; resize them first.")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


def _resize(frames: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    """Resize ``(T, H, W, C)`` float frames to ``shape`` with ``jax.image.resize`` (antialiased)."""
    if tuple(frames.shape[1:3]) == tuple(shape):
        return frames
    import jax

    t, _, _, c = frames.shape
    out = jax.image.resize(frames, (t, *shape, c), method=method, antialias=True)
    return np.asarray(out, dtype=np.float32)


def preprocess(
    frames: Any,
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    short_side: int | None = None,
    resize: ResizeMode = "crop",
    interpolation: str = "linear",
) -> np.ndarray:
    """Resize, crop and normalise RGB frames for a model.

    Args:
      frames: ``(T, H, W, 3)`` uint8 frames (0..255), or floats already in ``[0, 1]``.
      img_size: output height and width.
      mean, std: per-channel normalisation on the ``[0, 1]`` scale (see :data:`NORMALIZATION`).
      short_side: ``"crop"`` mode: the shorter side is resized to this first (default ``img_size``;
        ViViT uses 256 for 224 crops).
      resize: ``"crop"`` (resize the shorter side, then centre crop; VideoMAE / ViViT) or ``"squash"``
        (resize straight to ``img_size x img_size``; UMT's test transform).
      interpolation: ``jax.image.resize`` method: ``"linear"``, ``"cubic"``, ``"lanczos3"``, ``"nearest"``.

    Returns:
      ``(T, img_size, img_size, 3)`` float32, ``(pixel / 255 - mean) / std``.
    """
    arr = _as_rgb_frames(frames)
    mean, std = check_mean_std(mean, std)
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}; got {resize!r}.")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")
    if int(img_size) != img_size or img_size < 1:
        raise ValueError(f"img_size must be a positive int; got {img_size!r}.")
    x = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0)
    _, h, w, _ = x.shape
    if resize == "squash":
        x = _resize(x, (img_size, img_size), interpolation)
    else:
        short = int(short_side or img_size)
        if short < img_size:
            raise ValueError(f"short_side {short} is smaller than the crop size {img_size}.")
        x = center_crop(_resize(x, resized_shape(h, w, short), interpolation), img_size)
    m = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    return ((x - m) / s).astype(np.float32)


def check_mean_std(mean: Any, std: Any, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``mean`` / ``std`` as float tuples: ``channels`` finite values each, ``std > 0``."""
    out = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            v = tuple(float(x) for x in np.asarray(values, np.float64).reshape(-1))
        except (TypeError, ValueError):
            v = ()
        if len(v) != channels or not all(math.isfinite(x) for x in v):
            raise ValueError(f"{name} must be {channels} finite numbers (one per channel); got {values!r}.")
        out.append(v)
    if min(out[1]) <= 0:
        raise ValueError(f"std must be > 0 for every channel; got {std!r} (0 would divide by zero).")
    return out[0], out[1]


def denormalize(
    frames: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Invert the normalisation: float ``(..., 3)`` frames back to uint8 RGB."""
    x = np.asarray(frames, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model family expects its frames (:func:`preprocessing_for`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    short_side: int
    interpolation: str
    sampling: str

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`preprocess` (without ``img_size``)."""
        return {
            "mean": self.mean, "std": self.std, "short_side": self.short_side,
            "resize": self.resize, "interpolation": self.interpolation,
        }


def preprocessing_for(family: str, img_size: int = 224, *, normalization: str | None = None) -> Preprocessing:
    """The evaluation preprocessing of a model family (``"umt"``, ``"videomae"``, ``"vivit"``).

    ``normalization`` overrides the mean/std key (e.g. ``"vivit_hf"``).
    """
    if family not in RESIZE:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(RESIZE)}.")
    key = normalization or family
    if key not in NORMALIZATION:
        raise ValueError(f"unknown normalization {key!r}; known: {', '.join(NORMALIZATION)}.")
    mean, std = NORMALIZATION[key]
    mode, ratio, interp = RESIZE[family]
    return Preprocessing(mean, std, mode, int(round(img_size * ratio)), interp, DEFAULT_SAMPLING[family])


# --------------------------------------------------------------------------------------------------
# Decoding (PyAV).
# --------------------------------------------------------------------------------------------------


def _import_av() -> Any:
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing video files needs PyAV: pip install av  (a wheel that bundles FFmpeg). "
            "Without it use tldr_jax.video.default_clip() or pass decoded frames to preprocess()."
        ) from err
    return av


def _av_errors(av: Any) -> tuple[type[BaseException], ...]:
    """PyAV's error base class (``FFmpegError``; ``AVError`` in old releases) plus OSError."""
    base = getattr(av, "FFmpegError", None) or getattr(av, "AVError", None) or OSError
    return (base, OSError)


def _check_path(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        hint = ""
        if p.parent.is_dir():
            near = sorted(x.name for x in p.parent.iterdir() if x.suffix.lower() in VIDEO_EXTENSIONS)[:5]
            if near:
                hint = f" Videos in {p.parent}: {', '.join(near)}."
        raise VideoReadError(f"video file not found: {str(p)!r}. Check the path.{hint}")
    if p.is_dir():
        raise VideoReadError(f"{str(p)!r} is a directory, not a video file; pass a file such as clip.mp4.")
    if p.stat().st_size == 0:
        raise VideoReadError(f"video file {str(p)!r} is empty (0 bytes); re-download or re-encode it.")
    return p


def _open(path: Path) -> Any:
    av = _import_av()
    try:
        container = av.open(str(path))
    except (*_av_errors(av), ValueError) as err:
        raise VideoReadError(
            f"cannot read {str(path)!r} as a video ({type(err).__name__}: {err}). Is it a video file "
            "(mp4, avi, webm, ...)? Re-encode it with e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`."
        ) from err
    if not container.streams.video:
        container.close()
        raise VideoReadError(
            f"{str(path)!r} has no video stream (is it an audio file?); pass a video file."
        )
    return container


def _iter_frames(container: Any, path: Path, progress: bool, total: int | None, desc: str) -> Any:
    av = _import_av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frames = container.decode(stream)
    if progress:
        from tqdm.auto import tqdm

        frames = tqdm(frames, total=total or None, desc=desc, unit="frame", leave=False)
    try:
        yield from frames
    except _av_errors(av) as err:
        raise VideoReadError(
            f"error while decoding {str(path)!r} ({type(err).__name__}: {err}); the file may be truncated "
            "or corrupt. Re-encode it with `ffmpeg -i IN -c:v libx264 OUT.mp4`."
        ) from err


def count_frames(path: PathLike, *, exact: bool = False) -> int:
    """Number of frames of a video: the container's count, or a full decode when ``exact`` or unknown."""
    p = _check_path(path)
    with _open(p) as container:
        n = int(container.streams.video[0].frames or 0)
        if n > 0 and not exact:
            return n
        return sum(1 for _ in _iter_frames(container, p, False, None, "counting"))


def decode_frames(
    path: PathLike, indices: Sequence[int] | None = None, *, progress: bool = False
) -> tuple[np.ndarray, int]:
    """Decode the frames at ``indices`` (all frames when None) as ``(len, H, W, 3)`` uint8 RGB.

    Returns the frames and the number of frames decoded in total. Indices past the end of the video
    are dropped (the caller checks the count).
    """
    p = _check_path(path)
    wanted = None if indices is None else np.asarray(indices, np.int64)
    wanted_set = None if wanted is None else frozenset(wanted.tolist())
    keep: dict[int, np.ndarray] = {}
    last_needed = None if wanted is None else int(wanted.max(initial=-1))
    seen = 0
    with _open(p) as container:
        reported = int(container.streams.video[0].frames or 0)
        for i, frame in enumerate(_iter_frames(container, p, progress, reported, f"decoding {p.name}")):
            seen = i + 1
            if wanted_set is None or i in wanted_set:
                keep[i] = frame.to_ndarray(format="rgb24")
            if last_needed is not None and i >= last_needed:
                break
    order = range(seen) if wanted is None else [int(i) for i in wanted if int(i) in keep]
    if not order:
        return np.zeros((0, 0, 0, 3), np.uint8), seen
    return np.stack([keep[i] for i in order]), seen


def _too_short(path: Path, found: int, needed: int, listed: int = 0) -> VideoReadError:
    damaged = (
        f" that decode (the container lists {listed}: the file looks truncated or damaged; re-encode or "
        "re-download it)" if listed > found else ""
    )
    return VideoReadError(
        f"video {str(path)!r} has {found} frame(s){damaged} but {needed} are needed. Fix: sample "
        f"fewer frames (num_frames <= {found}, e.g. --frames {max(1, found)}), pass pad=True (--pad) to "
        "repeat the last frame as UMT does, or use a longer video."
    )


def _warn(on_warning: Callable[[str], None] | None, message: str) -> None:
    """Report a usable but suspicious input to ``on_warning``, else as a :class:`VideoReadWarning`."""
    if on_warning is not None:
        on_warning(message)
    else:
        warnings.warn(message, VideoReadWarning, stacklevel=3)


def read_video(
    path: PathLike,
    num_frames: int,
    *,
    sampling: Sampling = "middle",
    frame_stride: int = 4,
    pad: bool = False,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Decode ``num_frames`` sampled frames as ``(T, H, W, 3)`` uint8 RGB (no resizing).

    Raises :class:`VideoReadError` for missing, unreadable or too-short files. A file whose container
    lists more frames than decode (truncated or damaged) is sampled from the frames that decode, with
    a warning: passed to ``on_warning(message)`` when given, else a :class:`VideoReadWarning`.
    """
    p = _check_path(path)
    listed = total = count_frames(p)
    if total < num_frames and not pad:
        total = count_frames(p, exact=True)
        if total < num_frames:
            raise _too_short(p, total, num_frames)
    if total == 0:
        raise VideoReadError(f"video {str(p)!r} has no decodable frames; re-encode or replace it.")
    idx = sample_indices(total, num_frames, sampling, frame_stride=frame_stride, pad=pad)
    frames, seen = decode_frames(p, idx, progress=progress)
    if len(frames) < num_frames:
        # The container over-reported its frame count: resample with the true count.
        true_total = count_frames(p, exact=True)
        if true_total < num_frames and not pad:
            raise _too_short(p, true_total, num_frames, listed)
        if true_total == 0:
            raise VideoReadError(f"video {str(p)!r} has no decodable frames; re-encode or replace it.")
        _warn(
            on_warning,
            f"video {str(p)!r}: the container lists {listed} frames but only {true_total} decode (truncated "
            f"or damaged file); the {num_frames} frames were sampled from those {true_total}. Re-encode or "
            "re-download it for the whole video.",
        )
        idx = sample_indices(true_total, num_frames, sampling, frame_stride=frame_stride, pad=pad)
        frames, seen = decode_frames(p, idx, progress=progress)
    return frames


def load_video(
    path: PathLike,
    num_frames: int,
    *,
    sampling: Sampling = "middle",
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    short_side: int | None = None,
    resize: ResizeMode = "crop",
    interpolation: str = "linear",
    frame_stride: int = 4,
    pad: bool = False,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Read, sample, resize/crop and normalise a video file.

    Args:
      path: a video file (anything FFmpeg reads: mp4, avi, webm, mkv, gif, ...).
      num_frames: frames to sample.
      sampling: see :func:`sample_indices` (``"middle"``: UMT / vid-TLDR; ``"uniform"``: VideoMAE).
      img_size, mean, std, short_side, resize, interpolation: see :func:`preprocess`.
      frame_stride: stride of ``"uniform"`` sampling.
      pad: repeat the last frame when the video is too short (UMT behaviour) instead of raising.
      progress: show a tqdm progress bar while decoding.
      on_warning: receives the message about a truncated file (default: a :class:`VideoReadWarning`).

    Returns:
      ``(T, img_size, img_size, 3)`` float32 normalised frames; add a batch axis with ``[None]``.

    Raises:
      VideoReadError: missing, unreadable or too-short file (the message says how to fix it).
    """
    frames = read_video(
        path, num_frames, sampling=sampling, frame_stride=frame_stride, pad=pad, progress=progress,
        on_warning=on_warning,
    )
    return preprocess(
        frames, img_size, mean, std, short_side=short_side, resize=resize, interpolation=interpolation
    )


def load_clip(
    path: PathLike,
    num_frames: int,
    *,
    img_size: int,
    sampling: Sampling = "middle",
    pad: bool = False,
    on_warning: Callable[[str], None] | None = None,
    **preprocess_kwargs: Any,
) -> np.ndarray:
    """One model input from a video file or a ``.npy`` clip, as ``(num_frames, img_size, img_size, 3)``.

    A ``.npy`` clip is ``(T, H, W, 3)``: ``uint8`` pixels are sampled and preprocessed like video
    frames; floats are taken as already normalised (only the frames are sampled). Video files go through
    :func:`load_video` (``on_warning`` as there). ``preprocess_kwargs`` are those of :func:`preprocess`
    (mean, std, resize, ...).

    Raises:
      VideoReadError: an unreadable or too-short video. ``ValueError``: a clip of the wrong shape or
      dtype, or with NaN / infinite values.
    """
    path = Path(path)
    want = (int(num_frames), int(img_size), int(img_size), 3)
    if path.suffix.lower() in NPY_EXTENSIONS:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"a .npy clip must be (T, H, W, 3); got shape {arr.shape}.")
        if len(arr) == 0:
            raise ValueError(f"the .npy clip {path.name!r} has no frames (shape {arr.shape}).")
        arr = np.asarray(arr[sample_indices(len(arr), num_frames, sampling, pad=pad)])
        if arr.dtype == np.uint8:
            clip = preprocess(arr, img_size, **preprocess_kwargs)
        elif np.issubdtype(arr.dtype, np.floating):
            clip = arr.astype(np.float32)
        else:
            raise ValueError(
                f"a .npy clip must hold uint8 pixels or normalised floats; got dtype {arr.dtype}."
            )
    else:
        clip = load_video(
            path, num_frames, sampling=sampling, img_size=img_size, pad=pad, on_warning=on_warning,
            **preprocess_kwargs,
        )
    if clip.shape != want:
        raise ValueError(f"clip has shape {clip.shape}; the model needs {want}.")
    if not np.isfinite(clip).all():
        raise ValueError(f"clip {path.name!r} holds NaN or infinite values; it would give NaN features.")
    return clip


def _config_of(model: Any) -> Any:
    cfg = getattr(model, "config", model)
    if isinstance(cfg, str):
        from tldr_jax.configs import get_config

        cfg = get_config(cfg)
    if not hasattr(cfg, "family"):
        raise TypeError(
            f"expected Params, an ArchConfig or an architecture name; got {type(model).__name__}."
        )
    return cfg


def load_video_for(
    path: PathLike | None,
    model: Any,
    *,
    num_frames: int | None = None,
    sampling: Sampling | None = None,
    normalization: str | None = None,
    pad: bool = False,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> np.ndarray:
    """A video preprocessed the way a model's family expects (frames, size, sampling, normalisation).

    Args:
      path: a video file, or None / ``"default"`` for the embedded synthetic clip.
      model: :class:`tldr_jax.Params`, an ``ArchConfig`` or an architecture name.
      num_frames: frames to sample (default: the model's ``num_frames``).
      sampling: override the family default (:data:`DEFAULT_SAMPLING`).
      normalization: override the mean/std key of :data:`NORMALIZATION` (e.g. ``"vivit_hf"``).
      pad, progress, on_warning: see :func:`load_video`.

    Returns:
      ``(T, H, W, 3)`` float32.
    """
    cfg = _config_of(model)
    prep = preprocessing_for(cfg.family, cfg.img_size, normalization=normalization)
    n = int(num_frames or cfg.num_frames)
    if path is None or str(path) == "default":
        return preprocess(default_clip_frames(n), cfg.img_size, **prep.kwargs())
    return load_video(
        path, n, sampling=sampling or prep.sampling, img_size=cfg.img_size, pad=pad, progress=progress,
        on_warning=on_warning, **prep.kwargs(),
    )


# --------------------------------------------------------------------------------------------------
# Writing and synthetic clips.
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (same suffix) to write to: renamed to ``path`` when the block
    succeeds, removed when it fails, so ``path`` is either complete or untouched."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{p.suffix}")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_fps(fps: Any) -> float:
    """``fps`` as a positive finite float (``ValueError`` otherwise)."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number of frames per second; got {fps!r}.")
    return float(fps)


def write_video(path: PathLike, frames: Any, fps: float = 8.0, *, codec: str | None = None) -> Path:
    """Write ``(T, H, W, 3)`` uint8 RGB frames to a video file (``.gif`` via Pillow, else PyAV).

    Odd sizes are padded to even for yuv420p codecs. The file appears only once complete (written to
    a temporary sibling first). Returns the path.
    """
    fps = check_fps(fps)
    arr = _as_rgb_frames(frames)
    if len(arr) == 0 or 0 in arr.shape[1:3]:
        raise ValueError(f"no frames to write: got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    p = Path(path)
    if p.suffix.lower() == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in arr]
        with atomic_output(p) as tmp:
            imgs[0].save(
                tmp, save_all=True, append_images=imgs[1:], duration=max(1, int(round(1000 / fps))), loop=0
            )
        return p
    av = _import_av()
    h, w = arr.shape[1:3]
    arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_output(p) as tmp:
        _encode(av, tmp, arr, fractions.Fraction(fps).limit_denominator(1001), codec)
    return p


def _encode(av: Any, path: Path, arr: np.ndarray, rate: fractions.Fraction, codec: str | None) -> None:
    """Encode uint8 ``(T, H, W, 3)`` frames (even sizes) with the first available codec."""
    names = [codec] if codec else list(CODECS.get(path.suffix.lower(), CODECS[""]))
    with av.open(str(path), mode="w") as container:
        stream = None
        for name in names:
            try:
                stream = container.add_stream(name, rate=rate)
                break
            except (*_av_errors(av), ValueError, KeyError):
                continue
        if stream is None:
            raise ValueError(
                f"none of the codecs {names} can write {path.suffix} files in this FFmpeg build; use .mp4 "
                "or .gif."
            )
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name in ("libx264", "h264"):
            stream.options = {"crf": "18"}
        for f in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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


if __name__ == "__main__":  # regenerate the asset: python -m tldr_jax.video
    print(build_default_clip())
