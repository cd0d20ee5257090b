"""One row of a video index: :class:`IndexEntry`, a video file or a time window of one (its record in
``index.json``'s ``entries``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tldr_jax.video.windows import Segment, Window

__all__ = ["IndexEntry"]


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One row of an index: a video file (or ``.npy`` clip), or one time window of a video file.

    Attributes:
      video: the name as indexed (path relative to the indexed folder, ``/``-separated).
      path: the absolute path when indexed.
      sha256: hash of the file's content (the key of its features in ``cache/``).
      size, mtime_ns: file size and modification time when hashed (an unchanged pair skips re-hashing).
      frames: frames sampled from the file (or window).
      warnings: problems of a file that was still used (e.g. a truncated video).
      start, end: the window's seconds ``[start, end)`` in the file, or None for a whole file.
      frame_range: the window's frames ``(first, stop)``, or None for a whole file.
    """

    video: str
    path: str
    sha256: str
    size: int
    mtime_ns: int
    frames: int = 0
    warnings: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None
    frame_range: tuple[int, int] | None = None

    @property
    def result_name(self) -> str:
        """The file name of this entry's features in ``cache/``: keyed by the content and, for a window,
        its frames (``<hash>.npz``, ``<hash>-<first>-<stop>.npz``)."""
        if self.frame_range is None:
            return f"{self.sha256[:32]}.npz"
        return f"{self.sha256[:32]}-{self.frame_range[0]}-{self.frame_range[1]}.npz"

    @property
    def window(self) -> Window | None:
        """The :class:`~tldr_jax.video.Window` of this entry, or None for a whole file."""
        if self.frame_range is None or self.start is None or self.end is None:
            return None
        return Window(self.start, self.end, *self.frame_range)

    def source(self) -> Path | Segment:
        """What :func:`~tldr_jax.video.load_clip` reads for this entry: the file, or a window of it."""
        window = self.window
        return Path(self.path) if window is None else Segment(Path(self.path), window)

    @property
    def label(self) -> str:
        """The video name, with the window as a media fragment for a window (``clip.mp4#t=20,30``)."""
        window = self.window
        return self.video if window is None else f"{self.video}#t={window.label()}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (``warnings`` only when there are some; the window fields only for a
        window, so that a whole-file entry is written as format 1 wrote it)."""
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        if not out["warnings"]:
            del out["warnings"]
        if self.frame_range is None:
            for key in ("start", "end", "frame_range"):
                del out[key]
        else:
            out["frame_range"] = list(self.frame_range)
        return out

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> IndexEntry:
        """The inverse of :meth:`to_json`."""
        span = rec.get("frame_range")
        return cls(
            video=str(rec["video"]), path=str(rec["path"]), sha256=str(rec["sha256"]), size=int(rec["size"]),
            mtime_ns=int(rec["mtime_ns"]), frames=int(rec.get("frames", 0)),
            warnings=tuple(rec.get("warnings", ())),
            start=None if span is None else float(rec["start"]),
            end=None if span is None else float(rec["end"]),
            frame_range=None if span is None else (int(span[0]), int(span[1])),
        )
