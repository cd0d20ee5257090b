"""The files of a video collection: which files an index holds and the record of each.

:func:`collect_videos` lists a folder (recursively) or checks a list of files; :func:`index_entries`
names and hashes each file (the content hash keys its features in the index's cache, so a changed file is
encoded again and a renamed one is not) and, with windows, lists the windows of each video.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tldr_jax.files import sha256_file
from tldr_jax.search.index import IndexEntry
from tldr_jax.video import CLIP_EXTENSIONS, NPY_EXTENSIONS, VideoReadError, Window

PathLike = str | os.PathLike

__all__ = ["collect_videos", "collection_root", "index_entries"]


def collect_videos(videos: PathLike | Sequence[PathLike]) -> tuple[Path | None, list[Path]]:
    """The indexed folder (or None for a list) and its video / ``.npy`` files, sorted.

    A folder is searched recursively (hidden files and folders skipped), following symlinked folders
    once each (a link back to a folder already listed, e.g. ``loop -> .``, is not followed). Raises
    ``FileNotFoundError`` for a missing folder or file and ``ValueError`` when there is nothing to index.
    """
    if isinstance(videos, (str, os.PathLike)):
        root = Path(videos).expanduser().absolute()
        if not root.exists():
            raise FileNotFoundError(f"videos folder {root} does not exist; give a folder of video files.")
        if not root.is_dir():
            raise NotADirectoryError(
                f"{root} is not a folder; give the folder of videos to index (or a list of files in Python)."
            )
        files = _walk(root)
        if not files:
            raise ValueError(
                f"{root} holds no video or .npy files ({', '.join(CLIP_EXTENSIONS)}); nothing to index."
            )
        return root, files
    files = [Path(v).expanduser().absolute() for v in videos]
    if not files:
        raise ValueError("no videos given; pass a folder or a non-empty list of video / .npy files.")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} video file(s) do not exist, e.g. {missing[0]}.")
    return None, sorted(set(files))


def _walk(root: Path) -> list[Path]:
    """The video / ``.npy`` files under ``root`` (named through the links that lead to them), sorted; each
    real folder is listed once, so links that loop are not followed twice."""
    seen: set[tuple[int, int]] = set()
    files = []
    for top, dirs, names in os.walk(root, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            f = Path(top) / name
            if not name.startswith(".") and f.suffix.lower() in CLIP_EXTENSIONS and f.is_file():
                files.append(f)
    return sorted(files)


def collection_root(root: Path | None, files: list[Path]) -> str:
    """The folder every indexed file lies in: the indexed folder, or the common folder of a list."""
    return str(root) if root is not None else os.path.commonpath([str(f.parent) for f in files])


def index_entries(
    root: Path | None,
    files: list[Path],
    previous: dict[str, list[IndexEntry]],
    windows: Callable[[Path], list[Window] | None] | None = None,
    reuse_windows: bool = False,
) -> list[IndexEntry]:
    """The :class:`IndexEntry` s of the files (named relative to ``root``, or by file name for a list):
    one per file, or with ``windows`` one per window of each video file.

    Args:
      root: the indexed folder, or None for a list of files. files: the files, sorted.
      previous: the entries of the index being updated, by absolute path: a file whose size and mtime
        match is not re-hashed (nor, with ``reuse_windows``, opened again to find its windows).
      windows: ``windows(path) -> list[Window] | None`` (:func:`tldr_jax.video.file_windows`): the
        windows of a video file; None (or a ``.npy`` clip, a file without frame rate, a file that cannot
        be opened: its encoding then reports why) gives one entry for the whole file.
      reuse_windows: the previous index was built with the same window settings.
    """
    out = []
    for f in files:
        st = f.stat()
        name = f.relative_to(root).as_posix() if root is not None else f.name
        olds = previous.get(str(f), [])
        same = bool(olds) and olds[0].size == st.st_size and olds[0].mtime_ns == st.st_mtime_ns
        entry = IndexEntry(video=name, path=str(f), sha256=olds[0].sha256 if same else sha256_file(f),
                           size=st.st_size, mtime_ns=st.st_mtime_ns)
        if windows is None:
            out.append(entry)
            continue
        if same and reuse_windows:
            spans = [e.window for e in olds]
            spans = None if None in spans else spans
        else:
            spans = _windows_of(f, windows)
        if spans is None:
            out.append(entry)
        else:
            out.extend(dataclasses.replace(entry, start=w.start, end=w.end, frame_range=(w.first, w.stop))
                       for w in spans)
    names = {e.path: e.video for e in out}
    if len(set(names.values())) != len(names):  # a list of files from several folders with equal names
        out = [dataclasses.replace(e, video=e.path) for e in out]
    return out


def _windows_of(f: Path, windows: Callable[[Path], list[Window] | None]) -> list[Window] | None:
    """The windows of ``f``, or None: a ``.npy`` clip (no frame rate), or a file that cannot be opened
    (it is then indexed whole, and encoding it reports the error)."""
    if f.suffix.lower() in NPY_EXTENSIONS:
        return None
    try:
        return windows(f)
    except VideoReadError:
        return None
