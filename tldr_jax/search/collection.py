"""The files of a video collection: which files an index holds and the record of each.

:func:`collect_videos` lists a folder (recursively) or checks a list of files; :func:`index_entries`
names and hashes each file (the content hash keys its features in the index's cache, so a changed file is
encoded again and a renamed one is not).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from tldr_jax.files import sha256_file
from tldr_jax.search.index import IndexEntry
from tldr_jax.video import CLIP_EXTENSIONS

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


def index_entries(root: Path | None, files: list[Path], previous: dict[str, IndexEntry]) -> list[IndexEntry]:
    """One :class:`IndexEntry` per file (named relative to ``root``, or by file name for a list); a file
    whose size and mtime match its entry in ``previous`` (by absolute path) is not re-hashed."""
    out = []
    for f in files:
        st = f.stat()
        name = f.relative_to(root).as_posix() if root is not None else f.name
        old = previous.get(str(f))
        same = old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns
        sha = old.sha256 if same else sha256_file(f)
        out.append(IndexEntry(video=name, path=str(f), sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns))
    names = [e.video for e in out]
    if len(set(names)) != len(names):  # a list of files from several folders with equal names
        out = [dataclasses.replace(e, video=e.path) for e in out]
    return out
