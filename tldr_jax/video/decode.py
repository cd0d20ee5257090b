"""Decoding and encoding video files with PyAV (``pip install av``: a wheel that bundles FFmpeg).

PyAV is imported lazily, so the rest of :mod:`tldr_jax.video` needs only numpy and jax. Reading
refuses missing, empty, unreadable and too-short files with a :class:`VideoReadError` that says how to
fix them; a truncated file (fewer frames decode than its container lists) is used with a
:class:`VideoReadWarning`.
"""

from __future__ import annotations

import fractions
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.files import atomic_output
from tldr_jax.video.preprocess import as_rgb_frames
from tldr_jax.video.sampling import Sampling, sample_indices

PathLike = str | os.PathLike

#: Codecs :func:`write_video` tries, by file suffix ("" for any other).
CODECS: dict[str, tuple[str, ...]] = {
    "": ("libx264", "h264", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mpeg4", "libx264"),
}

#: Suffixes decoded as videos (PyAV).
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg")

__all__ = [
    "CODECS",
    "VIDEO_EXTENSIONS",
    "VideoReadError",
    "VideoReadWarning",
    "check_fps",
    "count_frames",
    "decode_frames",
    "frame_rate",
    "frames_within",
    "read_video",
    "write_video",
]


class VideoReadError(ValueError):
    """A video file could not be used: missing, unreadable, or with too few frames.

    The message names the file, what was found, what was needed, and how to fix it.
    """


class VideoReadWarning(UserWarning):
    """A video file was usable but suspicious (e.g. truncated: fewer frames decode than it lists)."""


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


def frame_rate(path: PathLike) -> fractions.Fraction | None:
    """The average frame rate a video file records (exact, e.g. ``30000/1001``), or None when it records
    none."""
    p = _check_path(path)
    with _open(p) as container:
        rate = container.streams.video[0].average_rate
    return fractions.Fraction(rate) if rate else None


def frames_within(path: PathLike, seconds: float) -> int:
    """Frames in the first ``seconds`` of a video: ``int(seconds * fps)`` (at least 1), as the official
    ``trimmed30`` reading counts them; unbounded (``sys.maxsize``) when the file records no frame rate."""
    p = _check_path(path)
    with _open(p) as container:
        rate = container.streams.video[0].average_rate
    if not rate:
        return sys.maxsize
    return max(1, int(seconds * float(rate)))


def read_video(
    path: PathLike,
    num_frames: int,
    *,
    sampling: Sampling = "middle",
    frame_stride: int = 4,
    pad: bool = False,
    trim_seconds: float | None = None,
    progress: bool = False,
    on_warning: Callable[[str], None] | None = None,
    frames: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode ``num_frames`` sampled frames as ``(T, H, W, 3)`` uint8 RGB (no resizing).

    With ``trim_seconds`` the frames are sampled from the first :func:`frames_within` that many seconds.
    With ``frames=(first, stop)`` (a window, :mod:`tldr_jax.video.windows`) they are sampled from the
    frames ``[first, stop)`` alone, as a whole video is sampled (a window past the frames that decode
    is cut to them).
    Raises :class:`VideoReadError` for missing, unreadable or too-short files. A file whose container
    lists more frames than decode (truncated or damaged) is sampled from the frames that decode, with
    a warning: passed to ``on_warning(message)`` when given, else a :class:`VideoReadWarning`.
    """
    p = _check_path(path)
    limit = sys.maxsize if trim_seconds is None else frames_within(p, trim_seconds)
    first = 0
    if frames is not None:
        first, stop = _check_frames(frames)
        limit = min(limit, stop)

    def span(count: int) -> int:  # frames of the video (or window) sampled from
        return max(0, min(count, limit) - first)

    listed = count_frames(p)
    total = span(listed)
    if total < num_frames and not pad:
        total = span(count_frames(p, exact=True))
        if total < num_frames:
            raise _too_short(p, total, num_frames)
    if total == 0:
        raise VideoReadError(
            f"video {str(p)!r} has no decodable frames{_at(frames)}; re-encode or replace it."
        )
    idx = first + sample_indices(total, num_frames, sampling, frame_stride=frame_stride, pad=pad)
    decoded, seen = decode_frames(p, idx, progress=progress)
    if len(decoded) < num_frames:
        # The container over-reported its frame count: resample with the true count.
        true_total = span(count_frames(p, exact=True))
        if true_total < num_frames and not pad:
            raise _too_short(p, true_total, num_frames, listed)
        if true_total == 0:
            raise VideoReadError(
                f"video {str(p)!r} has no decodable frames{_at(frames)}; re-encode or replace it."
            )
        _warn(
            on_warning,
            f"video {str(p)!r}: the container lists {listed} frames but only {true_total} decode (truncated "
            f"or damaged file); the {num_frames} frames were sampled from those {true_total}. Re-encode or "
            "re-download it for the whole video.",
        )
        idx = first + sample_indices(true_total, num_frames, sampling, frame_stride=frame_stride, pad=pad)
        decoded, seen = decode_frames(p, idx, progress=progress)
    return decoded


def _check_frames(frames: Any) -> tuple[int, int]:
    """A frame range ``(first, stop)``: ints with ``0 <= first < stop`` (``ValueError`` otherwise)."""
    try:
        first, stop = (int(v) for v in frames)
        ok = [int(v) == v and not isinstance(v, bool) for v in frames] == [True, True]
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= first < stop:
        raise ValueError(f"frames must be a range (first, stop) with 0 <= first < stop; got {frames!r}.")
    return first, stop


def _at(frames: tuple[int, int] | None) -> str:
    return "" if frames is None else f" in frames [{frames[0]}, {frames[1]})"


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
    arr = as_rgb_frames(frames)
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
