"""Batch inference over a directory of videos, streamed to disk, resumable.

::

    params = tldr_jax.checkpoint.load("umt_b16_ckpt")
    summary = tldr_jax.batch.run_directory(params, "videos/", "features/", r="msrvtt", batch_size=8)

For every input ``videos/<file>`` (video files and ``.npy`` clips, not recursive) the run writes
``features/<file>.npz`` with

* ``pooled`` ``(D,)`` float32, and ``logits`` ``(K,)`` / ``embedding`` ``(P,)`` when the model has them;
* ``tokens`` ``(N', D)`` and ``size`` ``(N', 1)`` with ``save_tokens=True``;
* ``meta``: a JSON string (input name, merge schedule, token counts, run key).

Each ``.npz`` is written to a temporary file and renamed into place (``os.replace``), so a file that
exists is complete. ``manifest.jsonl`` gets one line per finished input (with ``warnings`` for inputs
used despite a problem, e.g. a truncated video), ``errors.jsonl`` one line per input that could not
be read or gave non-finite outputs in the latest run (it is skipped; the run goes on; a rerun retries
it), ``run.json`` the settings. Every argument is checked before anything is written.

Resuming: run the same call again. Inputs whose ``.npz`` exists and was made with the same settings
(model weights, schedule, frames, preprocessing, options) are not recomputed; a directory made with
other settings raises unless ``overwrite=True``. Inputs that failed are retried.

``.npy`` clips hold ``(T, H, W, 3)`` frames: ``uint8`` pixels are sampled, resized and normalised like
video frames; float clips are taken as already normalised (only the frames are sampled; the size must
match the model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tldr_jax.api import Output, Params, cast, config_for_video, params_config, validate_video
from tldr_jax.files import write_text_atomic
from tldr_jax.options import ApplyOptions, check_int
from tldr_jax.prefetch import prefetch
from tldr_jax.results import (
    ERRORS,
    MANIFEST,
    RUN_FILE,
    append_jsonl,
    check_run_file,
    is_complete,
    output_path,
    read_jsonl,
    read_meta,
    reset_errors,
    run_key,
    run_settings,
    save_npz_atomic,
)
from tldr_jax.schedule import check_schedule
from tldr_jax.video import CLIP_EXTENSIONS, Preprocessing, Segment, load_clip, preprocessing_for

PathLike = str | os.PathLike
#: One input of a run: a file, or a window of a video file (:class:`~tldr_jax.video.Segment`); both
#: have a ``name`` (``clip.mp4``, ``clip.mp4#t=20,30``) that names its result.
Source = Path | Segment


# --------------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------------


def list_inputs(in_dir: PathLike) -> list[Path]:
    """Video files and ``.npy`` clips directly in ``in_dir`` (hidden files skipped), sorted by name."""
    root = Path(in_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input directory {root} does not exist or is not a directory.")
    return sorted(
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CLIP_EXTENSIONS
    )


# --------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_directory` did.

    Attributes:
      out_dir: the output directory.
      processed: input names computed in this run.
      skipped: input names whose results already existed (not recomputed).
      failed: input name -> error message, for inputs that could not be read (or gave non-finite
        outputs).
      warnings: input name -> warnings about inputs that were used (e.g. a truncated video).
      seconds: wall time of the run.
    """

    out_dir: Path
    processed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        warned = f", {len(self.warnings)} with warnings" if self.warnings else ""
        return (
            f"{len(self.processed)} computed, {len(self.skipped)} already done, {len(self.failed)} failed"
            f"{warned} in {self.seconds:.1f} s -> {self.out_dir}"
        )


Item = tuple[Source, "np.ndarray | None", "str | None", list[str]]


def _read_ahead(
    paths: Sequence[Source], read: Callable[[Source, Callable[[str], None]], np.ndarray], workers: int,
    depth: int,
) -> Iterator[Item]:
    """``(path, clip, None, notes)`` or ``(path, None, error, notes)`` in order, reading up to ``depth``
    ahead (:func:`tldr_jax.prefetch.prefetch`); ``notes`` are the warnings the reader reported for that
    file."""

    def safe(path: Path) -> Item:
        notes: list[str] = []
        try:
            return path, read(path, notes.append), None, notes
        except Exception as err:  # noqa: BLE001 - any decoder failure skips the file
            return path, None, f"{type(err).__name__}: {err}", notes

    return prefetch(safe, paths, workers=workers, depth=depth)


def _batches(
    items: Iterable[Item],
    batch_size: int,
    on_error: Callable[[Source, str], None],
) -> Iterator[tuple[list[Source], list[np.ndarray], list[list[str]]]]:
    """Group readable clips into lists of ``batch_size`` (the last may be shorter); report the others."""
    paths: list[Source] = []
    clips: list[np.ndarray] = []
    notes: list[list[str]] = []
    for path, clip, err, note in items:
        if clip is None:
            on_error(path, err or "unknown error")
            continue
        paths.append(path)
        clips.append(clip)
        notes.append(note)
        if len(clips) == batch_size:
            yield paths, clips, notes
            paths, clips, notes = [], [], []
    if clips:
        yield paths, clips, notes


def result_arrays(out: Output, i: int, save_tokens: bool) -> dict[str, np.ndarray]:
    """Row ``i`` of a batch ``Output`` as float32 host arrays (``pooled``, ``logits``, ...)."""
    arrays = {"pooled": out.pooled}
    if out.logits is not None:
        arrays["logits"] = out.logits
    if out.embedding is not None:
        arrays["embedding"] = out.embedding
    if save_tokens:
        arrays["tokens"] = out.tokens
        arrays["size"] = out.size
    return {k: np.asarray(v[i], dtype=np.float32) for k, v in arrays.items()}


def run_directory(
    params: Params,
    in_dir: PathLike,
    out_dir: PathLike,
    *,
    r: Any = 0,
    num_frames: int | None = None,
    batch_size: int = 8,
    sampling: str | None = None,
    normalization: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pad: bool = False,
    preprocessing: Preprocessing | None = None,
    save_tokens: bool = False,
    mesh: Any = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    reader: Callable[[Path, Preprocessing], np.ndarray] | None = None,
    on_file_done: Callable[[str, Path], None] | None = None,
    inputs: Sequence[PathLike] | None = None,
    output_name: Callable[[Path], str] | None = None,
    compile_cache: bool = True,
    **apply_kwargs: Any,
) -> RunSummary:
    """Encode every video / ``.npy`` clip in ``in_dir``, writing one ``.npz`` per input to ``out_dir``.

    Args:
      params: model weights (:func:`tldr_jax.init`, :func:`tldr_jax.checkpoint.load`, ...).
      in_dir: directory of inputs (not searched recursively).
      out_dir: results directory (created); see the module docstring for its files.
      r: merge schedule, as for :func:`tldr_jax.apply`.
      num_frames: frames per clip (default: the model's); sinusoidal-position models accept others.
      batch_size: clips per forward pass. Every batch is padded to this size (rounded up to a multiple
        of the device count), so one compiled program serves the whole run.
      sampling: frame sampling override (default: the model family's evaluation preprocessing,
        :func:`tldr_jax.video.preprocessing_for`; the same for the next four).
      normalization: a named normalisation override (``tldr_jax.video.NORMALIZATION``).
      mean: per-channel mean override, on the ``[0, 1]`` scale.
      std: per-channel standard deviation override, on the ``[0, 1]`` scale.
      pad: pad short videos by repeating their last frame instead of refusing them.
      preprocessing: the whole :class:`~tldr_jax.video.Preprocessing` instead of those overrides (e.g.
        the retrieval evaluation's, trimming included: the index and the evaluation read clips alike).
      save_tokens: also store the ``(N', D)`` output tokens and their ``(N', 1)`` sizes.
      mesh: a device mesh for :func:`tldr_jax.parallel.sharded_apply` (default: all local devices).
      workers: threads reading and decoding ahead of the model (0: read in the main thread).
      overwrite: recompute everything, even results of the same settings.
      progress: show a tqdm progress bar.
      reader: replaces :func:`tldr_jax.video.load_clip` (``reader(path, preprocessing) -> (T, H, W, 3)
        float32``).
      on_file_done: called as ``on_file_done(name, npz_path)`` after each result is on disk.
      inputs: the input files to encode, in place of listing ``in_dir`` (then ``in_dir`` is only
        recorded; files may lie in sub-directories), or :class:`~tldr_jax.video.Segment` s (a window
        of a video file, read by :func:`~tldr_jax.video.load_clip` as one clip; named ``clip.mp4#t=20,30``
        in the summary, and passed as they are to ``reader`` and ``output_name``).
      output_name: names each result file, ``output_name(path) -> "KEY.npz"`` (default: the input's
        name + ``.npz``); e.g. a content hash, so that a changed file is recomputed and equal files
        share one result (:mod:`tldr_jax.search.build` does this).
      compile_cache: turn on JAX's persistent compilation cache (:func:`tldr_jax.enable_compile_cache`;
        ``TLDR_JAX_COMPILE_CACHE=0`` keeps it off) before compiling, so a rerun or resumed run loads
        the compiled program instead of compiling it again. It stays on for the rest of the process.
      **apply_kwargs: the keyword options of :func:`tldr_jax.apply` (``method``, ``pool``, ``dtype``,
        ``precision``, ...: :data:`tldr_jax.options.APPLY_OPTIONS`).

    Returns:
      :class:`RunSummary`.

    Raises:
      ValueError, TypeError, FileNotFoundError, NotADirectoryError: a bad argument (options, ``r``
        for this model, frames, preprocessing, batch size, directories), raised before anything is
        written: a failed call leaves ``out_dir`` as it was. Unreadable inputs and inputs whose
        outputs are not finite do not raise: they are listed in ``errors.jsonl`` and
        :attr:`RunSummary.failed`.
    """
    from tqdm.auto import tqdm

    from tldr_jax import parallel

    # Everything is checked before anything is written (a failed call leaves no trace on disk).
    started = time.perf_counter()
    opts, spec, inputs, mesh = _validate_run(
        params, in_dir, out_dir, r=r, num_frames=num_frames, batch_size=batch_size, sampling=sampling,
        normalization=normalization, mean=mean, std=std, pad=pad, preprocessing=preprocessing, mesh=mesh,
        workers=workers,
        flags={"save_tokens": save_tokens, "overwrite": overwrite, "progress": progress,
               "compile_cache": compile_cache},
        reader=reader, on_file_done=on_file_done, apply_kwargs=apply_kwargs, files=inputs,
    )
    out_dir = Path(out_dir)

    def dest_of(path: Source) -> Path:
        if output_name is not None:
            return out_dir / output_name(path)
        return out_dir / f"{path.name}.npz" if isinstance(path, Segment) else output_path(out_dir, path)

    settings = run_settings(params, spec, r, save_tokens, opts.non_default())
    key = run_key(settings)
    check_run_file(out_dir, settings, overwrite)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RUN_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    summary = RunSummary(out_dir)
    todo = _pending(inputs, out_dir, key, overwrite, summary, dest_of)
    reset_errors(out_dir)

    padded = parallel.padded_size(batch_size, parallel.local_device_count(mesh))
    if opts.dtype is not None and todo:  # cast the kernels once, not inside every batch (same values)
        params = cast(params, opts.dtype)
    params = parallel.replicate(params, mesh)

    def read(path: Source, note: Callable[[str], None]) -> np.ndarray:
        clip = load_clip(path, spec, on_warning=note) if reader is None else reader(path, spec)
        return _checked_clip(clip, spec)

    bar = tqdm(total=len(inputs), initial=len(summary.skipped), unit="clip", disable=not progress)

    def on_error(path: Source, message: str) -> None:
        summary.failed[path.name] = message
        append_jsonl(out_dir / ERRORS, {"name": path.name, "error": message, "time": time.time()})
        bar.update(1)

    def on_result(path: Source, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        dest = save_npz_atomic(dest_of(path), {**arrays, "meta": np.asarray(json.dumps(meta))})
        append_jsonl(out_dir / MANIFEST, {**meta, "output": dest.name})
        summary.processed.append(path.name)
        if meta.get("warnings"):
            summary.warnings[path.name] = meta["warnings"]
        bar.update(1)
        if on_file_done is not None:
            on_file_done(path.name, dest)

    if compile_cache and todo:
        from tldr_jax.compile_cache import enable_compile_cache

        enable_compile_cache()
    try:
        items = _read_ahead(todo, read, workers, depth=2 * padded)
        for paths, clips, notes in _batches(items, batch_size, on_error):
            tic = time.perf_counter()
            batch_video = parallel.pad_batch(np.stack(clips), padded)
            out = parallel.sharded_apply(params, batch_video, r, mesh=mesh, **opts.non_default())
            host = jax.tree_util.tree_map(np.asarray, out)
            per_clip = (time.perf_counter() - tic) / len(paths)
            for i, path in enumerate(paths):
                _emit(host, i, path, notes[i], key=key, seconds=per_clip, save_tokens=save_tokens,
                      on_result=on_result, on_error=on_error)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _pending(
    inputs: Sequence[Source], out_dir: Path, key: str, overwrite: bool, summary: RunSummary,
    dest_of: Callable[[Source], Path],
) -> list[Source]:
    """The inputs still to compute; those with a result of this run key go to ``summary.skipped`` (and
    get the manifest line a run interrupted after writing their result had not written yet)."""
    todo: list[Source] = []
    logged = {rec.get("name") for rec in read_jsonl(out_dir / MANIFEST) if rec.get("run_key") == key}
    for path in inputs:
        dest = dest_of(path)
        if not overwrite and is_complete(dest, key):
            summary.skipped.append(path.name)
            if path.name not in logged:
                append_jsonl(out_dir / MANIFEST, {**(read_meta(dest) or {}), "output": dest.name})
        else:
            todo.append(path)
    return todo


def _emit(
    host: Output, i: int, path: Source, notes: list[str], *, key: str, seconds: float, save_tokens: bool,
    on_result: Callable[[Source, dict[str, np.ndarray], dict[str, Any]], None],
    on_error: Callable[[Source, str], None],
) -> None:
    """Row ``i`` of a batch's host ``Output``: ``on_result(path, arrays, meta)``, or ``on_error`` when an
    output is not finite (nothing saved)."""
    arrays = result_arrays(host, i, save_tokens)
    bad = sorted(k for k, v in arrays.items() if not np.isfinite(v).all())
    if bad:
        on_error(path, f"non-finite model output ({', '.join(bad)} hold NaN/inf); nothing saved")
        return
    meta = {
        "name": path.name, "run_key": key, "tokens": list(host.schedule.tokens),
        "r": list(host.schedule.r), "seconds": round(seconds, 4),
    }
    if notes:
        meta["warnings"] = notes
    on_result(path, arrays, meta)


def _checked_clip(clip: Any, spec: Preprocessing) -> np.ndarray:
    """A reader's clip as float32 of ``spec.shape`` with finite values (``ValueError`` otherwise)."""
    arr = np.asarray(clip)
    if arr.shape != spec.shape or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"the reader returned {arr.dtype} {arr.shape}; the model needs float {spec.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError("the clip holds NaN or infinite values; it would give NaN features.")
    return arr.astype(np.float32, copy=False)


def _preprocessing(params: Params, preprocessing: Any, **overrides: Any) -> Preprocessing:
    """The run's preprocessing: ``preprocessing`` as given, or the model's with ``overrides``."""
    if preprocessing is None:
        return preprocessing_for(params.config, **overrides)
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(
            "preprocessing must be a tldr_jax.video.Preprocessing or None; got "
            f"{type(preprocessing).__name__}."
        )
    given = [k for k, v in overrides.items() if v not in (None, False)]
    if given:
        raise TypeError(
            f"give preprocessing or the overrides {', '.join(given)}, not both (set them in the "
            "Preprocessing)."
        )
    return preprocessing


def _validate_run(
    params: Any,
    in_dir: Any,
    out_dir: Any,
    *,
    r: Any,
    num_frames: Any,
    batch_size: Any,
    sampling: Any,
    normalization: Any,
    mean: Any,
    std: Any,
    pad: Any,
    preprocessing: Any,
    mesh: Any,
    workers: Any,
    flags: dict[str, Any],
    reader: Any,
    on_file_done: Any,
    apply_kwargs: dict[str, Any],
    files: Any = None,
) -> tuple[ApplyOptions, Preprocessing, list[Source], Any]:
    """Check every argument of :func:`run_directory` (reads only); return the apply options, the
    preprocessing, the inputs and the mesh."""
    from tldr_jax import parallel

    opts = ApplyOptions.from_kwargs(apply_kwargs, where="run_directory")
    params_config(params)
    check_int("batch_size", batch_size, minimum=1)
    check_int("workers", workers, minimum=0)
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False; got {value!r}.")
    for name, fn in (("reader", reader), ("on_file_done", on_file_done)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None; got {fn!r}.")
    spec = _preprocessing(
        params, preprocessing, num_frames=num_frames, sampling=sampling, normalization=normalization,
        mean=mean, std=std, pad=pad,
    )
    dummy = jax.ShapeDtypeStruct((1, *spec.shape), np.float32)  # shape and frame count, no pixels
    try:
        validate_video(params.config, dummy)
    except ValueError as err:
        raise ValueError(f"num_frames={spec.num_frames}: {err}") from None
    check_schedule(config_for_video(params.config, dummy), r)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a directory; give a directory path.")
    if files is None:
        inputs = list_inputs(in_dir)
    else:
        inputs = [f if isinstance(f, Segment) else Path(f) for f in files]
        missing = [str(f) for f in inputs if not (f.path if isinstance(f, Segment) else f).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} input file(s) do not exist, e.g. {missing[0]}.")
    if mesh is None:
        mesh = parallel.make_mesh(jax.local_devices())
    elif not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
    if parallel.spans_processes(mesh):
        raise ValueError(
            "run_directory works per process: give each process its own input directory (or files) and "
            "mesh=tldr_jax.parallel.make_mesh(jax.local_devices())."
        )
    return opts, spec, inputs, mesh
