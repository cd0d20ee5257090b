"""``tldr-jax serve``: search an index from a browser, with the model loaded and compiled once.

Examples::

    tldr-jax serve videos.index                       # http://127.0.0.1:8000/
    tldr-jax serve videos.index --rerank 50 --port 8080
    curl 'http://127.0.0.1:8000/api/search?q=a+dog+catches+a+frisbee&k=5'

The server starts at once and answers 503 until the model is loaded and the query path compiled (the
progress lines say when); a re-index of the same folder is picked up without a restart. It binds
127.0.0.1 unless ``--host`` says otherwise (the page and the API have no authentication).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from tldr_jax.cli import common, sources
from tldr_jax.cli.base import PROG


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an argparse sub-parsers object (``set_defaults(func=main)``)."""
    p = subparsers.add_parser(
        "serve", help="serve a search page and JSON API over an index (model loaded once)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("index", help="index directory (tldr-jax index)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=common.positive_int, default=8000, help="TCP port (8000)")
    p.add_argument("--rerank", type=common.positive_int, default=None, metavar="N",
                   help="default ITM re-ranking depth of a search (needs an index built with --keep-tokens)")
    p.add_argument("--max-concurrency", type=common.positive_int, default=4, metavar="N",
                   help="requests worked on at once; more wait in a queue (4)")
    p.add_argument("--max-k", type=common.positive_int, default=100, help="most results per request (100)")
    p.add_argument("--model", "-m", default=None, help="model directory (default: the one indexed with)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=main)
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax serve`` until interrupted; bad inputs raise ValueError / OSError (one line, exit 2)."""
    import uvicorn

    from tldr_jax.search.index import read_info
    from tldr_jax.search.server import create_app
    from tldr_jax.search.service import Limits, SearchService

    info = read_info(args.index)  # a missing or damaged index: one line before anything starts
    if args.rerank is not None and not info["settings"].get("keep_tokens"):
        raise ValueError(
            f"the index {args.index} holds no video tokens, which --rerank needs; rebuild it with "
            "--keep-tokens, or serve without --rerank."
        )
    limits = Limits(max_k=args.max_k, max_rerank=max(Limits.max_rerank, args.rerank or 0))
    model = None
    if args.model is not None:
        model = str(sources.resolve_model(args.model, kind="umt_retrieval", quiet=args.quiet).path)
    if not _is_loopback(args.host):
        print(f"{PROG}: warning: serving on {args.host}, reachable from other machines; the page and the API "
              "have no authentication (use --host 127.0.0.1 to keep it local).", file=sys.stderr, flush=True)
    service = SearchService(args.index, model=model, rerank=args.rerank, limits=limits,
                            say=lambda line: common.status(args, line))
    servers: list[Any] = []
    stop = lambda: setattr(servers[0], "should_exit", True)  # a failed warm-up ends the command
    app = create_app(service, max_concurrency=args.max_concurrency, on_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False))
    servers.append(server)
    common.status(args, f"serving {args.index} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    server.run()
    if service.error is not None:
        raise ValueError(service.error)
    return 0
