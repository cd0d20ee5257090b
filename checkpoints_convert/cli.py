"""``python -m checkpoints_convert SRC OUT``: convert a checkpoint, print one summary line.

Exit status: 0 on success, 1 when the conversion fails (the message, no traceback, on stderr),
2 for bad command-line usage (one line; every option is checked before the source is read, OUT
included: an existing file, a missing or unwritable folder),
130 when interrupted. Nothing is left at OUT after a failure.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from checkpoints_convert.errors import ConversionError
from checkpoints_convert.formats import FORMATS


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(minimum: int) -> Any:
    """An argparse type: an int ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression ({e})") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = _Parser(
        prog="python -m checkpoints_convert",
        description=(
            "Convert an official UMT / vid-TLDR .pth, an original VideoMAE fine-tuned .pth, a Hugging Face "
            "VideoMAE / ViViT model directory, or hf:ORG/NAME into a tldr_jax checkpoint directory."
        ),
    )
    p.add_argument("src", help="checkpoint file, Hugging Face model directory, or hf:ORG/NAME")
    p.add_argument("out", help="output checkpoint directory (must not exist unless --overwrite)")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=["auto", *FORMATS, "umt_retrieval", "umt_qa"],
                   help="source layout (umt_retrieval: vision + text towers; umt_qa: + answer decoder; "
                        "both need --vocab)")
    p.add_argument("--arch", help="config name to record (presets are looked up under it)")
    p.add_argument(
        "--num-heads", type=_count(1), help="attention heads (default: width // 64; 16 for width 1280)"
    )
    p.add_argument(
        "--num-frames", type=_count(1), help="frames the model runs on (default: UMT 12, VideoMAE 16)"
    )
    p.add_argument("--img-size", type=_count(1), help="input height = width in pixels (default 224)")
    p.add_argument("--num-classes", type=_count(0), help="expected classifier size; 0 drops the classifier")
    p.add_argument("--ckpt-num-frames", type=_count(1), help="frames the UMT sinusoid table was trained with")
    p.add_argument(
        "--ignore", action="append", default=[], type=_regex, metavar="REGEX",
        help="drop matching keys explicitly",
    )
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="UMT retrieval checkpoint: the BERT vocab.txt; converts both towers into a retrieval "
                        "directory (tldr_jax.retrieval)")
    p.add_argument("--text-config", default=None, metavar="FILE",
                   help="UMT retrieval checkpoint: the BERT config.json (heads, LayerNorm eps, activation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the exit status."""
    args = build_parser().parse_args(argv)
    from tldr_jax.files import check_output

    try:  # before the source is read: a directory OUT is created in an existing, writable folder
        check_output(args.out, "OUT", directory=True)
    except OSError as e:
        print(f"python -m checkpoints_convert: error: {e}", file=sys.stderr)
        return 2
    from checkpoints_convert.dispatch import convert_detailed  # heavy imports after argument parsing
    from tldr_jax.checkpoint import CheckpointError

    try:
        conv = convert_detailed(
            args.src,
            args.out,
            fmt=args.fmt,
            overwrite=args.overwrite,
            arch=args.arch,
            num_heads=args.num_heads,
            num_frames=args.num_frames,
            img_size=args.img_size,
            num_classes=args.num_classes,
            ckpt_num_frames=args.ckpt_num_frames,
            ignore=tuple(args.ignore),
            vocab=args.vocab,
            text_config=args.text_config,
            progress=False if args.no_progress else None,
            verbose=not args.quiet,
        )
    except (ConversionError, CheckpointError, ValueError, TypeError, OSError) as e:
        # ValueError: e.g. sizes the architecture rejects (--num-heads not dividing the width).
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C; under tldr-jax also SIGTERM (e.signum 15: status 143)
        print("interrupted; nothing was written.", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    print(conv.summary())
    return 0
