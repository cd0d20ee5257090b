"""``tldr-jax index``: encode a folder of videos once (vid-TLDR on) into a searchable vector index.

Examples::

    tldr-jax index videos/ --model ckpt/umt_b16_ret --out videos.index                 # r = msrvtt
    tldr-jax index videos/ --model ckpt/umt_b16_ret --out videos.index --keep-tokens   # for --rerank
    tldr-jax index videos/ --model ckpt/umt_b16_ret --out videos.index --engine ray    # on Ray
    tldr-jax index videos/ --model ckpt/umt_b16_ret --out videos.index --window 10     # moments: 10 s
                                                                       # windows every 5 s

Rerunning after adding or changing files encodes only those files; an index built with another model or
schedule is refused (``--overwrite`` rebuilds it). Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tldr_jax.cli import common, sources
from tldr_jax.schedule import default_r, format_r

#: What an interrupted ``index`` leaves (appended to its "interrupted" line).
INTERRUPTED = "the videos encoded so far are kept in the index's cache: the same command resumes"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``index`` on an argparse sub-parsers object (``set_defaults(func=main)``)."""
    p = subparsers.add_parser(
        "index", help="encode a folder of videos into a searchable index (tldr-jax search)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("videos", help="folder of video files / .npy clips (searched recursively)")
    p.add_argument("--model", "-m", required=True,
                   help="retrieval model directory (tldr-jax convert ret.pth OUT --vocab vocab.txt)")
    p.add_argument("--out", "-o", required=True, help="index directory (created, or updated)")
    p.add_argument("--r", type=common.r_type, default=None,
                   help="vid-TLDR schedule (preset, '600,200,100', fraction, 0 = no merging); default msrvtt "
                        "where published for the model")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="videos per encoder call")
    p.add_argument("--frames", type=common.positive_int, default=None, help="frames per clip (the model's)")
    p.add_argument("--trim-seconds", type=common.positive_float, default=None, metavar="S",
                   help="sample only the first S seconds of each video (DiDeMo's evaluation: 30)")
    p.add_argument("--window", type=common.positive_float, default=None, metavar="SECONDS",
                   help="index each video as overlapping windows of SECONDS (moments; search returns the "
                        "best window of each video); default one clip per file")
    p.add_argument("--stride", type=common.positive_float, default=None, metavar="SECONDS",
                   help="--window: seconds between window starts (default: half the window)")
    p.add_argument("--keep-tokens", action="store_true",
                   help="also store the merged video tokens (needed by search --rerank)")
    p.add_argument("--approximate", action="store_true",
                   help="also build an HNSW graph and search it (large collections); default exact search")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="encode in this process, or on Ray (ray.data; pip install -e '.[ray]')")
    p.add_argument("--actors", type=common.positive_int, default=None,
                   help="--engine ray without accelerators: actors (default 1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="index the readable videos when some cannot be read (default: refuse, naming them)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild an index made with another model or settings")
    common.add_apply_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=main, interrupted_note=INTERRUPTED)
    return p


def _check_window(args: argparse.Namespace) -> None:
    """``--window`` / ``--stride`` / ``--trim-seconds`` together make sense (one line naming the fix)."""
    from tldr_jax.video.windows import check_window

    if args.window is None:
        if args.stride is not None:
            raise common.CliError(f"--stride {args.stride:g} needs --window SECONDS (the window length); add "
                                  "--window, or drop --stride.")
        return
    if args.trim_seconds is not None:
        raise common.CliError(f"--window {args.window:g} and --trim-seconds {args.trim_seconds:g}: windows "
                              "cover the whole video; give one of them.")
    with common.as_flags({"window": "--window", "stride": "--stride"}):
        check_window(args.window, args.stride)


def size(n: int) -> str:
    """Bytes in B / KiB / MiB / GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax index``; bad inputs raise ValueError / OSError (one line, exit status 2)."""
    from tldr_jax.search.build import build_index

    if args.actors is not None and args.engine != "ray":
        raise common.CliError(f"--actors {args.actors} needs --engine ray (the local engine runs in this "
                              "process); add --engine ray, or drop --actors.")
    _check_window(args)
    common.output_file(args.out, "--out", directory=True)  # before any model load or decode
    opts = common.apply_options(args).non_default()
    source = sources.resolve_model(args.model, kind="umt_retrieval", quiet=args.quiet)
    frames = source.config.num_frames if args.frames is None else args.frames
    r = args.r if args.r is not None else default_r(source.config.replace(num_frames=frames))
    index = build_index(
        str(source.path), args.videos, args.out, r=r, batch_size=args.batch_size,
        keep_tokens=args.keep_tokens,
        approximate=args.approximate, num_frames=args.frames, trim_seconds=args.trim_seconds,
        window=args.window, stride=args.stride, engine=args.engine, actors=args.actors,
        skip_unreadable=args.skip_bad, overwrite=args.overwrite, progress=not args.quiet, **opts,
    )
    rep, s, b = index.build, index.settings, index.sizes()
    for name, err in rep.failed.items():
        print(f"{common.PROG}: warning: skipped {name}: {err}", file=sys.stderr, flush=True)
    windows = len(index) if index.windowed else None
    common.say(f"index   {index.path}: {rep.summary(index.video_count, windows)}")
    if index.windowed:
        common.say(f"windows {s['window']:g} s every {s['stride']:g} s (the last aligned to the video's end)")
    merging = "vid-TLDR on" if s["vid_tldr"] else "no merging"
    common.say(
        f"model   {index.info['model_dir']}: {s['arch']}, {s['num_frames']} frames, r={format_r(r)}: "
        f"{s['tokens'][0]} -> {s['tokens'][-1]} tokens per video ({merging})"
    )
    tokens = (f", tokens {size(b['tokens'])} ({size(b['tokens_unmerged'])} without merging)"
              if index.tokens is not None else "")
    hnsw = f", HNSW {size(b['hnsw'])}" if index.approximate else ""
    common.say(
        f"disk    vectors {size(b['vectors'])}{tokens}{hnsw}, cache {size(b['cache'])}; "
        f"{'approximate (HNSW)' if index.approximate else 'exact'} inner-product search"
    )
    return 0
