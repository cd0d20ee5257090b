"""``tldr-jax vis``: the saliency and the merged-token groups of a clip, as a PNG grid, GIF or MP4."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from tldr_jax.cli import common
from tldr_jax.schedule import format_r

__all__ = ["add_parser", "cmd_vis"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``vis`` on an argparse sub-parsers object."""
    p = sub.add_parser("vis", help="draw saliency and merged-token groups (PNG grid, GIF or MP4)")
    common.add_model_args(p)
    p.add_argument("--out", "-o", required=True, help="output file: .png (grid), .gif or .mp4 (animation)")
    p.add_argument("--max-frames", type=common.positive_int, default=8, help="frames shown in a PNG grid")
    p.add_argument("--fps", type=common.positive_float, default=4.0, help="frame rate of GIF/MP4 output")
    p.set_defaults(func=cmd_vis)
    return p


def cmd_vis(args: argparse.Namespace) -> int:
    """``tldr-jax vis``: saliency and merge groups as PNG (grid) or GIF/MP4 (animation)."""
    from tldr_jax import vis

    out_path = common.output_file(args.out, "--out")
    if out_path.suffix.lower() not in vis.IMAGE_EXTENSIONS + vis.ANIMATION_EXTENSIONS:
        raise common.CliError(
            f"--out {args.out!r}: use a .png/.jpg/.webp (grid) or .gif/.mp4 (animation) file name."
        )
    job = common.check_job(args)
    opts = job.opts
    if opts.method != "vid_tldr":
        print(f"{common.PROG}: note: --method {opts.method} has no saliency; only merge groups are drawn.",
              file=sys.stderr)
    clip, _, prep = common.read_clip(args, job.cfg)
    params = job.source.load()
    common.say(f"model      {job.source.description}")
    common.say(f"merging    {opts.method}, r={format_r(job.r)}: {job.sched}")
    extra = {k: v for k, v in opts.non_default().items() if k != "method"}
    common.status(args, "compiling and running the model ...")
    path, maps = vis.visualize(
        params, clip, out_path, job.r, method=opts.method, mean=prep.mean, std=prep.std,
        max_frames=args.max_frames, fps=args.fps, **extra,
    )
    common.say(
        f"groups     {maps.num_groups} output tokens hold the {int(np.prod(maps.grid))} patch tokens "
        f"(grid {maps.grid})"
    )
    common.say(f"wrote      {path}")
    return 0
