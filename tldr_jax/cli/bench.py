"""``tldr-jax bench``: forwarded to the benchmarks, ``python -m benchmarks.run ...``."""

from __future__ import annotations

import argparse
from typing import Any

from tldr_jax.cli.common import forward_main

__all__ = ["add_parser", "cmd_bench"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` (everything after it goes to the other tool, ``--help`` included)."""
    p = sub.add_parser("bench", help="run benchmarks (benchmarks.run)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    """Call the other tool's ``main`` with the rest of the command line; return its exit status."""
    return forward_main(("benchmarks.run",), list(args.rest), "the benchmark suite (benchmarks.run)")
