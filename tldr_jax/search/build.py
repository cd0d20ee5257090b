"""Building a video index: every clip of a collection encoded once (vid-TLDR on), stored as unit vectors.

::

    from tldr_jax import search
    index = search.build_index("ckpt/umt_b16_ret", "videos/", "videos.index", r="msrvtt", keep_tokens=True)
    hits = search.search(index, "a dog catches a frisbee", k=10, rerank=50)

Files become clips exactly as the retrieval evaluation reads them
(:func:`tldr_jax.retrieval.features.clip_preprocessing`, trimming included), and are encoded by
:func:`tldr_jax.batch.run_directory` (or on Ray, :mod:`tldr_jax.search.ray_engine`) into the index's
content-keyed ``cache/``; the index is then written from the cache (:mod:`tldr_jax.search.index`
describes the files). Re-indexing encodes only new or changed files. With ``window``, every video file
is indexed as overlapping time windows (:mod:`tldr_jax.video.windows`), each window one clip, cached,
encoded and re-indexed on its own.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tldr_jax.api import schedule
from tldr_jax.batch import run_directory
from tldr_jax.files import jsonable
from tldr_jax.options import check_int
from tldr_jax.results import read_meta, run_key, run_settings
from tldr_jax.retrieval.features import clip_preprocessing
from tldr_jax.retrieval.model import RetrievalModel
from tldr_jax.search import ray_engine, store
from tldr_jax.search.build_settings import ENGINES, BuildReport, BuildSettings
from tldr_jax.search.collection import collect_videos, collection_root, index_entries
from tldr_jax.search.index import (
    CACHE_DIR,
    FORMAT_VERSION,
    INDEX_FILE,
    INDEX_KIND,
    VECTORS_FILE,
    WINDOWS_FORMAT,
    IndexEntry,
    VideoIndex,
    check_identity,
    model_fingerprint,
    open_generation,
    read_info,
    resolve_model,
)
from tldr_jax.search.locks import LOCK_FILES, writer_lock
from tldr_jax.video import Preprocessing, file_windows

PathLike = str | os.PathLike

__all__ = ["ENGINES", "BuildReport", "BuildSettings", "build_index", "encode_shard"]


@dataclasses.dataclass
class _Job:
    """What a build works on, resolved from the arguments before anything is written."""

    out: Path
    previous: dict[str, Any] | None
    model: RetrievalModel
    model_dir: str | None
    files: list[Path]
    entries: list[IndexEntry]
    prep: Preprocessing
    schedule: Any
    identity: dict[str, Any]
    folder: Path | None
    root: str
    key: str

    @property
    def cache(self) -> Path:
        """The index's content-keyed result cache."""
        return self.out / CACHE_DIR


# --------------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> dict[str, Any] | None:
    """The existing index's info (None when ``out`` is new); refuse a path that is not an index."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise NotADirectoryError(f"out {out} exists and is not a directory; give a new index path.")
    if (out / INDEX_FILE).exists():
        try:
            return read_info(out)
        except ValueError:
            if overwrite:
                return None
            raise
    if any(p.name not in LOCK_FILES for p in out.iterdir()) and not (out / CACHE_DIR).is_dir():
        raise FileExistsError(
            f"out {out} is a non-empty folder that is not a video index; give a new or empty path."
        )
    return None


def _identity(model: RetrievalModel, s: BuildSettings, prep: Preprocessing, sched: Any) -> dict[str, Any]:
    """The index's ``settings``: what its features depend on (``trim_seconds``, ``window`` and ``stride``
    only when set, so that indexes written before they existed keep their identity)."""
    identity = {
        "model": model_fingerprint(model),
        "arch": model.vision.config.name,
        "r": jsonable(s.r),
        "tokens": list(sched.tokens),
        "vid_tldr": sched.tokens[-1] < sched.tokens[0],
        "num_frames": int(prep.num_frames),
        "keep_tokens": bool(s.keep_tokens),
        "options": jsonable(dict(sorted(s.options.items()))),
        "preprocessing": "umt_eval (middle sampling, padded)",
    }
    if prep.trim_seconds is not None:
        identity["trim_seconds"] = prep.trim_seconds
    if s.window is not None:
        identity["window"], identity["stride"] = s.window, s.stride
    return identity


def _prepare(model: Any, videos: Any, out: Any, s: BuildSettings) -> _Job:
    """Check everything and resolve the inputs (reads only: nothing is written)."""
    out_path = Path(out).expanduser().absolute()
    previous = _check_out(out_path, s.overwrite)
    root, files = collect_videos(videos)
    if s.shard is not None:
        files = files[s.shard[0] :: s.shard[1]]
    loaded, model_dir = resolve_model(model)
    if s.engine == "ray" and model_dir is None:
        raise ValueError("engine='ray' needs the model as a directory path (each actor loads it).")
    frames = None if s.num_frames is None else check_int("num_frames", s.num_frames, minimum=1)
    prep = clip_preprocessing(loaded, frames, s.trim_seconds)
    sched = schedule(loaded.vision, s.r, num_frames=prep.num_frames)  # ValueError for an r that does not fit
    identity = _identity(loaded, s, prep, sched)
    _check_previous(previous, identity, out_path, s)
    key = run_key(run_settings(loaded.vision, prep, s.r, s.keep_tokens, s.options))
    return _Job(out_path, previous, loaded, model_dir, files, [], prep, sched, identity, root,
                collection_root(root, files), key)


def _check_previous(
    previous: dict[str, Any] | None, identity: dict[str, Any], out: Path, s: BuildSettings
) -> None:
    if previous is not None and not s.overwrite:
        check_identity(previous["settings"], identity, out,
                       "index into a new path, or pass overwrite=True (CLI: --overwrite) to rebuild it.")


def _locked(job: _Job, s: BuildSettings) -> _Job:
    """With the writer lock held: the index as it is now (another build may have finished since
    :func:`_prepare` looked), checked again, and the entries (files hashed unless unchanged)."""
    previous = _check_out(job.out, s.overwrite)
    _check_previous(previous, job.identity, job.out, s)
    old_entries: dict[str, list[IndexEntry]] = {}
    for rec in (previous or {}).get("entries", []):
        old_entries.setdefault(rec["path"], []).append(IndexEntry.from_json(rec))
    old_settings = (previous or {}).get("settings", {})
    same_windows = all(old_settings.get(k) == job.identity.get(k) for k in ("window", "stride"))
    windows = None if s.window is None else (lambda f: file_windows(f, s.window, s.stride))
    entries = index_entries(job.folder, job.files, old_entries, windows, reuse_windows=same_windows)
    return dataclasses.replace(job, previous=previous, entries=entries)


# --------------------------------------------------------------------------------------------------
# Encoding and collecting.
# --------------------------------------------------------------------------------------------------


def _encode(job: _Job, s: BuildSettings) -> tuple[Any, BuildReport]:
    """Encode the files missing from the cache (local or Ray); the run summary and a first report."""
    changed = job.previous is None or job.previous["settings"] != job.identity
    if s.overwrite and changed and job.cache.exists():
        shutil.rmtree(job.cache)  # other settings' features; the previous index stays readable until replaced
    tokens_shape = (job.schedule.tokens[-1], job.model.vision.config.embed_dim) if s.keep_tokens else None
    recached = store.check_cache(job.cache, job.entries, job.key, job.model.text_config.embed_dim,
                                 tokens_shape, s.overwrite)
    names = {e.source(): e.result_name for e in job.entries}  # a file, or a window of it
    tic = time.perf_counter()
    if s.engine == "local":
        summary = run_directory(
            job.model.vision, job.cache, job.cache, inputs=list(names), output_name=names.__getitem__,
            r=s.r, preprocessing=job.prep, batch_size=s.batch_size, save_tokens=s.keep_tokens,
            workers=s.workers, progress=s.progress, **s.options,
        )
    else:
        summary = ray_engine.encode(
            job.model_dir, job.cache, names, r=s.r, preprocessing=job.prep,
            batch_size=s.batch_size, keep_tokens=s.keep_tokens, progress=s.progress, options=s.options,
            actors=s.actors,
        )
    report = BuildReport(engine=s.engine, encode_seconds=time.perf_counter() - tic, recached=recached)
    report.computed, report.reused = list(summary.processed), list(summary.skipped)
    return summary, report


def _collect(job: _Job, s: BuildSettings, summary: Any, report: BuildReport) -> list[IndexEntry]:
    """The entries whose features are in the cache (made with these settings); the others go to
    ``report.failed`` and raise unless ``skip_unreadable``."""
    done = []
    for e in job.entries:
        meta = read_meta(job.cache / e.result_name)
        if meta is not None and meta.get("run_key") == job.key:
            done.append(dataclasses.replace(e, frames=job.prep.num_frames,
                                            warnings=tuple(meta.get("warnings", ()))))
        else:
            report.failed[e.label] = summary.failed.get(e.source().name, "not encoded")
    if report.failed and not s.skip_unreadable:
        name, err = next(iter(report.failed.items()))
        err = err if len(err) <= 200 else err[:200] + " ..."
        raise ValueError(
            f"{len(report.failed)} of {len(job.entries)} videos could not be read (e.g. {name}: {err}); "
            "remove or fix them, or pass skip_unreadable=True (CLI: --skip-bad) to index the others (the "
            "features computed so far are kept in the index's cache/ and reused)."
        )
    if not done:
        raise ValueError(f"none of the {len(job.entries)} videos could be read; nothing to index.")
    return done


# --------------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------------


def _reusable(job: _Job, entries: list[IndexEntry], approximate: bool, overwrite: bool) -> bool:
    """Whether the previous generation holds exactly the vectors this build would write (same settings,
    same contents in the same order): then no new generation is written."""
    prev = job.previous
    return (
        prev is not None and not overwrite and prev["settings"] == job.identity
        and bool(prev.get("approximate")) == approximate
        and [IndexEntry.from_json(e).result_name for e in prev["entries"]] == [e.result_name for e in entries]
        and (job.out / prev["data"] / VECTORS_FILE).is_file()
    )


def _write_index(job: _Job, entries: list[IndexEntry], s: BuildSettings, report: BuildReport) -> None:
    """A new ``data-<id>/`` (unless the previous one holds the same vectors), then ``index.json``
    (atomic, and only when it changed), then the removal of generations no reader holds."""
    keep = job.identity["keep_tokens"]
    width = job.model.vision.config.embed_dim
    if _reusable(job, entries, s.approximate, s.overwrite):
        data_name, nbytes = job.previous["data"], dict(job.previous["bytes"])
    else:
        vectors, tokens = store.stacked(job.cache, entries, keep)
        data_name, nbytes = store.write_generation(job.out, vectors, tokens, s.approximate)
        nbytes["tokens_unmerged"] = len(entries) * job.schedule.tokens[0] * width * 4 if keep else 0
        report.written = True
    nbytes["cache"] = sum(f.stat().st_size for f in job.cache.glob("*.npz"))
    info = {
        "kind": INDEX_KIND,
        "format": FORMAT_VERSION if job.identity.get("window") is None else WINDOWS_FORMAT,
        "settings": job.identity,
        "model_dir": job.model_dir,
        "root": job.root,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data_name,
        "metric": "ip",
        "approximate": bool(s.approximate),
        "dim": int(job.model.text_config.embed_dim),
        "count": len(entries),
        "tokens_shape": [int(job.schedule.tokens[-1]), int(width)] if keep else None,
        "bytes": nbytes,
        "entries": [e.to_json() for e in entries],
    }
    store.commit_index(job.out, info, job.previous)
    report.generation = data_name


# --------------------------------------------------------------------------------------------------
# The entry points.
# --------------------------------------------------------------------------------------------------


def build_index(
    model: Any,
    videos: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    r: Any = "msrvtt",
    batch_size: int = 8,
    keep_tokens: bool = False,
    approximate: bool = False,
    num_frames: int | None = None,
    trim_seconds: float | None = None,
    window: float | None = None,
    stride: float | None = None,
    engine: str = "local",
    actors: int | None = None,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = True,
    **apply_options: Any,
) -> VideoIndex:
    """Encode every video / ``.npy`` clip of a collection once and store the features in a vector index.

    Args:
      model: a retrieval model directory (recorded, so that :func:`~tldr_jax.search.index.load_index`
        finds it) or a :class:`~tldr_jax.retrieval.RetrievalModel` (then ``load_index`` needs ``model=``;
        ``engine="ray"`` needs a directory).
      videos: a folder (searched recursively) or a list of files.
      out: the index directory (created; an existing index is updated: only new or changed files are
        encoded, removed files are dropped; nothing is rewritten when nothing changed). Searches of it
        meanwhile keep working (:mod:`tldr_jax.search.locks`).
      r: the vid-TLDR schedule (``"msrvtt"``, a tuple, a fraction, 0 = no merging).
      batch_size: clips per encoder call (every batch padded to it: one compile).
      keep_tokens: also store the merged video tokens, needed for ITM re-ranking (``search(rerank=...)``).
      approximate: also build an HNSW graph and search it (else exact inner product over all vectors).
      num_frames: frames per clip (default: the model's). Files are read as the retrieval evaluation
        reads them (:func:`~tldr_jax.retrieval.features.clip_preprocessing`: middle frame of equal
        segments, short videos padded), so both give the same features.
      trim_seconds: sample only the first seconds of each video (DiDeMo's evaluation: 30), or None.
      window: index each video file as time windows of this many seconds (moments), each window one
        clip (the frames sampled within it as a whole video is sampled) and one row of the index, with
        its ``start`` / ``end`` seconds; the rule for the tail and for short videos is
        :mod:`tldr_jax.video.windows`'s. None: one clip per file. ``.npy`` clips (no frame rate) are
        always read whole. Not with ``trim_seconds``.
      stride: seconds between window starts (default ``window / 2``; at most ``window``).
      engine: ``"local"`` (:func:`tldr_jax.batch.run_directory` in this process) or ``"ray"`` (``ray.data``
        batch inference, one actor per accelerator; :mod:`tldr_jax.search.ray_engine`).
      actors: Ray actors on a machine without accelerators (default 1).
      skip_unreadable: index the readable files when some cannot be read (default: raise, naming them;
        the features already computed stay in ``cache/`` and are reused by the next run).
      overwrite: rebuild an index made with another model or settings (default: refuse it).
      workers: threads decoding ahead of the encoder.
      progress: progress bar on stderr.
      **apply_options: :func:`tldr_jax.apply` options (``method``, ``dtype``, ``precision``, ...).

    Returns:
      the :class:`~tldr_jax.search.index.VideoIndex` (``.build`` is the :class:`BuildReport`).

    Raises:
      FileNotFoundError, NotADirectoryError, FileExistsError: a missing model or video folder, a path
        that is not an index.
      ValueError: no videos, a model that is not a retrieval model, a schedule that does not fit it, an
        existing index built with another model or settings, unreadable files. Nothing is written before
        the arguments are checked, and the previous index stays usable until the new one is complete.
      IndexBusyError: another process is writing the index (its pid named; one writer at a time).
      PermissionError: the index cannot be written (one line).
    """
    started = time.perf_counter()
    s = BuildSettings.checked(
        apply_options, r=r, batch_size=batch_size, keep_tokens=keep_tokens, approximate=approximate,
        num_frames=num_frames, trim_seconds=trim_seconds, window=window, stride=stride, engine=engine,
        actors=actors, skip_unreadable=skip_unreadable, overwrite=overwrite, workers=workers,
        progress=progress,
    )
    job = _prepare(model, videos, out, s)
    with writer_lock(job.out):
        job = _locked(job, s)
        summary, report = _encode(job, s)
        done = _collect(job, s, summary, report)
        _write_index(job, done, s, report)
        store.prune_cache(job.cache, {e.result_name for e in done})
        index = VideoIndex(job.out, open_generation(job.out), job.model, job.identity["model"])
    report.seconds = time.perf_counter() - started
    index.build = report
    return index


def encode_shard(
    model: Any,
    videos: PathLike | Sequence[PathLike],
    out: PathLike,
    shard: tuple[int, int],
    *,
    r: Any = "msrvtt",
    batch_size: int = 8,
    keep_tokens: bool = False,
    num_frames: int | None = None,
    trim_seconds: float | None = None,
    window: float | None = None,
    stride: float | None = None,
    workers: int = 2,
    progress: bool = True,
    **apply_options: Any,
) -> BuildReport:
    """Encode one share of a collection into an index's cache without writing the index (multi-host).

    Process ``i`` of ``n`` (e.g. ``shard=(jax.process_index(), jax.process_count())`` after
    ``jax.distributed.initialize()``) encodes the files ``i, i + n, ...`` of the sorted collection into
    ``out/cache/`` (shared storage), on its local devices. Once every process is done, one call of
    :func:`build_index` with the same arguments finds every result in the cache and writes the index.
    Arguments as :func:`build_index`; returns the :class:`BuildReport` of this share (unreadable files
    are listed in ``failed``, not raised).
    """
    started = time.perf_counter()
    s = BuildSettings.checked(
        apply_options, r=r, batch_size=batch_size, keep_tokens=keep_tokens, num_frames=num_frames,
        trim_seconds=trim_seconds, window=window, stride=stride, skip_unreadable=True, workers=workers,
        progress=progress, shard=shard,
    )
    job = _prepare(model, videos, out, s)
    with writer_lock(job.out, shared=True):  # shares encode side by side; a build waits for none
        job = _locked(job, s)
        summary, report = _encode(job, s)
    report.failed = dict(summary.failed)
    report.seconds = time.perf_counter() - started
    return report
