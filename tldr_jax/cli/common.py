"""What the ``tldr-jax`` commands share: ``--r`` and the other arguments, checks before any work, the
clip for a model, progress lines, and forwarding to another tool's ``main``.

Floors of the command line, lowest first: :mod:`~tldr_jax.cli.base` (``PROG``, :class:`CliError`),
:mod:`~tldr_jax.cli.sources` (``--model``), this module, one module per command, :mod:`~tldr_jax.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.cli import sources
from tldr_jax.cli.base import PROG, CliError
from tldr_jax.cli.sources import TINY_OVERRIDES
from tldr_jax.schedule import default_r, format_r

__all__ = [
    "APPLY_FLAGS", "NOT_ON_CLI", "PROG", "TINY_OVERRIDES", "CliError", "Job", "add_apply_args",
    "add_model_args", "apply_options", "as_flags", "check_job", "forward_main", "input_config", "output_file",
    "parse_r", "positive_float", "positive_int", "read_clip", "resolve_r", "say", "seed", "status",
]


# --------------------------------------------------------------------------------------------------
# Merge schedules.
# --------------------------------------------------------------------------------------------------


def parse_r(text: str | None) -> Any:
    """Parse ``--r`` (see :func:`tldr_jax.schedule.parse_r`); None means "not given" (use
    :func:`tldr_jax.schedule.default_r`)."""
    from tldr_jax.schedule import parse_r as parse_r_text

    if text is None:
        return None
    try:
        return parse_r_text(text)
    except ValueError as err:
        raise CliError(f"--{err}") from None


def resolve_r(r: Any, cfg: Any) -> tuple[Any, Any]:
    """The ``r`` spec (``--r`` parsed, or :func:`tldr_jax.schedule.default_r`) and its schedule for
    ``cfg``; capping is reported as a warning line."""
    from tldr_jax.schedule import schedule_for

    if r is None:
        r = default_r(cfg)
    try:
        sched = schedule_for(cfg, r)
    except (ValueError, TypeError) as err:
        raise CliError(f"--r {format_r(r)}: {err}") from err
    return r, sched


# --------------------------------------------------------------------------------------------------
# Checks before any work, and feedback while working.
# --------------------------------------------------------------------------------------------------


def input_config(cfg: Any, frames: int | None) -> Any:
    """The config for ``--frames``, checked against the model (:func:`tldr_jax.api.validate_video` on
    the clip's shape) before anything is decoded."""
    import jax

    from tldr_jax.api import config_for_video, validate_video

    n = cfg.num_frames if frames is None else frames
    clip = jax.ShapeDtypeStruct((1, n, cfg.img_size, cfg.img_size, cfg.in_chans), np.float32)
    try:
        validate_video(cfg, clip)
    except ValueError as err:
        raise CliError(f"--frames {n}: {err}") from None
    return config_for_video(cfg, clip)


def output_file(path: str | None, flag: str, *, directory: bool = False) -> Path | None:
    """Check an output path option before any model load or decode (:func:`tldr_jax.files.check_output`:
    not a directory (or, with ``directory``, not a file), its folder existing and writable); None stays
    None. Every command checks its outputs through this one function."""
    from tldr_jax.files import check_output

    return None if path is None else check_output(path, flag, directory=directory)


def apply_options(args: argparse.Namespace) -> Any:
    """The :class:`~tldr_jax.options.ApplyOptions` of the command-line flags (:data:`APPLY_FLAGS`)."""
    from tldr_jax.options import ApplyOptions

    return ApplyOptions(**{opt: getattr(args, dest) for opt, (_, dest) in APPLY_FLAGS.items()})


@contextlib.contextmanager
def as_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """Re-word the ``ValueError`` / ``TypeError`` messages of a Python API call with the command's flags
    (``{"k": "--k"}``: ``k=5 exceeds rerank=2`` becomes ``--k 5 exceeds --rerank 2``), so that the API
    keeps its checks in one place and the command line shows them in its own words."""
    names = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, flags)) + r")=")
    try:
        yield
    except (ValueError, TypeError) as err:
        worded = names.sub(lambda m: flags[m.group(1)] + " ", str(err))
        if worded == str(err):
            raise
        try:
            again = type(err)(worded)
        except Exception:  # an exception type with other constructor arguments: keep it as it is
            raise err from None
        raise again from err


def status(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (not with --quiet): results go to stdout as they come."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def say(line: str) -> None:
    """A result line on stdout, flushed at once."""
    print(line, flush=True)


@dataclasses.dataclass
class Job:
    """A ``run`` / ``vis`` call, checked before any heavy work.

    Attributes:
      opts: the :class:`~tldr_jax.options.ApplyOptions` of the flags.
      source: where ``--model`` points (:class:`~tldr_jax.cli.sources.ModelSource`; weights not loaded).
      cfg: the model's config for ``--frames``.
      r, sched: the ``--r`` spec (or :func:`tldr_jax.schedule.default_r`) and its schedule for ``cfg``.
    """

    opts: Any
    source: Any
    cfg: Any
    r: Any
    sched: Any


def check_job(args: argparse.Namespace) -> Job:
    """``--r``, the apply options, ``--model`` (resolved, not loaded) and ``--frames``, all checked
    against the model before a video is decoded or a weight loaded."""
    r_spec = parse_r(args.r)
    opts = apply_options(args)
    source = sources.resolve_model(
        args.model, arch=args.arch, tiny=args.tiny, seed=args.seed, quiet=args.quiet
    )
    cfg = input_config(source.config, args.frames)
    r, sched = resolve_r(r_spec, cfg)
    return Job(opts, source, cfg, r, sched)


def read_clip(args: argparse.Namespace, cfg: Any) -> tuple[np.ndarray, str, Any]:
    """The normalised ``(T, H, W, 3)`` clip of ``args.video`` (None / ``"default"``: the embedded clip)
    for the model config ``cfg``, checked and announced; its description; and the
    :class:`~tldr_jax.video.Preprocessing` used (``--frames``, ``--sampling``, ``--normalization``,
    ``--pad``)."""
    from tldr_jax.api import validate_video
    from tldr_jax.video import load_clip, preprocessing_for

    status(args, "decoding the video ...")
    prep = preprocessing_for(
        cfg, num_frames=args.frames or cfg.num_frames, sampling=args.sampling,
        normalization=args.normalization, pad=args.pad,
    )
    is_default = args.video is None or args.video == "default"
    clip = load_clip(None if is_default else args.video, prep, progress=not args.quiet)
    validate_video(cfg, clip[None])
    desc = f"{'default clip (synthetic, embedded)' if is_default else args.video}: {clip.shape[0]} frames, "
    desc += f"{clip.shape[1]}x{clip.shape[2]}"
    say(f"video      {desc}")
    return clip, desc, prep


# --------------------------------------------------------------------------------------------------
# Arguments.
# --------------------------------------------------------------------------------------------------


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)``, refused (one line naming the text) unless ``ok``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from err
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


#: argparse types: a positive int, a positive finite float, a 32-bit seed.
positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
seed = _checked(int, lambda v: 0 <= v < 2**32, "a seed in [0, 2**32)")


def r_type(text: str) -> Any:
    """An argparse ``type`` for ``--r`` (see :func:`tldr_jax.schedule.parse_r`): refused at parse time."""
    from tldr_jax.schedule import parse_r as parse_r_text

    try:
        return parse_r_text(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


#: ``apply`` option -> (command-line flag, argparse dest) for the options ``run`` and ``vis`` take.
APPLY_FLAGS: dict[str, tuple[str, str]] = {
    "method": ("--method", "method"),
    "pool": ("--pool", "pool"),
    "prop_attn": ("--no-prop-attn", "prop_attn"),
    "dtype": ("--dtype", "dtype"),
    "precision": ("--precision", "precision"),
    "fast_compile": ("--fast-compile", "fast_compile"),
    "gpu_tuning": ("--gpu-tuning", "gpu_tuning"),
}
#: ``apply`` options the command line leaves out, and why (a test keeps both lists complete).
NOT_ON_CLI: dict[str, str] = {
    "source": "vis requests the O(N) source map itself; run prints no source map",
    "return_saliency": "vis requests the saliency itself; run prints none",
    "remat": "a memory saving for the backward pass, which run and vis do not take",
    "attention": "a tldr_jax.AttentionTuning value (memory / speed of attention) for Python callers",
}


def add_apply_args(p: argparse.ArgumentParser) -> None:
    """The ``apply`` options of :data:`APPLY_FLAGS`, with the allowed values of :mod:`tldr_jax.options`."""
    from tldr_jax.options import COMPUTE_DTYPES, GPU_TUNINGS, METHODS, POOLS, PRECISIONS, ApplyOptions

    d = ApplyOptions()
    p.add_argument("--method", choices=METHODS, default=d.method, help="merge method (default vid_tldr)")
    p.add_argument("--pool", choices=POOLS, default=d.pool, help="pooling of merged tokens (default mean)")
    p.add_argument("--no-prop-attn", dest="prop_attn", action="store_false",
                   help="turn off proportional attention (on in the official code)")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default=None,
                   help="compute dtype (default: the parameters' float32)")
    p.add_argument("--precision", choices=[x for x in PRECISIONS if x], default=d.precision,
                   help="float32 matrix-product precision (default float32, the official numerics)")
    p.add_argument("--fast-compile", action="store_true",
                   help="compile faster, run slower on CPU (for schedules tried once; "
                        "docs/guides/scale_precision.md)")
    p.add_argument("--gpu-tuning", choices=GPU_TUNINGS, default=d.gpu_tuning,
                   help="XLA GEMM/autotuning settings on a GPU (default heuristic: cuBLAS, fast compiles)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``run`` and ``vis``: the video, the model, ``--r``, the apply options, the clip."""
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
    p.add_argument("--seed", type=seed, default=0, help="seed of the random weights")
    p.add_argument("--r", default=None,
                   help="merge schedule: int per layer, fraction, comma list ('600,200,100') or preset "
                        "('msrvtt'); default: the msrvtt preset for UMT, else 0.3,0.2")
    add_apply_args(p)
    p.add_argument("--frames", type=positive_int, default=None,
                   help="frames to sample (default: the model's)")
    p.add_argument("--sampling", choices=SAMPLING_MODES, default=None,
                   help="frame sampling (default: middle for UMT, uniform for VideoMAE/ViViT)")
    p.add_argument("--normalization", choices=sorted(NORMALIZATION), default=None,
                   help="mean/std set (default: the model family's)")
    p.add_argument("--pad", action="store_true", help="repeat the last frame of too-short videos")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def forward_main(module_names: Sequence[str], argv: list[str], what: str) -> int:
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
