"""Time windows of a video: the moments a long video is indexed as (``tldr-jax index --window``).

A video of ``total`` frames at ``fps`` frames per second lasts ``D = total / fps`` seconds; frame ``f`` is
shown from ``f / fps`` (a constant frame rate, the container's average rate). A window of ``window``
seconds every ``stride`` seconds (default: ``window / 2``, so that a moment cut in two by one window lies
whole in the next) covers the seconds ``[start, end)`` with

* ``start = i * stride`` for ``i = 0, 1, ...`` while ``start + window <= D``: every such window is whole;
* the **tail**: when the last whole window ends before ``D`` (some frames in no window yet), one more
  window ``[D - window, D)``, aligned to the end, so that every frame lies in a window and every window
  lasts ``window`` seconds;
* a video **shorter than the window** (``D < window``) is one window ``[0, D)``: the whole video, the
  clip a whole-file index makes of it.

The frames of a window are those shown within it: ``[ceil(start * fps), ceil(end * fps))``, computed in
exact rational arithmetic (``fractions.Fraction``: NTSC's 29.97 fps is ``30000/1001`` as containers
record it; seconds, and a frame rate given as a float, are taken as the decimals they are written as),
so that boundaries are exact at every frame rate; ``start`` and ``end`` are reported in seconds as given
above (the same numbers at every frame rate). The model's frames are then sampled within the window as
:func:`~tldr_jax.video.sampling.sample_indices` samples a whole video
(:func:`~tldr_jax.video.clip.load_clip` with a :class:`Segment`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = ["Segment", "Window", "check_window", "file_windows", "seconds_fraction", "video_windows"]

@dataclasses.dataclass(frozen=True)
class Window:
    """A time window of a video.

    Attributes:
      start: its first second (``[start, end)``).
      end: the second it ends before.
      first: its first frame (``[first, stop)``, ``first < stop``).
      stop: the frame it ends before.
    """

    start: float
    end: float
    first: int
    stop: int

    def label(self) -> str:
        """``"20,30"``: the seconds as a media fragment writes them (``#t=20,30``), to the millisecond."""
        return f"{_fmt(self.start)},{_fmt(self.end)}"


@dataclasses.dataclass(frozen=True)
class Segment:
    """A window of a video file: what :func:`~tldr_jax.video.clip.load_clip` reads as one clip.

    Attributes:
      path: the video file.
      window: the frames and seconds of it to read.
    """

    path: Path
    window: Window

    @property
    def name(self) -> str:
        """``"clip.mp4#t=20,30"``: the file name and the window (names the result in run reports)."""
        return f"{self.path.name}#t={self.window.label()}"


def _fmt(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def seconds_fraction(value: float | int | Fraction) -> Fraction:
    """A number of seconds as an exact fraction of the decimal it is written as (``0.1 -> 1/10``)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    return Fraction(repr(float(value)))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds; got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds (e.g. 10); got {value!r}.")
    return float(value)


def check_window(window: Any, stride: Any = None) -> tuple[float, float]:
    """``(window, stride)`` checked: positive seconds, ``stride <= window`` (else frames between windows
    would be in none), at least a millisecond; ``stride`` None is ``window / 2``.

    Raises:
      TypeError, ValueError: naming the bad value and the fix.
    """
    window = _number("window", window)
    stride = window / 2 if stride is None else _number("stride", stride)
    if window < 1e-3 or stride < 1e-3:
        raise ValueError(f"window and stride must be at least 0.001 s; got window={window}, stride={stride}.")
    if stride > window:
        raise ValueError(
            f"stride={stride:g} s exceeds window={window:g} s: the frames between windows would be in no "
            f"window; give a stride of at most {window:g} (default: half the window)."
        )
    return window, stride


def _fps(fps: Any) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    elif isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps):
        rate = seconds_fraction(fps)  # the decimal as written: 29.97 -> 2997/100
    else:
        raise ValueError(f"fps must be a positive number of frames per second; got {fps!r}.")
    if rate <= 0:
        raise ValueError(f"fps must be a positive number of frames per second; got {fps!r}.")
    return rate


def video_windows(total: int, fps: Any, window: float, stride: float | None = None) -> list[Window]:
    """The windows of a video of ``total`` frames at ``fps`` (the rule of the module docstring).

    Args:
      total: frames of the video (>= 1).
      fps: frames per second (a ``Fraction`` such as PyAV's ``average_rate``, ``30000/1001`` for
        NTSC, or a number, read as the decimal it is written as).
      window: seconds per window.
      stride: seconds between window starts (default ``window / 2``).

    Returns:
      the windows in order of their start; every frame lies in at least one.

    Example: ``video_windows(1500, 25, 10, 5)`` (60 s) gives ``[0, 10), [5, 15), ..., [50, 60)`` with
    frames ``[0, 250), [125, 375), ..., [1250, 1500)``.
    """
    window, stride = check_window(window, stride)
    if isinstance(total, bool) or int(total) != total or total < 1:
        raise ValueError(f"total must be a positive number of frames; got {total!r}.")
    total, rate = int(total), _fps(fps)
    w, s = seconds_fraction(window), seconds_fraction(stride)
    duration = Fraction(total) / rate

    def make(start: Fraction, end: Fraction) -> Window:
        first = min(total - 1, math.ceil(start * rate))
        stop = max(first + 1, min(total, math.ceil(end * rate)))
        return Window(float(start), float(end), first, stop)

    if duration <= w:
        return [make(Fraction(0), duration)]
    out, i = [], 0
    while i * s + w <= duration:
        out.append(make(i * s, i * s + w))
        i += 1
    if out[-1].stop < total:  # frames after the last whole window: one more, aligned to the end
        out.append(make(duration - w, duration))
    return out


def file_windows(path: str | os.PathLike, window: float, stride: float | None = None) -> list[Window] | None:
    """The windows of a video file (its frame count and average frame rate), or None when the file
    records no frame rate (it is then read whole).

    Raises:
      VideoReadError: the file is missing or unreadable.
    """
    from tldr_jax.video.decode import count_frames, frame_rate

    rate = frame_rate(path)
    if rate is None:
        return None
    total = count_frames(path)
    if total <= 0:
        total = count_frames(path, exact=True)
    return video_windows(max(total, 1), rate, window, stride)
