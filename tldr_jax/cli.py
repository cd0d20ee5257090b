"""The ``tldr-jax`` command line: run a video model with token merging, visualise it, convert, benchmark.

Examples::

    tldr-jax run                                   # embedded clip, UMT-B/16 random weights, msrvtt preset
    tldr-jax run clip.mp4 --model ckpt/videomae_b_k400 --r 0.3,0.2
    tldr-jax vis clip.mp4 --model ckpt/umt_b16 --r msrvtt --out vis.png      # or .gif / .mp4
    tldr-jax convert SRC OUT ...                   # = python -m checkpoints_convert SRC OUT ...
    tldr-jax bench ...                             # = python -m benchmarks.run ...

Every argument is checked before any heavy work (``--r`` against the model's config, before the
weights are loaded and the video decoded). Errors in the inputs (missing or unreadable videos and
checkpoints, bad options, unknown models) print one line and exit with status 2, writing nothing;
internal errors print one line and exit with status 1; set ``TLDR_JAX_DEBUG=1`` (or pass ``--debug``)
for the traceback. Warnings (a capped schedule, a truncated video) are one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROG = "tldr-jax"

#: The small random model of ``--tiny`` (fast on CPU; used by the tests and the offline notebooks).
TINY_OVERRIDES: dict[str, Any] = dict(
    depth=4, embed_dim=64, num_heads=2, mlp_dim=128, img_size=112, num_frames=4
)

#: Default ``--r`` for models without a published preset: merge 30 % then 20 % of the tokens in the
#: first two layers.
GENERIC_R: tuple[float, ...] = (0.3, 0.2)

#: Preset used by default where one is published for the architecture (vid-TLDR's MSR-VTT schedule).
DEFAULT_PRESET = "msrvtt"

__all__ = [
    "APPLY_FLAGS", "NOT_ON_CLI", "CliError", "ModelSource", "ModelSpec", "apply_options",
    "conversion_cache_path", "default_r", "format_r", "input_config", "load_model", "main", "one_line",
    "parse_r", "resolve_model",
]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------------
# Arguments.
# --------------------------------------------------------------------------------------------------


def parse_r(text: str | None) -> Any:
    """Parse ``--r`` (see :func:`tldr_jax.schedule.parse_r`); None means "not given" (use
    :func:`default_r`)."""
    from tldr_jax.schedule import parse_r as parse_r_text

    if text is None:
        return None
    try:
        return parse_r_text(text)
    except ValueError as err:
        raise CliError(f"--{err}") from None


def format_r(r: Any) -> str:
    """A short display form of an ``r`` spec."""
    if isinstance(r, tuple):
        return ",".join(str(v) for v in r)
    return str(r)


def default_r(cfg: Any) -> Any:
    """The ``--r`` used when none is given: the published MSR-VTT preset for UMT models it fits (no
    capping, no more entries than layers), else :data:`GENERIC_R`."""
    from tldr_jax.merge import ScheduleCapWarning
    from tldr_jax.schedule import PRESETS, schedule_for

    if DEFAULT_PRESET in PRESETS.get(cfg.preset_arch, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ScheduleCapWarning)
            try:
                schedule_for(cfg, DEFAULT_PRESET)
                return DEFAULT_PRESET
            except (ScheduleCapWarning, ValueError):  # capped, or more entries than the model's layers
                pass
    return GENERIC_R[: cfg.depth]


# --------------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """A loaded model and how it was obtained."""

    params: Any
    description: str
    random_weights: bool


@dataclasses.dataclass
class ModelSource:
    """Where ``--model`` points, resolved without loading weights.

    Attributes:
      config: the architecture config (so ``--r`` and ``--frames`` are checked before any heavy work).
      description: what is shown on the ``model`` line.
      random_weights: True for an architecture name (random initialisation).
      load: loads (or initialises) the weights: ``load() -> Params``.
    """

    config: Any
    description: str
    random_weights: bool
    load: Callable[[], Any]


def _cache_dir() -> Path:
    root = os.environ.get("TLDR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tldr_jax")
    return Path(root) / "converted"


def _is_checkpoint_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "tldr_jax.checkpoint"
    except (OSError, ValueError, AttributeError):
        return False


def _safe_name(text: str, limit: int = 64) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:limit] or "model"


def _source_files(path: Path) -> list[Path]:
    """The files whose bytes identify a conversion source (a file, or every file of a directory)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _content_digest(path: Path) -> str:
    """sha256 of a source's relative file names and bytes, reusing the last digest while every file
    keeps its size and modification time (a small index in the cache directory)."""
    files = _source_files(path)
    signature = [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns]
                 for f in files]
    index_file = _cache_dir() / "index.json"
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    key = str(path.resolve())
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("signature") == signature and entry.get("digest"):
        return entry["digest"]
    h = hashlib.sha256()
    for f, (rel, size, _) in zip(files, signature):
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    index[key] = {"signature": signature, "digest": digest}
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_file.with_name(f".index.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_file)
    except OSError:
        pass  # the index only saves re-hashing
    return digest


def conversion_cache_path(model: str) -> Path:
    """The cache folder of a converted ``--model`` source: keyed by the source's content (a local
    file or directory: name + sha256 of its bytes, so a file changed in place is converted again and
    different files never share a folder) or by the exact id (``hf:ORG/NAME``)."""
    if model.startswith("hf:"):
        hub = model[3:]
        tag = hashlib.sha256(hub.encode()).hexdigest()[:16]
        return _cache_dir() / f"hf-{_safe_name(hub.replace('/', '--'))}-{tag}"
    path = Path(model).expanduser()
    return _cache_dir() / f"{_safe_name(path.name)}-{_content_digest(path)[:24]}"


def _convert(src: str, out: Path, quiet: bool) -> Any:
    try:
        import checkpoints_convert
    except ImportError as err:
        raise CliError(
            f"{src!r} is not a tldr_jax checkpoint and the converter (checkpoints_convert) is not "
            "importable; install tldr_jax with it, then convert with "
            f"`{PROG} convert {src} OUT`."
        ) from err
    if not quiet:
        print(f"converting {src} -> {out} (once; cached) ...", file=sys.stderr, flush=True)
    return checkpoints_convert.convert(src, str(out), progress=not quiet, verbose=not quiet)


def _arch_key(name: str) -> str:
    return name.lower().replace("-", "_")


def resolve_model(
    model: str | None, *, arch: str | None = None, tiny: bool = False, seed: int = 0, quiet: bool = False
) -> ModelSource:
    """Resolve ``--model`` without loading weights (a source checkpoint is converted here, once).

    ``model`` is a tldr_jax checkpoint directory, a source checkpoint file or Hugging Face model
    directory (converted once into ``$TLDR_JAX_CACHE``/``~/.cache/tldr_jax/converted``, keyed by
    content), ``hf:ORG/NAME``, an architecture name, or None (random weights of ``arch``, default
    ``umt_b16``; ``tiny``: :data:`TINY_OVERRIDES`). Raises :class:`CliError` naming the problem.
    """
    from tldr_jax import checkpoint
    from tldr_jax.api import Params, init
    from tldr_jax.configs import ARCHS, get_config

    known = ", ".join(sorted(ARCHS))
    if model is None or _arch_key(model) in ARCHS:
        if model is not None and arch is not None:
            raise CliError(f"--model {model!r} already names an architecture; drop --arch {arch!r}.")
        name = _arch_key(arch or "umt_b16") if model is None else _arch_key(model)
        if name not in ARCHS:
            raise CliError(f"unknown --arch {arch!r}; known: {known}.")
        cfg = get_config(name, **(TINY_OVERRIDES if tiny else {}))
        why = "--model names an architecture" if model is not None else "no --model given"
        desc = (
            f"{name}{' (tiny)' if tiny else ''} -- RANDOM WEIGHTS ({why}; outputs are meaningless: give "
            "--model a checkpoint for real ones)"
        )
        return ModelSource(cfg, desc, True, lambda: init(seed, cfg))
    if tiny:
        raise CliError("--tiny only applies to random weights; drop it or drop --model.")
    if arch is not None:
        raise CliError(f"--arch only applies to random weights; --model {model!r} has its own. Drop --arch.")
    path = Path(model).expanduser()
    if _is_checkpoint_dir(path):
        cfg, _ = checkpoint.read_config(path)
        return ModelSource(cfg, str(path), False, lambda: checkpoint.load(path))
    hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", model[3:] if model.startswith("hf:") else model)
    if model.startswith("hf:"):
        if not hub_like:
            raise CliError(f"--model {model!r}: a Hugging Face model is given as hf:ORG/NAME.")
    elif not path.exists():
        hint = f" For a Hugging Face hub model write --model hf:{model}." if hub_like else ""
        raise CliError(
            f"--model {model!r}: no such file or directory.{hint} --model takes a tldr_jax checkpoint "
            f"directory, a PyTorch checkpoint or Hugging Face model directory, hf:ORG/NAME or one of {known}."
        )
    out = conversion_cache_path(model if model.startswith("hf:") else str(path))
    if not _is_checkpoint_dir(out):
        params = _convert(model if model.startswith("hf:") else str(path), out, quiet)
        if isinstance(params, Params):
            return ModelSource(params.config, f"{model} (converted to {out})", False, lambda: params)
    cfg, _ = checkpoint.read_config(out)
    return ModelSource(cfg, f"{model} (converted: {out})", False, lambda: checkpoint.load(out))


def load_model(
    model: str | None, *, arch: str | None = None, tiny: bool = False, seed: int = 0, quiet: bool = False
) -> ModelSpec:
    """:func:`resolve_model`, then load the weights."""
    source = resolve_model(model, arch=arch, tiny=tiny, seed=seed, quiet=quiet)
    return ModelSpec(source.load(), source.description, source.random_weights)


# --------------------------------------------------------------------------------------------------
# Checks before any work, and feedback while working.
# --------------------------------------------------------------------------------------------------


def input_config(cfg: Any, frames: int | None) -> Any:
    """The config for ``--frames`` (checked against the model before decoding anything)."""
    n = cfg.num_frames if frames is None else frames
    if n % cfg.tubelet_size:
        raise CliError(
            f"--frames {n}: {cfg.name} groups {cfg.tubelet_size} frames per token; use a multiple of "
            f"{cfg.tubelet_size}."
        )
    if n != cfg.num_frames and cfg.pos_embed == "learned":
        raise CliError(
            f"--frames {n}: {cfg.name} has learned position embeddings for exactly {cfg.num_frames} frames; "
            "drop --frames."
        )
    return cfg.replace(num_frames=n) if n != cfg.num_frames else cfg


def output_file(path: str | None, flag: str) -> Path | None:
    """Check an output file option before any work: not a directory, its parent not a file."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise CliError(f"{flag} {path!r} is a directory; give a file name.")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CliError(f"{flag} {path!r}: {parent} is a file, not a directory.")
    return p


def apply_options(args: argparse.Namespace) -> Any:
    """The :class:`~tldr_jax.options.ApplyOptions` of the command-line flags (:data:`APPLY_FLAGS`)."""
    from tldr_jax.options import ApplyOptions

    return ApplyOptions(**{opt: getattr(args, dest) for opt, (_, dest) in APPLY_FLAGS.items()})


def _status(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (not with --quiet): results go to stdout as they come."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _say(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------
# Video.
# --------------------------------------------------------------------------------------------------


def load_clip(video: str | None, model: Any, args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The normalised ``(T, H, W, 3)`` clip for ``model`` (Params or a config) and a description of it."""
    from tldr_jax.video import load_video_for

    cfg = getattr(model, "config", model)
    frames = args.frames or cfg.num_frames
    is_default = video is None or video == "default"
    clip = load_video_for(
        None if is_default else video, cfg, num_frames=frames, sampling=args.sampling,
        normalization=args.normalization, pad=args.pad, progress=not args.quiet,
    )
    source = "default clip (synthetic, embedded)" if is_default else str(video)
    desc = f"{source}: {clip.shape[0]} frames, {clip.shape[1]}x{clip.shape[2]}"
    return clip, desc


def _mean_std(cfg: Any, normalization: str | None) -> tuple[Any, Any]:
    from tldr_jax.video import NORMALIZATION

    return NORMALIZATION[normalization or cfg.family]


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------


def _timed(fn: Any, repeat: int) -> tuple[Any, float, float]:
    """Run ``fn`` once (compile + run), then ``repeat`` times; return output, first time, median time."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, first, float(np.median(times))


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _timing(first: float, steady: float) -> dict[str, float]:
    """First call, steady state, and the compile time estimated as their difference (seconds)."""
    return {"first_call_s": first, "steady_s": steady, "compile_s": max(first - steady, 0.0)}


def _timing_text(first: float, steady: float) -> str:
    t = _timing(first, steady)
    return (
        f"first call {_fmt_time(first)} (compile ~{_fmt_time(t['compile_s'])}), "
        f"steady {_fmt_time(steady)}/clip"
    )


def _resolve_r(r: Any, cfg: Any) -> tuple[Any, Any]:
    """The ``r`` spec (``--r`` parsed, or :func:`default_r`) and its schedule for ``cfg``; capping is
    reported as a warning line."""
    from tldr_jax.schedule import schedule_for

    if r is None:
        r = default_r(cfg)
    try:
        sched = schedule_for(cfg, r)
    except (ValueError, TypeError) as err:
        raise CliError(f"--r {format_r(r)}: {err}") from err
    return r, sched


def _topk(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[tuple[str, float]]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    idx = np.argsort(-p)[:k]
    names = [labels[i] if labels and i < len(labels) else f"class {i}" for i in idx]
    return [(n, float(p[i])) for n, i in zip(names, idx)]


def cmd_run(args: argparse.Namespace) -> int:
    """``tldr-jax run``: classify / embed a clip with and without merging; FLOPs and timings.

    Every argument is checked (``--r`` against the model's config) before weights are loaded or the
    video decoded; results are printed as they come, progress goes to stderr.
    """
    import tldr_jax
    from tldr_jax.api import check_video

    json_path = output_file(args.json, "--json")
    r_spec = parse_r(args.r)
    opts = apply_options(args)
    source = resolve_model(args.model, arch=args.arch, tiny=args.tiny, seed=args.seed, quiet=args.quiet)
    cfg = input_config(source.config, args.frames)
    r, sched = _resolve_r(r_spec, cfg)
    method = opts.method
    g_base = tldr_jax.gflops(cfg, r=0, method=method)
    g_merged = tldr_jax.gflops(cfg, r=r, method=method)

    _status(args, "decoding the video ...")
    clip, clip_desc = load_clip(args.video, cfg, args)
    x = clip[None]
    check_video(cfg, x)
    _say(f"video      {clip_desc}")
    _status(args, "random weights: initialising ..." if source.random_weights else "loading the weights ...")
    params = source.load()
    _say(f"model      {source.description}")
    _say(
        f"           {cfg.name}, {params.num_params() / 1e6:.2f}M params, depth {cfg.depth}, "
        f"{cfg.num_tokens} tokens"
    )
    _say(f"merging    {method}, r={format_r(r)}: {sched}")
    _say(f"GFLOPs     baseline {g_base:.6g} | merged {g_merged:.6g} ({100 * (g_merged / g_base - 1):+.1f}%)")
    result: dict[str, Any] = {
        "video": clip_desc, "model": source.description, "random_weights": source.random_weights,
        "arch": cfg.name, "num_params": params.num_params(), "method": method, "r": format_r(r),
        "options": {k: str(v) for k, v in opts.non_default().items()},
        "schedule_r": list(sched.r), "tokens": list(sched.tokens),
        "gflops_baseline": g_base, "gflops_merged": g_merged,
    }

    _status(args, "compiling and running with merging (the first call compiles) ...")
    out, compile_m, steady_m = _timed(lambda: tldr_jax.apply(params, x, r, **opts.kwargs()), args.repeat)
    result["time_merged"] = _timing(compile_m, steady_m)
    _say(f"time       merged: {_timing_text(compile_m, steady_m)} (median of {args.repeat})")
    base = None
    if not args.no_baseline:
        _status(args, "compiling and running without merging ...")
        base, compile_b, steady_b = _timed(lambda: tldr_jax.apply(params, x, 0, **opts.kwargs()), args.repeat)
        result["time_baseline"] = _timing(compile_b, steady_b)
        _say(f"           baseline: {_timing_text(compile_b, steady_b)}")
    for line in _describe_output(out, base, params, result):
        _say(line)
    if source.random_weights:
        _say("note       random weights: the numbers above only show the pipeline works.")
    if json_path is not None:
        from tldr_jax.video import atomic_output

        with atomic_output(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return 0


def _describe_output(out: Any, base: Any, params: Any, result: dict[str, Any]) -> list[str]:
    lines = []
    if out.logits is not None:
        top = _topk(np.asarray(out.logits[0]), params.labels)
        result["top5_merged"] = top
        lines.append("top-5      (merged)" + ("" if base is None else "                      | (no merging)"))
        top_b = _topk(np.asarray(base.logits[0]), params.labels) if base is not None else None
        if top_b is not None:
            result["top5_baseline"] = top_b
        for i, (name, p) in enumerate(top):
            row = f"  {i + 1}. {name[:28]:<28} {p:6.3f}"
            if top_b is not None:
                row += f" | {top_b[i][0][:28]:<28} {top_b[i][1]:6.3f}"
            lines.append("           " + row.strip())
    else:
        kind = "embedding" if out.embedding is not None else "pooled"
        vec = np.asarray((out.embedding if out.embedding is not None else out.pooled)[0], np.float64)
        result[f"{kind}_norm"] = float(np.linalg.norm(vec))
        result[f"{kind}_first"] = vec[:4].tolist()
        first = np.round(vec[:4], 4).tolist()
        lines.append(f"{kind:<10} dim {vec.size}, L2 norm {np.linalg.norm(vec):.4f}, first {first}")
        if base is not None:
            ref = np.asarray((base.embedding if base.embedding is not None else base.pooled)[0], np.float64)
            cos = float(vec @ ref / max(np.linalg.norm(vec) * np.linalg.norm(ref), 1e-12))
            result["cosine_to_baseline"] = cos
            lines.append(f"           cosine similarity to the unmerged {kind}: {cos:.4f}")
    return lines


# --------------------------------------------------------------------------------------------------
# vis
# --------------------------------------------------------------------------------------------------


def cmd_vis(args: argparse.Namespace) -> int:
    """``tldr-jax vis``: saliency and merge groups as PNG (grid) or GIF/MP4 (animation)."""
    from tldr_jax import vis
    from tldr_jax.api import check_video

    out_path = output_file(args.out, "--out")
    if out_path.suffix.lower() not in vis.IMAGE_EXTENSIONS + vis.ANIMATION_EXTENSIONS:
        raise CliError(
            f"--out {args.out!r}: use a .png/.jpg/.webp (grid) or .gif/.mp4 (animation) file name."
        )
    r_spec = parse_r(args.r)
    opts = apply_options(args)
    if opts.method != "vid_tldr":
        print(f"{PROG}: note: --method {opts.method} has no saliency; only merge groups are drawn.",
              file=sys.stderr)
    source = resolve_model(args.model, arch=args.arch, tiny=args.tiny, seed=args.seed, quiet=args.quiet)
    cfg = input_config(source.config, args.frames)
    r, sched = _resolve_r(r_spec, cfg)
    _status(args, "decoding the video ...")
    clip, clip_desc = load_clip(args.video, cfg, args)
    check_video(cfg, clip[None])
    _say(f"video      {clip_desc}")
    params = source.load()
    _say(f"model      {source.description}")
    _say(f"merging    {opts.method}, r={format_r(r)}: {sched}")
    mean, std = _mean_std(cfg, args.normalization)
    extra = {k: v for k, v in opts.non_default().items() if k != "method"}
    _status(args, "compiling and running the model ...")
    path, maps = vis.visualize(
        params, clip, out_path, r, method=opts.method, mean=mean, std=std, max_frames=args.max_frames,
        fps=args.fps, **extra,
    )
    _say(f"groups     {maps.num_groups} output tokens hold the {int(np.prod(maps.grid))} patch tokens "
         f"(grid {maps.grid})")
    _say(f"wrote      {path}")
    return 0


# --------------------------------------------------------------------------------------------------
# convert / bench (forwarded)
# --------------------------------------------------------------------------------------------------


def _forward_main(module_names: Sequence[str], argv: list[str], what: str) -> int:
    """Call ``main(argv)`` of the first importable module that has one; return its exit status."""
    for name in module_names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
                continue  # the module itself is absent; a missing dependency inside it propagates
            raise
        fn = getattr(mod, "main", None)
        if not callable(fn):
            continue
        try:
            code = fn(argv)
        except SystemExit as exc:
            code = exc.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            return 1
        return code if isinstance(code, int) and not isinstance(code, bool) else 0  # e.g. a results dict
    raise CliError(
        f"{what} is not available: none of {', '.join(module_names)} provides main(argv). Reinstall "
        "tldr_jax (pip install -e . from the repository, or pip install tldr_jax), which installs it."
    )


def cmd_convert(args: argparse.Namespace) -> int:
    """Forward to the converter: ``python -m checkpoints_convert SRC OUT ...``."""
    return _forward_main(
        ("checkpoints_convert", "checkpoints_convert.cli", "checkpoints_convert.__main__"),
        list(args.rest), "the converter (checkpoints_convert)",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Forward to the benchmarks: ``benchmarks.run.main(argv)``."""
    return _forward_main(("benchmarks.run",), list(args.rest), "the benchmark suite (benchmarks.run)")


# --------------------------------------------------------------------------------------------------
# Parser and entry point.
# --------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from err
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from err
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {v}")
    return v


#: ``apply`` option -> (command-line flag, argparse dest) for the options ``run`` and ``vis`` take.
APPLY_FLAGS: dict[str, tuple[str, str]] = {
    "method": ("--method", "method"),
    "pool": ("--pool", "pool"),
    "prop_attn": ("--no-prop-attn", "prop_attn"),
    "dtype": ("--dtype", "dtype"),
    "precision": ("--precision", "precision"),
}
#: ``apply`` options the command line leaves out, and why (a test keeps both lists complete).
NOT_ON_CLI: dict[str, str] = {
    "source": "vis requests the O(N) source map itself; run prints no source map",
    "return_saliency": "vis requests the saliency itself; run prints none",
    "remat": "a memory saving for the backward pass, which run and vis do not take",
}


def _add_apply_args(p: argparse.ArgumentParser) -> None:
    """The ``apply`` options of :data:`APPLY_FLAGS`, with the allowed values of :mod:`tldr_jax.options`."""
    from tldr_jax.options import COMPUTE_DTYPES, METHODS, POOLS, PRECISIONS, ApplyOptions

    d = ApplyOptions()
    p.add_argument("--method", choices=METHODS, default=d.method, help="merge method (default vid_tldr)")
    p.add_argument("--pool", choices=POOLS, default=d.pool, help="pooling of merged tokens (default mean)")
    p.add_argument("--no-prop-attn", dest="prop_attn", action="store_false",
                   help="turn off proportional attention (on in the official code)")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default=None,
                   help="compute dtype (default: the parameters' float32)")
    p.add_argument("--precision", choices=[x for x in PRECISIONS if x], default=d.precision,
                   help="float32 matrix-product precision (default float32, the official numerics)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from tldr_jax.video import NORMALIZATION, SAMPLING_MODES

    p.add_argument("video", nargs="?", default="default",
                   help="video file, or 'default' / nothing for the embedded synthetic clip")
    p.add_argument("--model", "-m", default=None,
                   help="tldr_jax checkpoint directory, PyTorch checkpoint or Hugging Face model directory, "
                        "hf:ORG/NAME (converted once and cached), or an architecture name; omitted: random "
                        "weights of --arch")
    p.add_argument("--arch", default=None, help="architecture for random weights (default umt_b16)")
    p.add_argument("--tiny", action="store_true",
                   help="small random model (depth 4, width 64, 4 frames of 112x112) for quick checks")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random weights")
    p.add_argument("--r", default=None,
                   help="merge schedule: int per layer, fraction, comma list ('600,200,100') or preset "
                        "('msrvtt'); default: the msrvtt preset for UMT, else 0.3,0.2")
    _add_apply_args(p)
    p.add_argument("--frames", type=_positive_int, default=None,
                   help="frames to sample (default: the model's)")
    p.add_argument("--sampling", choices=SAMPLING_MODES, default=None,
                   help="frame sampling (default: middle for UMT, uniform for VideoMAE/ViViT)")
    p.add_argument("--normalization", choices=sorted(NORMALIZATION), default=None,
                   help="mean/std set (default: the model family's)")
    p.add_argument("--pad", action="store_true", help="repeat the last frame of too-short videos")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


FORWARDED: tuple[str, ...] = ("convert", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tldr-jax``."""
    parser = _Parser(
        prog=PROG, description="vid-TLDR / ToMe token merging for video transformers (JAX).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from tldr_jax.train import add_finetune_subparser

    run = sub.add_parser("run", help="classify or embed a clip with and without merging; GFLOPs and time")
    _add_model_args(run)
    run.add_argument("--repeat", type=_positive_int, default=3, help="steady-state timing runs (median)")
    run.add_argument("--no-baseline", action="store_true", help="skip the unmerged run")
    run.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    run.set_defaults(func=cmd_run)

    vis = sub.add_parser("vis", help="draw saliency and merged-token groups (PNG grid, GIF or MP4)")
    _add_model_args(vis)
    vis.add_argument("--out", "-o", required=True, help="output file: .png (grid), .gif or .mp4 (animation)")
    vis.add_argument("--max-frames", type=_positive_int, default=8, help="frames shown in a PNG grid")
    vis.add_argument("--fps", type=_positive_float, default=4.0, help="frame rate of GIF/MP4 output")
    vis.set_defaults(func=cmd_vis)

    conv = sub.add_parser("convert", help="convert a checkpoint (python -m checkpoints_convert SRC OUT ...)",
                          add_help=False)
    conv.add_argument("rest", nargs=argparse.REMAINDER)
    conv.set_defaults(func=cmd_convert)

    bench = sub.add_parser("bench", help="run benchmarks (benchmarks.run)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    add_finetune_subparser(sub)
    return parser


#: Exceptions that mean "a bad input or environment" (exit status 2); anything else is an internal error.
USER_ERRORS: tuple[type[BaseException], ...] = (CliError, ValueError, TypeError, OSError, ImportError)
#: Longest error line printed (the full message is one --debug away).
MAX_ERROR_CHARS = 600


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A message on one line (line breaks and indentation folded to ``; ``), at most ``limit`` chars."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = "; ".join(parts) if parts else ""
    if len(line) > limit:
        line = line[: limit - 40].rstrip() + " ... (--debug for the whole message)"
    return line


def _error_line(command: str, err: BaseException) -> str:
    text = one_line(str(err)) or type(err).__name__
    if isinstance(err, ImportError):
        text = f"a required package is missing: {text}"
    if not isinstance(err, USER_ERRORS):
        return f"{PROG} {command}: internal error ({type(err).__name__}): {text} (--debug for the traceback)"
    return f"{PROG} {command}: error: {text}"


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show every warning as one ``tldr-jax: warning: ...`` line on stderr, each message once."""
    from tldr_jax.merge import ScheduleCapWarning
    from tldr_jax.video import VideoReadWarning

    seen: set[str] = set()

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any, **kw: Any) -> None:
        text = one_line(str(message))
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ScheduleCapWarning)
        warnings.simplefilter("always", VideoReadWarning)
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tldr-jax`` console script; returns the exit status.

    Exit status: 0 success; 2 a bad argument, input file or environment (one ``tldr-jax CMD: error:``
    line on stderr, nothing written); 1 an internal error (one line; ``--debug`` or
    ``TLDR_JAX_DEBUG=1`` shows the traceback); 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    head = [a for a in argv[:2] if a != "--debug"][:1]
    if head and head[0] in FORWARDED:
        # convert / bench: everything after the subcommand (--help included) goes to the other tool.
        cut = argv.index(head[0])
        func = cmd_convert if head[0] == "convert" else cmd_bench
        args = argparse.Namespace(
            command=head[0], rest=argv[cut + 1 :], debug="--debug" in argv[:cut], func=func
        )
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
            return int(exc.code or 0)
    debug = args.debug or os.environ.get("TLDR_JAX_DEBUG") == "1"
    try:
        with _warnings_as_lines():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(_error_line(args.command, err), file=sys.stderr)
        return 2 if isinstance(err, USER_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
