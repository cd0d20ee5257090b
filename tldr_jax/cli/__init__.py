"""The ``tldr-jax`` command line (:func:`~tldr_jax.cli.main.main`); one module per command.

``GENERIC_R``, ``default_r`` and ``format_r`` are :mod:`tldr_jax.schedule`'s (the one default-``r`` rule),
named here too for the callers that know them from the command line."""

from tldr_jax.cli.base import CliError
from tldr_jax.cli.common import APPLY_FLAGS, NOT_ON_CLI, apply_options, parse_r
from tldr_jax.cli.main import build_parser, main, one_line
from tldr_jax.cli.sources import TINY_OVERRIDES, conversion_cache_path, load_model, resolve_model
from tldr_jax.schedule import GENERIC_R, default_r, format_r

__all__ = [
    "APPLY_FLAGS",
    "GENERIC_R",
    "NOT_ON_CLI",
    "TINY_OVERRIDES",
    "CliError",
    "apply_options",
    "build_parser",
    "conversion_cache_path",
    "default_r",
    "format_r",
    "load_model",
    "main",
    "one_line",
    "parse_r",
    "resolve_model",
]
