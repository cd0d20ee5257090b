"""``tldr-jax search``: rank the videos of an index for a text, as the official UMT evaluation ranks them.

Examples::

    tldr-jax search videos.index "a dog catches a frisbee"               # ITC (cosine), top 10
    tldr-jax search videos.index "a dog catches a frisbee" --rerank 50   # ITM re-ranking of the top 50
    tldr-jax search videos.index "a dog catches a frisbee" --json        # [{"rank", "video", "score", ...}]

The query is encoded with the model the index was built from (``--model`` for a moved directory; it
must be the same model). ``--rerank`` needs an index built with ``--keep-tokens``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tldr_jax.cli import common, sources

#: ``search`` argument -> the flag that sets it (its errors are shown with the flags).
FLAGS: dict[str, str] = {
    "k": "--k", "rerank": "--rerank", "max_length": "--max-length", "moments": "--moments",
}


def count(text: str) -> int:
    """An argparse ``type``: an int >= 0 (``--moments``)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search`` on an argparse sub-parsers object (``set_defaults(func=main)``)."""
    p = subparsers.add_parser(
        "search", help="rank indexed videos for a text (ITC, optional ITM re-ranking)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("index", help="index directory (tldr-jax index)")
    p.add_argument("query", help="the text to search for")
    p.add_argument("--k", type=common.positive_int, default=10, help="results shown (10)")
    p.add_argument("--rerank", type=common.positive_int, default=None, metavar="N",
                   help="re-score the top N by the matching head (official ITM); needs --keep-tokens")
    p.add_argument("--json", action="store_true",
                   help="print one JSON array of {rank, video, path, score, itc[, itm], row[, start, end, "
                        "moments]}")
    p.add_argument("--moments", type=count, default=3, metavar="N",
                   help="an index of windows: other matching moments listed per video (3)")
    p.add_argument("--model", "-m", default=None, help="model directory (default: the one indexed with)")
    p.add_argument("--max-length", type=common.positive_int, default=None, help="query tokens (32)")
    p.add_argument("--raw-query", action="store_true",
                   help="tokenise the query as written (default: the official caption cleaning)")
    p.add_argument("--quiet", "-q", action="store_true", help="no header line")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax search``; bad inputs raise ValueError / OSError (one line, exit status 2)."""
    from tldr_jax.search.index import load_index
    from tldr_jax.search.query import describe, search
    from tldr_jax.text.tokenizer import check_query

    check_query(args.query, clean=not args.raw_query)  # "", "!!!": one line before anything is opened
    model = None
    if args.model is not None:
        model = str(sources.resolve_model(args.model, kind="umt_retrieval", quiet=args.quiet).path)
    with common.as_flags(FLAGS):  # search's own checks (k <= rerank, ...), worded with the flags
        index = load_index(args.index, model)
        hits = search(index, args.query, k=args.k, rerank=args.rerank, max_length=args.max_length,
                      clean=not args.raw_query, moments=args.moments)
    if args.json:
        common.say(json.dumps([h.to_json() for h in hits]))
        return 0
    if not args.quiet:
        common.say(f"query   {describe(index, args.query, args.rerank)}")
    for h in hits:
        itm = f"  itm {h.itm:8.4f}" if h.itm is not None else ""
        at = "" if h.start is None else f"  {span(h.start, h.end)}"
        common.say(f"  {h.rank:3d}. {h.score:8.4f}  itc {h.itc:7.4f}{itm}  {h.video}{at}")
        if h.moments:
            others = ", ".join(f"{span(m.start, m.end)} ({m.score:.4f})" for m in h.moments)
            common.say(f"       also at {others}")
    return 0


def clock(seconds: float) -> str:
    """``75.5 -> "1:15.5"``, ``3725 -> "1:02:05"``: seconds as a clock (tenths when not whole)."""
    tenths = round(seconds * 10)
    whole, frac = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return text + (f".{frac}" if frac else "")


def span(start: float, end: float) -> str:
    """``"0:20-0:30"``: a window's seconds as clock times."""
    return f"{clock(start)}-{clock(end)}"
