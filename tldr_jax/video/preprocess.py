"""Preprocessing: how decoded RGB frames become model input, and the one :class:`Preprocessing` record.

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
and centre-crops 224. :func:`preprocessing_for` returns a model's whole evaluation preprocessing
(frames, size, sampling, normalisation, resizing) as one :class:`Preprocessing`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tldr_jax.options import check_choice, check_int
from tldr_jax.video.sampling import SAMPLING_MODES

#: ImageNet's per-channel RGB mean, on the ``[0, 1]`` scale.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet's per-channel RGB standard deviation, on the ``[0, 1]`` scale.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Per-family ``(mean, std)`` on the ``[0, 1]`` pixel scale (see the module docstring).
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "umt": (IMAGENET_MEAN, IMAGENET_STD),
    "videomae": (IMAGENET_MEAN, IMAGENET_STD),
    "vivit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vivit_hf": ((0.75, 0.75, 0.75), (0.25, 0.25, 0.25)),
}

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

__all__ = [
    "DEFAULT_SAMPLING",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "NORMALIZATION",
    "RESIZE",
    "RESIZE_MODES",
    "Preprocessing",
    "as_rgb_frames",
    "center_crop",
    "check_mean_std",
    "denormalize",
    "preprocess",
    "preprocessing_for",
    "resized_shape",
]


def as_rgb_frames(frames: Any) -> np.ndarray:
    """``(T, H, W, 3)`` (or one ``(H, W, 3)`` frame) RGB frames as an array; ``ValueError`` otherwise."""
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
      mean: per-channel mean on the ``[0, 1]`` scale (see :data:`NORMALIZATION`).
      std: per-channel standard deviation on the ``[0, 1]`` scale.
      short_side: ``"crop"`` mode: the shorter side is resized to this first (default ``img_size``;
        ViViT uses 256 for 224 crops).
      resize: ``"crop"`` (resize the shorter side, then centre crop; VideoMAE / ViViT) or ``"squash"``
        (resize straight to ``img_size x img_size``; UMT's test transform).
      interpolation: ``jax.image.resize`` method: ``"linear"``, ``"cubic"``, ``"lanczos3"``, ``"nearest"``.

    Returns:
      ``(T, img_size, img_size, 3)`` float32, ``(pixel / 255 - mean) / std``.
    """
    arr = as_rgb_frames(frames)
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
    """How a file becomes a ``(num_frames, img_size, img_size, 3)`` float32 clip (:func:`load_clip`).

    Attributes:
      num_frames: frames per clip the model takes.
      img_size: frame height and width the model takes.
      sampling: frame sampling (:data:`~tldr_jax.video.sampling.SAMPLING_MODES`).
      mean: per-channel mean on the ``[0, 1]`` pixel scale.
      std: per-channel standard deviation on the ``[0, 1]`` pixel scale.
      resize: ``"crop"`` or ``"squash"``, as in :func:`preprocess`.
      short_side: the shorter side before a ``"crop"``, as there.
      interpolation: the resize filter, as there.
      pad: repeat the last frame of too-short videos (UMT's behaviour) instead of refusing them.
      trim_seconds: sample only the frames of the first seconds of a video file (the official DiDeMo
        evaluation's ``trimmed30``: ``int(seconds * fps)`` frames), or None for the whole video. ``.npy``
        clips have no frame rate and are never trimmed.
    """

    num_frames: int
    img_size: int
    sampling: str = "middle"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "squash"
    short_side: int | None = None
    interpolation: str = "cubic"
    pad: bool = False
    trim_seconds: float | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, 3)`` of every clip."""
        return (self.num_frames, self.img_size, self.img_size, 3)

    def preprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`preprocess` besides the frames and the size."""
        return {
            "mean": self.mean, "std": self.std, "short_side": self.short_side, "resize": self.resize,
            "interpolation": self.interpolation,
        }


def check_seconds(name: str, value: Any) -> float | None:
    """``value`` as a positive finite float, or None (``ValueError`` / ``TypeError`` naming ``name``)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds or None; got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds (DiDeMo: 30); got {value!r}.")
    return float(value)


def _config_of(model: Any) -> Any:
    """The ``ArchConfig`` of :class:`tldr_jax.Params`, a config, or an architecture name."""
    cfg = getattr(model, "config", model)
    if isinstance(cfg, str):
        from tldr_jax.configs import get_config

        cfg = get_config(cfg)
    if not hasattr(cfg, "family"):
        raise TypeError(
            f"expected Params, an ArchConfig or an architecture name; got {type(model).__name__}."
        )
    return cfg


def preprocessing_for(
    model: Any,
    *,
    num_frames: int | None = None,
    sampling: str | None = None,
    normalization: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pad: bool = False,
    trim_seconds: float | None = None,
) -> Preprocessing:
    """The evaluation preprocessing of a model (:class:`tldr_jax.Params`, ``ArchConfig`` or name).

    Frames, size, sampling, normalisation and resizing follow the model's family (:data:`RESIZE`,
    :data:`NORMALIZATION`, :data:`DEFAULT_SAMPLING`); each argument overrides one of them and is
    checked (a ``ValueError`` / ``TypeError`` names the bad value and the allowed ones).
    ``normalization`` picks another mean/std set (e.g. ``"vivit_hf"``); ``mean`` / ``std`` give one.
    ``trim_seconds`` samples only the first seconds of each video (see :class:`Preprocessing`).
    """
    cfg = _config_of(model)
    if cfg.family not in RESIZE:
        raise ValueError(f"unknown model family {cfg.family!r}; known: {', '.join(RESIZE)}.")
    if normalization is not None:
        check_choice("normalization", normalization, tuple(NORMALIZATION))
    if sampling is not None:
        check_choice("sampling", sampling, SAMPLING_MODES)
    if not isinstance(pad, (bool, np.bool_)):
        raise TypeError(f"pad must be True or False; got {pad!r}.")
    family_mean, family_std = NORMALIZATION[normalization or cfg.family]
    mean, std = check_mean_std(family_mean if mean is None else mean, family_std if std is None else std)
    mode, ratio, interp = RESIZE[cfg.family]
    return Preprocessing(
        num_frames=cfg.num_frames if num_frames is None else check_int("num_frames", num_frames, minimum=1),
        img_size=cfg.img_size,
        sampling=sampling or DEFAULT_SAMPLING[cfg.family],
        mean=mean,
        std=std,
        resize=mode,
        short_side=int(round(cfg.img_size * ratio)),
        interpolation=interp,
        pad=bool(pad),
        trim_seconds=check_seconds("trim_seconds", trim_seconds),
    )
