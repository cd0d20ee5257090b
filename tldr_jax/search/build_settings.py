"""What a build is asked to do and what it did: :class:`BuildSettings` (the checked arguments of
:func:`~tldr_jax.search.build.build_index` and :func:`~tldr_jax.search.build.encode_shard`) and
:class:`BuildReport`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tldr_jax.options import ApplyOptions, check_int
from tldr_jax.video.windows import check_window

ENGINES: tuple[str, ...] = ("local", "ray")

__all__ = ["ENGINES", "BuildReport", "BuildSettings"]


@dataclasses.dataclass
class BuildReport:
    """What :func:`build_index` did.

    Attributes:
      computed: videos (windows, for an index of windows) encoded in this run.
      reused: those whose features were already in the cache.
      failed: video (``video#t=start,end`` for a window) -> error, for files that could not be read (left
        out with ``skip_unreadable=True``).
      engine: ``"local"`` or ``"ray"``.
      seconds: wall time of the whole build (hashing, encoding, writing).
      encode_seconds: time spent encoding (the ``run_directory`` / Ray stage).
      generation: the data directory the index now reads.
      written: whether this build wrote a new generation (False when nothing the vectors depend on
        changed).
      recached: videos whose cached results were unusable and were encoded again (``overwrite=True``).
    """

    computed: list[str] = dataclasses.field(default_factory=list)
    reused: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    engine: str = "local"
    seconds: float = 0.0
    encode_seconds: float = 0.0
    generation: str = ""
    written: bool = False
    recached: list[str] = dataclasses.field(default_factory=list)

    @property
    def videos_per_second(self) -> float:
        """Videos (or windows) encoded per second of encoding (0 when nothing was encoded)."""
        return len(self.computed) / self.encode_seconds if self.computed and self.encode_seconds > 0 else 0.0

    def summary(self, videos: int, windows: int | None = None) -> str:
        """One line for an index of ``videos`` videos (in ``windows`` windows, for an index of windows):
        counts, time, and the encoding rate (or, when nothing was encoded, that everything was reused).
        With windows, the counts (encoded, reused, skipped) and the rate are of windows."""
        reused = len(self.reused)
        unit = "videos" if windows is None else "windows"
        if self.computed:
            rate = f"{self.videos_per_second:.2f} {unit}/s encoding"
        else:
            rate = f"nothing to encode: all {reused} reused" if not self.failed else "nothing to encode"
        size = _count(videos, "video") + ("" if windows is None else f" in {_count(windows, 'window')}")
        return (
            f"{size} ({len(self.computed)} encoded, {reused} reused, {len(self.failed)} "
            f"skipped) in {self.seconds:.1f} s; {rate} (engine {self.engine})"
        )


def _count(n: int, word: str) -> str:
    """``1 video``, ``2 videos``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """The arguments of :func:`build_index` / :func:`encode_shard` (see :func:`build_index`).

    Attributes:
      r, batch_size, keep_tokens, approximate, num_frames, trim_seconds, window, stride, engine, actors,
        skip_unreadable, overwrite, workers, progress: as :func:`build_index` takes them (``stride``
        resolved: ``window / 2`` when not given).
      options: the non-default :func:`tldr_jax.apply` options.
      shard: ``(index, count)`` for :func:`encode_shard` (encode a share, write no index), else None.
    """

    r: Any = "msrvtt"
    batch_size: int = 8
    keep_tokens: bool = False
    approximate: bool = False
    num_frames: int | None = None
    trim_seconds: float | None = None
    window: float | None = None
    stride: float | None = None
    engine: str = "local"
    actors: int | None = None
    skip_unreadable: bool = False
    overwrite: bool = False
    workers: int = 2
    progress: bool = True
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    shard: tuple[int, int] | None = None

    @classmethod
    def checked(cls, apply_options: dict[str, Any], **fields: Any) -> BuildSettings:
        """The settings with every field checked (``ValueError`` / ``TypeError`` naming the bad one)."""
        shard = fields.get("shard")
        if shard is not None and (
            not isinstance(shard, (tuple, list)) or len(shard) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
            or not 0 <= shard[0] < shard[1]
        ):
            raise ValueError(f"shard must be (index, count) with 0 <= index < count; got {shard!r}.")
        s = cls(**fields)
        if s.window is not None:
            window, stride = check_window(s.window, s.stride)
            if s.trim_seconds is not None:
                raise ValueError(
                    f"window={s.window} and trim_seconds={s.trim_seconds} were both given: windows cover the "
                    "whole video; give one of them (CLI: --window or --trim-seconds)."
                )
            s = dataclasses.replace(s, window=window, stride=stride)
        elif s.stride is not None:
            raise ValueError(f"stride={s.stride} needs a window; give window=SECONDS too (CLI: --window).")
        check_int("batch_size", s.batch_size, minimum=1)
        check_int("workers", s.workers, minimum=0)
        if s.actors is not None:
            check_int("actors", s.actors, minimum=1)
        for name in ("keep_tokens", "approximate", "skip_unreadable", "overwrite", "progress"):
            if not isinstance(getattr(s, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {getattr(s, name)!r}.")
        if s.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {s.engine!r}.")
        opts = ApplyOptions.from_kwargs(apply_options, where="build_index").non_default()
        shard = None if shard is None else (int(shard[0]), int(shard[1]))
        return dataclasses.replace(s, options=opts, shard=shard)
