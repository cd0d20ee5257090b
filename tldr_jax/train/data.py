"""Labelled video clips for fine-tuning: in-memory arrays, class folders, batching, a synthetic task.

A dataset is anything with ``classes`` (class names), ``labels`` (``(M,)`` int class indices),
``clip_shape`` (``(T, H, W, 3)``), ``__len__``, ``load(i)`` (one ``(T, H, W, 3)`` float32 clip,
raising :class:`ClipReadError` when the clip cannot be used) and ``name(i)`` (for messages):

* :class:`ArrayDataset` -- ``videos (M, T, H, W, 3)`` and ``labels (M,)`` (ints or class names).
* :class:`FolderDataset` -- one sub-folder per class holding video files or ``.npy`` clips
  ``(T, H, W, 3)``, read with :func:`tldr_jax.video.load_clip` (``uint8`` clips are raw pixels,
  resized and normalised like videos; float clips are used as they are: already normalised, already
  at the model's frame size).
* :class:`Subset` -- a view on some indices of another dataset (:func:`split` makes a stratified one).

:func:`load_batch` turns indices into a fixed-shape :class:`Batch` whose ``mask`` is 0 for padding and
for clips that could not be read; those are recorded in ``dataset.skipped`` (name -> reason) and warned
about once, never silently dropped. :func:`epoch_order` gives a deterministic shuffle from
``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tldr_jax.video import CLIP_EXTENSIONS, Preprocessing, load_clip, preprocessing_for

PathLike = str | os.PathLike
DIRECTIONS: tuple[str, ...] = ("right", "left", "down", "up")

__all__ = [
    "ArrayDataset",
    "Batch",
    "ClipDataset",
    "ClipReadError",
    "EmptyClassError",
    "FolderDataset",
    "SkippedClipWarning",
    "Subset",
    "as_dataset",
    "batch_slices",
    "epoch_order",
    "load_batch",
    "moving_square",
    "save_npy_folder",
    "split",
]


class ClipReadError(ValueError):
    """One clip of a dataset could not be used (unreadable, too short, wrong shape)."""


class EmptyClassError(ValueError):
    """A class folder holds no usable clip files."""


class SkippedClipWarning(UserWarning):
    """A clip was skipped (masked out of its batch) because it could not be read."""


class ClipDataset(Protocol):
    """What :func:`tldr_jax.train.finetune` needs from a dataset."""

    classes: tuple[str, ...]
    labels: np.ndarray
    skipped: dict[str, str]

    @property
    def clip_shape(self) -> tuple[int, int, int, int]: ...

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray: ...

    def name(self, index: int) -> str: ...


# --------------------------------------------------------------------------------------------------
# Datasets.
# --------------------------------------------------------------------------------------------------


def _label_indices(labels: Any, classes: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels and class names from int labels (+ optional names) or string labels."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array (M,); got shape {arr.shape}.")
    if arr.dtype.kind in "US" or arr.dtype == object:
        names = (
            tuple(str(c) for c in classes) if classes is not None else tuple(sorted({str(a) for a in arr}))
        )
        lookup = {c: i for i, c in enumerate(names)}
        unknown = sorted({str(a) for a in arr} - set(lookup))
        if unknown:
            raise ValueError(f"labels {unknown} are not in classes {list(names)}.")
        return np.asarray([lookup[str(a)] for a in arr], np.int32), names
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must be ints or class-name strings; got dtype {arr.dtype}.")
    num = int(arr.max()) + 1 if arr.size else 0
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(num))
    if arr.size and (arr.min() < 0 or arr.max() >= len(names)):
        raise ValueError(
            f"labels must lie in [0, {len(names)}) for {len(names)} classes; got range "
            f"[{arr.min()}, {arr.max()}]."
        )
    return arr.astype(np.int32), names


class ArrayDataset:
    """In-memory clips ``videos (M, T, H, W, 3)`` (float, normalised) with ``labels (M,)``.

    Args:
      videos: ``(M, T, H, W, 3)`` float array.
      labels: ``(M,)`` ints in ``[0, K)`` or class-name strings.
      classes: class names (default: sorted string labels, or ``"0" .. "K-1"`` for ints).
    """

    def __init__(self, videos: Any, labels: Any, classes: Sequence[str] | None = None):
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(
                f"videos must be a (M, T, H, W, 3) array; got shape {videos.shape}. "
                "PyTorch (M, C, T, H, W) clips need videos.transpose(0, 2, 3, 4, 1)."
            )
        if not np.issubdtype(videos.dtype, np.floating):
            raise TypeError(f"videos must be float (normalised pixels); got dtype {videos.dtype}.")
        self.labels, self.classes = _label_indices(labels, classes)
        if len(self.labels) != len(videos):
            raise ValueError(f"got {len(videos)} videos but {len(self.labels)} labels.")
        self.videos = videos
        self.skipped: dict[str, str] = {}

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, 3)``."""
        return tuple(self.videos.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> np.ndarray:
        """Clip ``index`` as float32."""
        return np.asarray(self.videos[index], np.float32)

    def name(self, index: int) -> str:
        """``"clip <index>"``."""
        return f"clip {index}"


def _scan_classes(root: Path, extensions: tuple[str, ...]) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Class names (sorted sub-folders), clip paths and labels of a labelled-video folder."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {str(root)!r} does not exist or is not a folder; expected one sub-folder "
            "per class holding video files or .npy clips."
        )
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ValueError(
            f"dataset folder {str(root)!r} has no class sub-folders; put the clips of each class in "
            f"their own folder, e.g. {root}/<class name>/clip.mp4."
        )
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, d in enumerate(dirs):
        files = sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
        )
        if not files:
            empty.append(str(d))
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty:
        raise EmptyClassError(
            f"class folder(s) {empty} hold no clips (looked for {', '.join(extensions)}). Add clips, or "
            "remove the folder(s) so that the class is not part of the label set."
        )
    return tuple(d.name for d in dirs), paths, labels


class FolderDataset:
    """A labelled-video folder: ``root/<class>/<clip>`` with video files or ``.npy`` clips.

    Classes are the sorted sub-folder names; clips are found recursively in each class folder and read
    with :func:`tldr_jax.video.load_clip`.

    Args:
      root: the dataset folder.
      preprocessing: how a file becomes a clip (:func:`tldr_jax.video.preprocessing_for`), which fixes
        the clip shape.

    Raises:
      EmptyClassError: a class folder has no clips.
    """

    def __init__(self, root: PathLike, preprocessing: Preprocessing):
        self.root = Path(root)
        self.classes, self.paths, labels = _scan_classes(self.root, CLIP_EXTENSIONS)
        self.labels = np.asarray(labels, np.int32)
        self.preprocessing = preprocessing
        self.skipped: dict[str, str] = {}

    @classmethod
    def for_model(cls, root: PathLike, params: Any, **kwargs: Any) -> FolderDataset:
        """A folder dataset read the way ``params`` (a :class:`tldr_jax.Params`, ``ArchConfig`` or name)
        expects; ``kwargs`` are the overrides of :func:`tldr_jax.video.preprocessing_for` (``sampling``,
        ``normalization``, ``pad``, ...)."""
        return cls(root, preprocessing_for(params, **kwargs))

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(num_frames, img_size, img_size, 3)``."""
        return self.preprocessing.shape

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        """The clip's path."""
        return str(self.paths[index])

    def load(self, index: int) -> np.ndarray:
        """Clip ``index`` as ``(T, H, W, 3)`` float32; :class:`ClipReadError` when it cannot be used."""
        path = self.paths[index]
        try:
            return load_clip(path, self.preprocessing)
        except (OSError, ValueError, EOFError, RuntimeError) as err:
            raise ClipReadError(f"{path}: {err}") from err


class Subset:
    """The clips ``indices`` of ``base`` (same classes; unreadable clips are reported to ``base``)."""

    def __init__(self, base: ClipDataset, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, np.int64)
        self.classes = base.classes
        self.labels = np.asarray(base.labels)[self.indices]

    @property
    def skipped(self) -> dict[str, str]:
        """The base dataset's record of skipped clips."""
        return self.base.skipped

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """The base dataset's clip shape."""
        return self.base.clip_shape

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> np.ndarray:
        """Clip ``index`` of the subset."""
        return self.base.load(int(self.indices[index]))

    def name(self, index: int) -> str:
        """Name of clip ``index`` of the subset."""
        return self.base.name(int(self.indices[index]))


def split(dataset: ClipDataset, val_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Deterministic stratified split into ``(train, val)``: ``val_fraction`` of each class (>= 1 clip)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    train_idx: list[int] = []
    val_idx: list[int] = []
    labels = np.asarray(dataset.labels)
    for k in range(len(dataset.classes)):
        members = rng.permutation(np.flatnonzero(labels == k))
        n_val = min(max(1, int(round(val_fraction * len(members)))), max(len(members) - 1, 0))
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return Subset(dataset, sorted(train_idx)), Subset(dataset, sorted(val_idx))


def as_dataset(data: Any, params: Any = None, **folder_kwargs: Any) -> ClipDataset:
    """Accept a dataset, a ``(videos, labels)`` or ``(videos, labels, classes)`` tuple, or a folder path."""
    if isinstance(data, (str, os.PathLike)):
        if params is None:
            raise TypeError("a folder dataset needs the model (params) to know the clip shape.")
        return FolderDataset.for_model(data, params, **folder_kwargs)
    if isinstance(data, tuple) and len(data) in (2, 3):
        return ArrayDataset(*data)
    if all(hasattr(data, a) for a in ("classes", "labels", "load", "clip_shape")):
        return data
    raise TypeError(
        "data must be a labelled-video folder path, a (videos, labels[, classes]) tuple or a dataset "
        f"(tldr_jax.train.data.ArrayDataset / FolderDataset); got {type(data).__name__}."
    )


# --------------------------------------------------------------------------------------------------
# Order and batches.
# --------------------------------------------------------------------------------------------------


def epoch_order(num: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Deterministic order of ``num`` clips in ``epoch`` (a permutation seeded by ``(seed, epoch)``)."""
    if not shuffle:
        return np.arange(num)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)])).permutation(num)


def batch_slices(num: int, batch_size: int, drop_last: bool) -> list[slice]:
    """Batch boundaries over ``num`` items (at least one batch when ``num > 0``)."""
    if drop_last and num >= batch_size:
        count = num // batch_size
    else:
        count = -(-num // batch_size)
    return [slice(i * batch_size, min((i + 1) * batch_size, num)) for i in range(count)]


@dataclasses.dataclass
class Batch:
    """A fixed-shape batch: ``video (B, T, H, W, 3)``, ``label (B,)`` int32, ``mask (B,)`` float32.

    ``mask`` is 0 for padding rows and for clips that could not be read.
    """

    video: np.ndarray
    label: np.ndarray
    mask: np.ndarray


def _load_or_none(dataset: ClipDataset, index: int) -> tuple[np.ndarray | None, str | None]:
    name = dataset.name(index)
    if name in dataset.skipped:
        return None, None
    try:
        return dataset.load(index), None
    except ClipReadError as err:
        return None, str(err)


def load_batch(
    dataset: ClipDataset, indices: Sequence[int], batch_size: int, executor: Executor | None = None
) -> Batch:
    """Load clips ``indices`` into a :class:`Batch` of ``batch_size`` rows (padding masked out).

    Unreadable clips are masked out, recorded in ``dataset.skipped`` and warned about once
    (:class:`SkippedClipWarning`).
    """
    indices = [int(i) for i in indices]
    if len(indices) > batch_size:
        raise ValueError(f"{len(indices)} indices do not fit a batch of {batch_size}.")
    video = np.zeros((batch_size, *dataset.clip_shape), np.float32)
    label = np.zeros((batch_size,), np.int32)
    mask = np.zeros((batch_size,), np.float32)
    loader = executor.map if executor is not None else map
    results = list(loader(lambda i: _load_or_none(dataset, i), indices))
    for row, (index, (clip, error)) in enumerate(zip(indices, results)):
        if clip is None:
            if error is not None:
                dataset.skipped[dataset.name(index)] = error
                warnings.warn(f"skipping unreadable clip: {error}", SkippedClipWarning, stacklevel=2)
            continue
        video[row] = clip
        label[row] = dataset.labels[index]
        mask[row] = 1.0
    return Batch(video, label, mask)


# --------------------------------------------------------------------------------------------------
# A synthetic labelled task.
# --------------------------------------------------------------------------------------------------


def moving_square(
    num: int,
    *,
    num_classes: int = 2,
    num_frames: int = 4,
    img_size: int = 32,
    square: int = 8,
    speed: int = 4,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A synthetic motion task: which way a bright square moves (right, left, down, up).

    The square starts at a random position (so that it stays in the frame) and moves ``speed``
    pixels per frame over Gaussian noise; a single frame says nothing about the class.

    Returns:
      ``(videos (num, T, S, S, 3) float32, labels (num,) int32, classes)``.
    """
    if not 1 <= num_classes <= len(DIRECTIONS):
        raise ValueError(f"num_classes must be in [1, {len(DIRECTIONS)}]; got {num_classes}.")
    travel = speed * (num_frames - 1)
    if square + travel > img_size:
        raise ValueError(
            f"a {square}px square moving {speed}px/frame for {num_frames} frames leaves a {img_size}px frame."
        )
    rng = np.random.default_rng(seed)
    videos = rng.normal(0.0, noise, (num, num_frames, img_size, img_size, 3)).astype(np.float32)
    labels = (np.arange(num) % num_classes).astype(np.int32)
    labels = rng.permutation(labels)
    steps = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
    for i, k in enumerate(labels):
        dy, dx = steps[DIRECTIONS[k]]
        lo = np.array([travel if d < 0 else 0 for d in (dy, dx)])
        hi = np.array([img_size - square - (travel if d > 0 else 0) for d in (dy, dx)])
        y0, x0 = rng.integers(lo, hi + 1)
        for t in range(num_frames):
            y, x = y0 + dy * speed * t, x0 + dx * speed * t
            videos[i, t, y : y + square, x : x + square] += 2.0
    return videos, labels, DIRECTIONS[:num_classes]


def save_npy_folder(root: PathLike, videos: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> Path:
    """Write clips as a labelled folder ``root/<class>/clip_<i>.npy`` (readable by :class:`FolderDataset`)."""
    root = Path(root)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (clip, k) in enumerate(zip(videos, labels)):
        np.save(root / classes[int(k)] / f"clip_{i:05d}.npy", np.asarray(clip, np.float32))
    return root
