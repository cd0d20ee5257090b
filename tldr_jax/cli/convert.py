"""``tldr-jax convert``: forwarded to the converter, ``python -m checkpoints_convert SRC OUT ...``."""

from __future__ import annotations

import argparse
from typing import Any

from tldr_jax.cli.common import forward_main

__all__ = ["add_parser", "cmd_convert"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``convert`` (everything after it goes to the other tool, ``--help`` included)."""
    p = sub.add_parser(
        "convert", help="convert a checkpoint (python -m checkpoints_convert SRC OUT ...)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_convert)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    """Call the other tool's ``main`` with the rest of the command line; return its exit status."""
    modules = ("checkpoints_convert", "checkpoints_convert.cli", "checkpoints_convert.__main__")
    return forward_main(modules, list(args.rest), "the converter (checkpoints_convert)")
