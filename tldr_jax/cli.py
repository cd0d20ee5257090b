"""The ``tldr-jax`` command line: run a video model with token merging, visualise it, convert, benchmark.

Examples::

    tldr-jax run                                   # embedded clip, UMT-B/16 random weights, msrvtt preset
    tldr-jax run clip.mp4 --model ckpt/videomae_b_k400 --r 0.3,0.2
    tldr-jax vis clip.mp4 --model ckpt/umt_b16 --r msrvtt --out vis.png      # or .gif / .mp4
    tldr-jax convert SRC OUT ...                   # = python -m checkpoints_convert SRC OUT ...
    tldr-jax bench ...                             # = python -m benchmarks.run ...

Errors in the inputs (missing or unreadable videos, bad ``--r``, unknown models) print one line and
exit with status 2; set ``TLDR_JAX_DEBUG=1`` (or pass ``--debug``) for the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
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

__all__ = ["CliError", "ModelSpec", "default_r", "format_r", "load_model", "main", "parse_r"]


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
    """The ``--r`` used when none is given: the published MSR-VTT preset for UMT models whose token
    count it fits (no capping), else :data:`GENERIC_R`."""
    from tldr_jax.merge import ScheduleCapWarning
    from tldr_jax.schedule import PRESETS, resolve_schedule

    if DEFAULT_PRESET in PRESETS.get(cfg.preset_arch, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ScheduleCapWarning)
            try:
                resolve_schedule(
                    DEFAULT_PRESET, num_tokens=cfg.num_tokens, depth=cfg.depth, protected=cfg.protected,
                    arch=cfg.preset_arch,
                )
                return DEFAULT_PRESET
            except ScheduleCapWarning:
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


def _cache_dir() -> Path:
    root = os.environ.get("TLDR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tldr_jax")
    return Path(root) / "converted"


def _is_checkpoint_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "tldr_jax.checkpoint"
    except (OSError, ValueError):
        return False


def _convert(src: str, out: Path, quiet: bool) -> Any:
    try:
        import checkpoints_convert
    except ImportError as err:
        raise CliError(
            f"{src!r} is not a tldr_jax checkpoint and the converter (checkpoints_convert) is not "
            "importable; run from the repository or install it, then convert with "
            f"`{PROG} convert {src} OUT`."
        ) from err
    if not quiet:
        print(f"converting {src} -> {out} (once; cached) ...", file=sys.stderr)
    return checkpoints_convert.convert(src, str(out), progress=not quiet, verbose=not quiet)


def load_model(
    model: str | None, *, arch: str = "umt_b16", tiny: bool = False, seed: int = 0, quiet: bool = False
) -> ModelSpec:
    """Resolve ``--model``: a tldr_jax checkpoint directory, a source checkpoint or Hugging Face id
    (converted once into ``$TLDR_JAX_CACHE``/``~/.cache/tldr_jax/converted``), or nothing / an
    architecture name for random weights (``--tiny``: :data:`TINY_OVERRIDES`)."""
    from tldr_jax.api import Params, init
    from tldr_jax.configs import ARCHS

    if model is None or model.lower().replace("-", "_") in ARCHS:
        name = arch if model is None else model.lower().replace("-", "_")
        if name not in ARCHS:
            raise CliError(f"unknown --arch {name!r}; known: {', '.join(sorted(ARCHS))}.")
        params = init(seed, name, **(TINY_OVERRIDES if tiny else {}))
        desc = f"{name}{' (tiny)' if tiny else ''} -- RANDOM WEIGHTS (outputs are meaningless; pass --model)"
        return ModelSpec(params, desc, True)
    if tiny:
        raise CliError("--tiny only applies to random weights; drop it or drop --model.")
    from tldr_jax import checkpoint

    path = Path(model).expanduser()
    if _is_checkpoint_dir(path):
        return ModelSpec(checkpoint.load(path), f"{path}", False)
    hub = model[3:] if model.startswith("hf:") else model
    looks_like_hub = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", hub)) and not path.exists()
    if not path.exists() and not looks_like_hub:
        raise CliError(
            f"--model {model!r}: no such file or directory, and not a Hugging Face id (ORG/NAME or "
            f"hf:ORG/NAME) or an architecture name ({', '.join(sorted(ARCHS))})."
        )
    src = f"hf:{hub}" if looks_like_hub else str(path)
    key = hub if looks_like_hub else str(path.resolve())
    out = _cache_dir() / re.sub(r"[^\w.-]+", "--", key.strip("/"))
    if not _is_checkpoint_dir(out):
        result = _convert(src, out, quiet)
        if isinstance(result, Params):
            return ModelSpec(result, f"{model} (converted to {out})", False)
    return ModelSpec(checkpoint.load(out), f"{model} (converted: {out})", False)


# --------------------------------------------------------------------------------------------------
# Video.
# --------------------------------------------------------------------------------------------------


def load_clip(video: str | None, params: Any, args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The normalised ``(T, H, W, 3)`` clip for ``params`` and a description of it."""
    from tldr_jax.video import load_video_for

    cfg = params.config
    frames = args.frames or cfg.num_frames
    is_default = video is None or video == "default"
    clip = load_video_for(
        None if is_default else video, params, num_frames=frames, sampling=args.sampling,
        normalization=args.normalization, pad=args.pad, progress=not args.quiet,
    )
    source = "default clip (synthetic, embedded)" if is_default else str(video)
    desc = f"{source}: {clip.shape[0]} frames, {clip.shape[1]}x{clip.shape[2]}"
    return clip, desc


def _mean_std(params: Any, normalization: str | None) -> tuple[Any, Any]:
    from tldr_jax.video import NORMALIZATION

    return NORMALIZATION[normalization or params.config.family]


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


def _resolve_r(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any, list[str]]:
    """The ``r`` spec, its schedule, and any capping warnings as text."""
    from tldr_jax.schedule import resolve_schedule

    r = parse_r(args.r)
    if r is None:
        r = default_r(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sched = resolve_schedule(
                r, num_tokens=cfg.num_tokens, depth=cfg.depth, protected=cfg.protected, arch=cfg.preset_arch
            )
        except (ValueError, TypeError) as err:
            raise CliError(f"--r {format_r(r)}: {err}") from err
    return r, sched, [str(w.message) for w in caught]


def _topk(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[tuple[str, float]]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    idx = np.argsort(-p)[:k]
    names = [labels[i] if labels and i < len(labels) else f"class {i}" for i in idx]
    return [(n, float(p[i])) for n, i in zip(names, idx)]


def cmd_run(args: argparse.Namespace) -> int:
    """``tldr-jax run``: classify / embed a clip with and without merging; FLOPs and timings."""
    import tldr_jax
    from tldr_jax.api import check_video

    spec = load_model(args.model, arch=args.arch, tiny=args.tiny, seed=args.seed, quiet=args.quiet)
    params = spec.params
    clip, clip_desc = load_clip(args.video, params, args)
    x = clip[None]
    try:
        cfg = check_video(params.config, x)
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from err
    r, sched, notes = _resolve_r(args, cfg)
    method = args.method
    g_base = tldr_jax.gflops(params, r=0, num_frames=cfg.num_frames, method=method)
    g_merged = tldr_jax.gflops(params, r=r, num_frames=cfg.num_frames, method=method)

    def merged():
        return tldr_jax.apply(params, x, r, method=method)

    out, compile_m, steady_m = _timed(merged, args.repeat)
    result: dict[str, Any] = {
        "video": clip_desc, "model": spec.description, "random_weights": spec.random_weights,
        "arch": cfg.name, "num_params": params.num_params(), "method": method, "r": format_r(r),
        "schedule_r": list(sched.r), "tokens": list(sched.tokens),
        "gflops_baseline": g_base, "gflops_merged": g_merged,
        "time_merged": _timing(compile_m, steady_m),
    }
    base = None
    if not args.no_baseline:
        base, compile_b, steady_b = _timed(lambda: tldr_jax.apply(params, x, 0), args.repeat)
        result["time_baseline"] = _timing(compile_b, steady_b)
    lines = [
        f"video      {clip_desc}",
        f"model      {spec.description}",
        f"           {cfg.name}, {params.num_params() / 1e6:.2f}M params, depth {cfg.depth}, "
        f"{cfg.num_tokens} tokens",
        f"merging    {method}, r={format_r(r)}: {sched}",
        f"GFLOPs     baseline {g_base:.6g} | merged {g_merged:.6g} "
        f"({100 * (g_merged / g_base - 1):+.1f}%)",
        f"time       merged: {_timing_text(compile_m, steady_m)} (median of {args.repeat})",
    ]
    if base is not None:
        lines.append(
            f"           baseline: {_timing_text(compile_b, steady_b)}"
        )
    lines += _describe_output(out, base, params, result)
    if spec.random_weights:
        lines.append("note       random weights: the numbers above only show the pipeline works.")
    for note in dict.fromkeys(notes):
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
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

    ext = Path(args.out).suffix.lower()
    if ext not in vis.IMAGE_EXTENSIONS + vis.ANIMATION_EXTENSIONS:
        raise CliError(
            f"--out {args.out!r}: use a .png/.jpg/.webp (grid) or .gif/.mp4 (animation) file name."
        )
    if args.method != "vid_tldr":
        print(f"{PROG}: note: --method {args.method} has no saliency; only merge groups are drawn.",
              file=sys.stderr)
    spec = load_model(args.model, arch=args.arch, tiny=args.tiny, seed=args.seed, quiet=args.quiet)
    params = spec.params
    clip, clip_desc = load_clip(args.video, params, args)
    try:
        cfg = check_video(params.config, clip[None])
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from err
    r, sched, notes = _resolve_r(args, cfg)
    for note in dict.fromkeys(notes):
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    mean, std = _mean_std(params, args.normalization)
    path, maps = vis.visualize(
        params, clip, args.out, r, method=args.method, mean=mean, std=std, max_frames=args.max_frames,
        fps=args.fps,
    )
    print(f"video      {clip_desc}")
    print(f"model      {spec.description}")
    print(f"merging    {args.method}, r={format_r(r)}: {sched}")
    print(f"groups     {maps.num_groups} output tokens hold the {int(np.prod(maps.grid))} patch tokens "
          f"(grid {maps.grid})")
    print(f"wrote      {path}")
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
        f"{what} is not available: none of {', '.join(module_names)} provides main(argv). Run from the "
        "repository root (the module is not installed with the package)."
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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from tldr_jax.video import NORMALIZATION, SAMPLING_MODES

    p.add_argument("video", nargs="?", default="default",
                   help="video file, or 'default' / nothing for the embedded synthetic clip")
    p.add_argument("--model", "-m", default=None,
                   help="tldr_jax checkpoint directory, source checkpoint or Hugging Face id (converted and "
                        "cached), or an architecture name; omitted: random weights of --arch")
    p.add_argument("--arch", default="umt_b16", help="architecture for random weights (default umt_b16)")
    p.add_argument("--tiny", action="store_true",
                   help="small random model (depth 4, width 64, 4 frames of 112x112) for quick checks")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--r", default=None,
                   help="merge schedule: int per layer, fraction, comma list ('600,200,100') or preset "
                        "('msrvtt'); default: the msrvtt preset for UMT, else 0.3,0.2")
    p.add_argument("--method", choices=("vid_tldr", "tome"), default="vid_tldr")
    p.add_argument("--frames", type=_positive_int, default=None,
                   help="frames to sample (default: the model's)")
    p.add_argument("--sampling", choices=SAMPLING_MODES, default=None,
                   help="frame sampling (default: middle for UMT, uniform for VideoMAE/ViViT)")
    p.add_argument("--normalization", choices=sorted(NORMALIZATION), default=None,
                   help="mean/std set (default: the model family's)")
    p.add_argument("--pad", action="store_true", help="repeat the last frame of too-short videos")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


FORWARDED: tuple[str, ...] = ("convert", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tldr-jax``."""
    parser = argparse.ArgumentParser(
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
    vis.add_argument("--fps", type=float, default=4.0, help="frame rate of GIF/MP4 output")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tldr-jax`` console script; returns the exit status."""
    from tldr_jax.video import VideoReadError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
            return int(exc.code or 0)
    debug = args.debug or os.environ.get("TLDR_JAX_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except (CliError, VideoReadError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ImportError) as err:
        if debug:
            raise
        generic = type(err) in (ValueError, TypeError, ImportError, ModuleNotFoundError)
        prefix = f"{type(err).__name__}: " if generic else ""
        print(f"{PROG} {args.command}: error: {prefix}{err}", file=sys.stderr)
        if generic:
            print("(run `tldr-jax --debug ...` for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
