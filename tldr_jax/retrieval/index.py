"""A searchable index of a video collection: every clip encoded once (vid-TLDR on), stored as unit vectors.

::

    from tldr_jax import retrieval
    index = retrieval.build_index("ckpt/umt_b16_ret", "videos/", "videos.index", r="msrvtt", keep_tokens=True)
    hits = retrieval.search(index, "a dog catches a frisbee", k=10, rerank=50)   # tldr_jax.retrieval.search

An index directory holds

* ``index.json``: the settings the features depend on (model fingerprint, schedule, frames, options), one
  entry per video (name as indexed, absolute path, sha256 of the content, size, frames sampled, tokens
  kept), the sizes on disk and the name of the data directory. It is written last (atomically): an index
  is whatever ``index.json`` points to, so an interrupted build leaves the previous index intact;
* ``data-<id>/``: ``vectors.npy`` ``(n, E)`` float32 unit-norm ``vision_proj`` features (the ITC side of
  the official evaluation), optionally ``tokens.npy`` ``(n, N', D)`` float32 merged video tokens (for ITM
  re-ranking) and ``hnsw.usearch`` (the approximate index). Written to a temporary directory and renamed;
* ``cache/``: the per-file results of :func:`tldr_jax.batch.run_directory` (``<content hash>.npz``,
  ``manifest.jsonl``, ``errors.jsonl``, ``run.json``). Re-indexing reuses every result whose file
  content, model and settings are unchanged, so adding or changing files computes only those files.

Search is exact inner product by default (``usearch``'s brute-force kernel over ``vectors.npy``;
memory-mapped); ``approximate=True`` adds an HNSW graph (``usearch.Index``, metric ``ip``) for large
collections.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.files import sha256_file
from tldr_jax.retrieval.model import RetrievalModel

PathLike = str | os.PathLike

INDEX_FILE = "index.json"
CACHE_DIR = "cache"
VECTORS_FILE = "vectors.npy"
TOKENS_FILE = "tokens.npy"
HNSW_FILE = "hnsw.usearch"
FORMAT_VERSION = 1
ENGINES: tuple[str, ...] = ("local", "ray")
#: HNSW candidate list sizes (usearch's ``expansion_add`` / ``expansion_search``; its defaults, 128 / 64,
#: find 43 % of the true top 10 among 10k random 512-d unit vectors, 256 at search time 78 %).
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 256
#: Settings an index's features depend on: an index built with other values is refused.
IDENTITY_KEYS: tuple[str, ...] = ("model", "arch", "r", "tokens", "num_frames", "keep_tokens", "options")

__all__ = [
    "BuildReport",
    "IndexEntry",
    "VideoIndex",
    "build_index",
    "collect_videos",
    "encode_shard",
    "load_index",
    "model_fingerprint",
]


# --------------------------------------------------------------------------------------------------
# Records.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One indexed video.

    Attributes:
      video: the name as indexed (path relative to the indexed folder, ``/``-separated).
      path: the absolute path when indexed.
      sha256: hash of the file's content (the key of its features in ``cache/``).
      size, mtime_ns: file size and modification time when hashed (an unchanged pair skips re-hashing).
      frames: frames sampled from the file.
      warnings: problems of a file that was still used (e.g. a truncated video).
    """

    video: str
    path: str
    sha256: str
    size: int
    mtime_ns: int
    frames: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def result_name(self) -> str:
        """The file name of this video's features in ``cache/`` (content-keyed)."""
        return f"{self.sha256[:32]}.npz"

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (``warnings`` only when there are some)."""
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        if not out["warnings"]:
            del out["warnings"]
        return out

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> IndexEntry:
        """The inverse of :meth:`to_json`."""
        return cls(
            video=str(rec["video"]), path=str(rec["path"]), sha256=str(rec["sha256"]), size=int(rec["size"]),
            mtime_ns=int(rec["mtime_ns"]), frames=int(rec.get("frames", 0)),
            warnings=tuple(rec.get("warnings", ())),
        )


@dataclasses.dataclass
class BuildReport:
    """What :func:`build_index` did.

    Attributes:
      computed: videos encoded in this run. reused: videos whose features were already in the cache.
      failed: video -> error, for files that could not be read (left out with ``skip_unreadable=True``).
      engine: ``"local"`` or ``"ray"``. seconds: wall time of the whole build (hashing, encoding, writing).
      encode_seconds: time spent encoding (the ``run_directory`` / Ray stage).
    """

    computed: list[str] = dataclasses.field(default_factory=list)
    reused: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    engine: str = "local"
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def videos_per_second(self) -> float:
        """Videos encoded per second of encoding (0 when nothing was encoded)."""
        return len(self.computed) / self.encode_seconds if self.computed and self.encode_seconds > 0 else 0.0


class VideoIndex:
    """A loaded index (:func:`load_index`, :func:`build_index`); search it with
    :func:`tldr_jax.retrieval.search`.

    Attributes:
      path: the index directory. info: the parsed ``index.json``. entries: one :class:`IndexEntry` per row.
      vectors: ``(n, E)`` float32 unit-norm video features (memory-mapped).
      tokens: ``(n, N', D)`` float32 merged video tokens (memory-mapped), or None (built without
        ``keep_tokens``).
      model: the :class:`RetrievalModel` the index was built with (checked by fingerprint), or None when
        loaded with ``model=False``.
      build: the :class:`BuildReport` when returned by :func:`build_index`.
    """

    def __init__(self, path: Path, info: dict[str, Any], model: RetrievalModel | None):
        self.path = path
        self.info = info
        self.entries = [IndexEntry.from_json(e) for e in info["entries"]]
        data = path / info["data"]
        self.vectors: np.ndarray = np.load(data / VECTORS_FILE, mmap_mode="r")
        self.tokens: np.ndarray | None = (
            np.load(data / TOKENS_FILE, mmap_mode="r") if info["settings"]["keep_tokens"] else None
        )
        self.model = model
        self.build: BuildReport | None = None
        self._hnsw: Any = None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        s = self.info["settings"]
        return (
            f"VideoIndex({self.path}, {len(self)} videos, {s['arch']}, r={s['r']} -> "
            f"{s['tokens'][-1]} tokens, "
            f"{'tokens kept' if self.tokens is not None else 'no tokens'}, "
            f"{'approximate' if self.approximate else 'exact'} search)"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What the features depend on (model fingerprint, arch, r, token counts, frames, options)."""
        return self.info["settings"]

    @property
    def approximate(self) -> bool:
        """Whether searches use the HNSW graph (else exact inner product over every vector)."""
        return bool(self.info.get("approximate"))

    @property
    def hnsw(self) -> Any:
        """The ``usearch.Index`` (HNSW, metric ``ip``), memory-mapped on first use; None for exact indexes."""
        if self.approximate and self._hnsw is None:
            from usearch.index import Index

            self._hnsw = Index.restore(str(self.path / self.info["data"] / HNSW_FILE), view=True)
            self._hnsw.expansion_search = HNSW_EXPANSION_SEARCH
        return self._hnsw

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: ``vectors``, ``tokens``, ``hnsw``, ``cache`` and ``tokens_unmerged`` (what the
        tokens would take without merging)."""
        return dict(self.info["bytes"])


# --------------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------------


def collect_videos(videos: PathLike | Sequence[PathLike]) -> tuple[Path | None, list[Path]]:
    """The indexed folder (or None for a list) and its video / ``.npy`` files, sorted.

    A folder is searched recursively (hidden files and folders skipped). Raises ``FileNotFoundError``
    for a missing folder or file and ``ValueError`` when there is nothing to index.
    """
    from tldr_jax.video import CLIP_EXTENSIONS

    if isinstance(videos, (str, os.PathLike)):
        root = Path(videos).expanduser().absolute()
        if not root.exists():
            raise FileNotFoundError(f"videos folder {root} does not exist; give a folder of video files.")
        if not root.is_dir():
            raise NotADirectoryError(
                f"{root} is not a folder; give the folder of videos to index (or a list of files in Python)."
            )
        files = sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in CLIP_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
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


def _entries(root: Path | None, files: list[Path], previous: dict[str, IndexEntry]) -> list[IndexEntry]:
    """One entry per file; a file whose size and mtime match its previous entry is not re-hashed."""
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


# --------------------------------------------------------------------------------------------------
# Identity.
# --------------------------------------------------------------------------------------------------


def model_fingerprint(model: RetrievalModel) -> str:
    """A hash of both towers' weights, the text config and the vocabulary (identifies the model)."""
    from tldr_jax.batch import hash_tree, params_fingerprint

    h = hashlib.blake2b(digest_size=16)
    h.update(params_fingerprint(model.vision).encode())
    h.update(json.dumps(dataclasses.asdict(model.text_config), sort_keys=True, default=str).encode())
    h.update(model.vocab.digest.encode())
    hash_tree(h, model.text)
    return h.hexdigest()


def _check_identity(old: dict[str, Any], new: dict[str, Any], where: Path, fix: str) -> None:
    diff = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if diff:
        detail = "; ".join(f"{k}: {_short(old.get(k))} in the index, {_short(new.get(k))} now" for k in diff)
        raise ValueError(f"the index {where} was built with another model or settings ({detail}); {fix}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:16] + "..."


def read_info(path: PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of an index directory (``FileNotFoundError`` / ``ValueError`` when it is
    missing or not an index)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"no index at {p}; build one with `tldr-jax index VIDEOS --model DIR --out {p}`."
        )
    f = p / INDEX_FILE
    if not f.is_file():
        hint = (" (an interrupted build: rerun the same `tldr-jax index` command to finish it)"
                if (p / CACHE_DIR).is_dir() else "")
        raise FileNotFoundError(f"{p} holds no {INDEX_FILE}: it is not a video index{hint}.")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{f} is not readable JSON ({err}); rebuild the index.") from None
    if not isinstance(info, dict) or info.get("kind") != "tldr_jax.video_index":
        raise ValueError(f"{f} is not a tldr_jax video index; rebuild it with `tldr-jax index`.")
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{f} has format {info.get('format')!r}; this tldr_jax reads {FORMAT_VERSION}. Rebuild the index."
        )
    if not (p / info["data"] / VECTORS_FILE).is_file():
        raise ValueError(f"{p / info['data']} is missing; the index is damaged. Rebuild it.")
    return info


# --------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------


def _load_model(model: Any) -> tuple[RetrievalModel, str | None]:
    """A RetrievalModel and its directory (None for an object)."""
    if isinstance(model, RetrievalModel):
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a RetrievalModel or the path of a retrieval model directory; got "
            f"{type(model).__name__}."
        )
    from tldr_jax.retrieval.checkpoint import load_retrieval_model

    path = Path(model).expanduser().absolute()
    return load_retrieval_model(path, what=f"model {path}"), str(path)


def load_index(path: PathLike, model: Any = None) -> VideoIndex:
    """Open an index directory for :func:`~tldr_jax.retrieval.search`.

    Args:
      path: the index directory (``build_index``'s ``out``).
      model: the :class:`RetrievalModel` or model directory to encode queries with; default: the directory
        the index was built from. It must be the model the index was built with (checked by fingerprint:
        ``ValueError`` otherwise). ``False``: open without a model (vectors and metadata only).

    Returns:
      :class:`VideoIndex`.
    """
    p = Path(path).expanduser().absolute()
    info = read_info(p)
    if model is False:
        return VideoIndex(p, info, None)
    if model is None:
        model = info.get("model_dir")
        if model is None:
            raise ValueError(
                f"the index {p} was built from a model object, not a directory; pass model=... "
                "(CLI: --model)."
            )
    loaded, _ = _load_model(model)
    _check_identity(
        info["settings"], {**info["settings"], "model": model_fingerprint(loaded)}, p,
        "search it with the model it was built with, or rebuild it with this model (--overwrite).",
    )
    return VideoIndex(p, info, loaded)


# --------------------------------------------------------------------------------------------------
# Building.
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
    if any(out.iterdir()) and not (out / CACHE_DIR).is_dir():
        raise FileExistsError(
            f"out {out} is a non-empty folder that is not a video index; give a new or empty path."
        )
    return None


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
      model: a retrieval model directory (recorded, so that :func:`load_index` finds it) or a
        :class:`RetrievalModel` (then ``load_index`` needs ``model=``; ``engine="ray"`` needs a directory).
      videos: a folder (searched recursively) or a list of files.
      out: the index directory (created; an existing index is updated: only new or changed files are
        encoded, removed files are dropped).
      r: the vid-TLDR schedule (``"msrvtt"``, a tuple, a fraction, 0 = no merging).
      batch_size: clips per encoder call (every batch padded to it: one compile).
      keep_tokens: also store the merged video tokens, needed for ITM re-ranking (``search(rerank=...)``).
      approximate: also build an HNSW graph and search it (else exact inner product over all vectors).
      num_frames: frames per clip (default: the model's); files are read with UMT's evaluation
        preprocessing (middle frame of equal segments, short videos padded), as the official evaluation.
      engine: ``"local"`` (:func:`tldr_jax.batch.run_directory` in this process) or ``"ray"`` (``ray.data``
        batch inference, one actor per accelerator; :mod:`tldr_jax.retrieval.ray_engine`).
      actors: Ray actors on a machine without accelerators (default 1).
      skip_unreadable: index the readable files when some cannot be read (default: raise, naming them;
        the features already computed stay in ``cache/`` and are reused by the next run).
      overwrite: rebuild an index made with another model or settings (default: refuse it).
      workers: threads decoding ahead of the encoder. progress: progress bar on stderr.
      **apply_options: :func:`tldr_jax.apply` options (``method``, ``dtype``, ``precision``, ...).

    Returns:
      the :class:`VideoIndex` (``.build`` is the :class:`BuildReport`).

    Raises:
      FileNotFoundError / NotADirectoryError / FileExistsError: a missing model or video folder, a path
        that is not an index. ValueError: no videos, a model that is not a retrieval model, a schedule
        that does not fit it, an existing index built with another model or settings, unreadable files.
        Nothing is written before the arguments are checked, and the previous index stays usable until
        the new one is complete.
    """
    return _build(
        model, videos, out, r=r, batch_size=batch_size, keep_tokens=keep_tokens, approximate=approximate,
        num_frames=num_frames, engine=engine, actors=actors, skip_unreadable=skip_unreadable,
        overwrite=overwrite, workers=workers, progress=progress, shard=None, apply_options=apply_options,
    )


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
    return _build(
        model, videos, out, r=r, batch_size=batch_size, keep_tokens=keep_tokens, approximate=False,
        num_frames=num_frames, engine="local", actors=None, skip_unreadable=True, overwrite=False,
        workers=workers, progress=progress, shard=shard, apply_options=apply_options,
    )


def _build(
    model: Any, videos: Any, out: Any, *, r: Any, batch_size: Any, keep_tokens: Any, approximate: Any,
    num_frames: Any, engine: Any, actors: Any, skip_unreadable: Any, overwrite: Any, workers: Any,
    progress: Any, shard: Any, apply_options: dict[str, Any],
) -> Any:
    """:func:`build_index` (``shard`` None) or :func:`encode_shard` (encode a share, write no index)."""
    import tldr_jax
    from tldr_jax.batch import _jsonable as jsonable
    from tldr_jax.options import ApplyOptions, check_int

    started = time.perf_counter()
    if shard is not None:
        if (not isinstance(shard, (tuple, list)) or len(shard) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
                or not 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (index, count) with 0 <= index < count; got {shard!r}.")
    check_int("batch_size", batch_size, minimum=1)
    check_int("workers", workers, minimum=0)
    if actors is not None:
        check_int("actors", actors, minimum=1)
    flags = {"keep_tokens": keep_tokens, "approximate": approximate, "skip_unreadable": skip_unreadable,
             "overwrite": overwrite, "progress": progress}
    for name, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False; got {flag!r}.")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}.")
    opts = ApplyOptions.from_kwargs(apply_options, where="build_index").non_default()
    out_path = Path(out).expanduser().absolute()
    previous = _check_out(out_path, overwrite)
    root, files = collect_videos(videos)
    if shard is not None:
        files = files[int(shard[0]) :: int(shard[1])]
    loaded, model_dir = _load_model(model)
    if engine == "ray" and model_dir is None:
        raise ValueError("engine='ray' needs the model as a directory path (each actor loads it).")
    frames = loaded.vision.config.num_frames if num_frames is None else check_int("num_frames", num_frames,
                                                                                   minimum=1)
    sched = tldr_jax.schedule(loaded.vision, r, num_frames=frames)  # ValueError for an r that does not fit
    settings = {
        "model": model_fingerprint(loaded),
        "arch": loaded.vision.config.name,
        "r": jsonable(r),
        "tokens": list(sched.tokens),
        "vid_tldr": sched.tokens[-1] < sched.tokens[0],
        "num_frames": int(frames),
        "keep_tokens": bool(keep_tokens),
        "options": jsonable(dict(sorted(opts.items()))),
        "preprocessing": "umt_eval (middle sampling, padded)",
    }
    if previous is not None and not overwrite:
        _check_identity(previous["settings"], settings, out_path,
                        "index into a new path, or pass overwrite=True (CLI: --overwrite) to rebuild it.")
    old_entries = {e["path"]: IndexEntry.from_json(e) for e in (previous or {}).get("entries", [])}
    entries = _entries(root, files, old_entries)

    cache = out_path / CACHE_DIR
    if overwrite and (previous is None or previous["settings"] != settings) and cache.exists():
        shutil.rmtree(cache)  # features of other settings; the previous index stays readable until replaced
    by_path = {e.path: e.result_name for e in entries}
    encode = dict(
        r=r, num_frames=frames, batch_size=batch_size, keep_tokens=keep_tokens, workers=workers,
        progress=progress, options=opts,
    )
    tic = time.perf_counter()
    if engine == "local":
        summary = _encode_local(loaded, files, cache, by_path, **encode)
    else:
        from tldr_jax.retrieval import ray_engine

        summary = ray_engine.encode(model_dir, files, cache, by_path, actors=actors, **encode)
    report = BuildReport(engine=engine, encode_seconds=time.perf_counter() - tic)
    report.computed, report.reused = list(summary.processed), list(summary.skipped)
    if shard is not None:
        report.failed = dict(summary.failed)
        report.seconds = time.perf_counter() - started
        return report

    from tldr_jax.batch import read_meta, run_key, run_settings
    from tldr_jax.video import preprocessing_for

    spec = preprocessing_for(loaded.vision, num_frames=frames, sampling="middle", pad=True)
    key = run_key(run_settings(loaded.vision, spec, r, keep_tokens, opts))
    done, metas = [], {}
    for e in entries:
        meta = read_meta(cache / e.result_name)
        if meta is not None and meta.get("run_key") == key:
            done.append(e)
            metas[e.path] = meta
        else:
            report.failed[e.video] = summary.failed.get(Path(e.path).name, "not encoded")
    if report.failed and not skip_unreadable:
        name, err = next(iter(report.failed.items()))
        err = err if len(err) <= 200 else err[:200] + " ..."
        raise ValueError(
            f"{len(report.failed)} of {len(entries)} videos could not be read (e.g. {name}: {err}); remove "
            "or fix them, or pass skip_unreadable=True (CLI: --skip-bad) to index the others (the features "
            "computed so far are kept in the index's cache/ and reused)."
        )
    if not done:
        raise ValueError(f"none of the {len(entries)} videos could be read; nothing to index.")
    done = [dataclasses.replace(e, frames=frames, warnings=tuple(metas[e.path].get("warnings", ())))
            for e in done]
    _write_index(out_path, loaded, done, settings, model_dir, approximate, sched)
    _prune_cache(cache, {e.result_name for e in done})
    index = VideoIndex(out_path, read_info(out_path), loaded)
    report.seconds = time.perf_counter() - started
    index.build = report
    return index


def _encode_local(
    model: RetrievalModel, files: list[Path], cache: Path, names: dict[str, str], *, r: Any, num_frames: int,
    batch_size: int, keep_tokens: bool, workers: int, progress: bool, options: dict[str, Any],
) -> Any:
    """:func:`tldr_jax.batch.run_directory` over ``files`` into the content-keyed ``cache``."""
    from tldr_jax.batch import run_directory

    return run_directory(
        model.vision, cache, cache, inputs=files, output_name=lambda p: names[str(p)], r=r,
        num_frames=num_frames, batch_size=batch_size, sampling="middle", pad=True, save_tokens=keep_tokens,
        workers=workers, progress=progress, **options,
    )


def _write_index(
    out: Path, model: RetrievalModel, entries: list[IndexEntry], settings: dict[str, Any],
    model_dir: str | None, approximate: bool, sched: Any,
) -> None:
    """Write ``data-<id>/`` (temporary directory, renamed), then ``index.json`` (atomic), then remove the
    previous data directory."""
    import jax.numpy as jnp

    from tldr_jax.files import atomic_directory, write_text_atomic
    from tldr_jax.retrieval.text import normalize

    cache = out / CACHE_DIR
    keep = settings["keep_tokens"]
    emb, toks = [], []
    for e in entries:
        with np.load(cache / e.result_name, allow_pickle=False) as z:
            emb.append(z["embedding"])
            if keep:
                toks.append(z["tokens"])
    # The same normalisation as encode_video (official F.normalize of vision_proj), in float32.
    vectors = np.asarray(normalize(jnp.asarray(np.stack(emb), jnp.float32)), np.float32)
    data_name = f"data-{uuid.uuid4().hex[:12]}"
    nbytes = {"vectors": int(vectors.nbytes), "tokens": 0, "hnsw": 0}
    with atomic_directory(out / data_name) as tmp:
        np.save(tmp / VECTORS_FILE, vectors)
        if keep:
            tokens = np.stack(toks).astype(np.float32)
            np.save(tmp / TOKENS_FILE, tokens)
            nbytes["tokens"] = int(tokens.nbytes)
        if approximate:
            from usearch.index import Index

            ann = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", expansion_add=HNSW_EXPANSION_ADD)
            ann.add(np.arange(len(vectors), dtype=np.uint64), vectors)
            ann.save(str(tmp / HNSW_FILE))
            nbytes["hnsw"] = (tmp / HNSW_FILE).stat().st_size
    width = model.vision.config.embed_dim
    nbytes["tokens_unmerged"] = len(entries) * sched.tokens[0] * width * 4 if keep else 0
    nbytes["cache"] = sum(f.stat().st_size for f in cache.glob("*.npz"))
    info = {
        "kind": "tldr_jax.video_index",
        "format": FORMAT_VERSION,
        "settings": settings,
        "model_dir": model_dir,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data_name,
        "metric": "ip",
        "approximate": bool(approximate),
        "dim": int(vectors.shape[1]),
        "count": len(entries),
        "tokens_shape": [int(sched.tokens[-1]), int(width)] if keep else None,
        "bytes": nbytes,
        "entries": [e.to_json() for e in entries],
    }
    write_text_atomic(out / INDEX_FILE, json.dumps(info, indent=1) + "\n")
    for old in out.glob("data-*"):
        if old.name != data_name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _prune_cache(cache: Path, keep: set[str]) -> None:
    """Remove cached results no entry refers to (files removed from or changed in the collection)."""
    for f in cache.glob("*.npz"):
        if f.name not in keep:
            f.unlink(missing_ok=True)

